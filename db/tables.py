"""The tables, declared once; Alembic migrations create exactly these (a test checks it).

Physical design, chosen by measurement (docs/design.md, bench/):
- `power_readings` is keyed by (station_id, ts): the key *is* the table
  (`WITHOUT ROWID` on SQLite), so one station's rows are clustered and a
  station-day is a single range scan; no surrogate id, no second index.
- `ts` is integer epoch milliseconds (UTC): compares and indexes faster than
  ISO text and is exact at the protocol's millisecond precision.
- provenance is one small integer per row (`batch_id` -> load_batches ->
  data_sources) instead of repeating text, so a reading costs ~100 bytes.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Double,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    func,
)

from schemas.channels import CHANNELS

metadata = MetaData()

stations = Table(
    "stations",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("uuid", String(36), nullable=False, unique=True),
    Column("ip_address", String(64), nullable=False),
    Column("scene", String(200), nullable=False, server_default=""),
    Column("url", String(500), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

# Where readings came from, one row per load batch: websocket (a landing chunk),
# log_migration (a legacy file) or manual (a chunk dropped by hand / a script).
data_sources = Table(
    "data_sources",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("kind", String(20), nullable=False),
    Column("reference", Text, nullable=False),  # chunk file name or legacy file path
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

# The ledger: what was loaded from which chunk or file, with what outcome.
load_batches = Table(
    "load_batches",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("source_id", Integer, ForeignKey("data_sources.id"), nullable=False),
    Column("input_name", Text, nullable=False),
    Column("content_hash", String(64), nullable=False),
    Column("status", String(20), nullable=False),  # committed | failed
    Column("rows_in", BigInteger, nullable=False, server_default="0"),
    Column("inserted", BigInteger, nullable=False, server_default="0"),
    Column("duplicates", BigInteger, nullable=False, server_default="0"),
    Column("conflicts", BigInteger, nullable=False, server_default="0"),
    Column("rejected", BigInteger, nullable=False, server_default="0"),
    Column("rejected_by_reason", Text, nullable=False, server_default="{}"),  # JSON object
    Column("error", Text),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True)),
    Index("ix_load_batches_content_hash", "content_hash"),
)

READING_VALUE_COLUMNS: tuple[str, ...] = tuple(c.column for c in CHANNELS)

power_readings = Table(
    "power_readings",
    metadata,
    Column("station_id", Integer, ForeignKey("stations.id"), nullable=False),
    Column("ts", BigInteger, nullable=False),  # epoch milliseconds, UTC
    *(Column(name, Double) for name in READING_VALUE_COLUMNS),
    Column("batch_id", Integer, ForeignKey("load_batches.id"), nullable=False),
    PrimaryKeyConstraint("station_id", "ts", name="pk_power_readings"),
    sqlite_with_rowid=False,
)

# A reading whose (station, ts) was already stored with different values: the
# first one stays; both are kept here for an operator to look at.
reading_conflicts = Table(
    "reading_conflicts",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("station_id", Integer, ForeignKey("stations.id"), nullable=False),
    Column("ts", BigInteger, nullable=False),
    Column("batch_id", Integer, ForeignKey("load_batches.id"), nullable=False),
    Column("stored_values", Text, nullable=False),  # JSON object, protocol keys
    Column("incoming_values", Text, nullable=False),
    Index("ix_reading_conflicts_station_ts", "station_id", "ts"),
)
