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

from typing import Any

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

# --- Rollups (db/rollups.py; docs/design.md "Rollups") --------------------------------
# Hourly and daily rollups per station, kept forever: they stay when the archive deletes
# the raw readings. Sums (not averages) are stored so that rollups merge exactly; the
# `*_last` columns carry each meter's last value so the next interval's first delta can
# be computed after the raw rows are gone.
MUX_COLUMNS: tuple[str, ...] = tuple(c.column for c in CHANNELS if c.unit == "kWh")


def rollup_columns() -> list[Column[Any]]:
    """The columns shared by `rollup_hourly` and `rollup_daily` (also used by migration 0002)."""
    columns: list[Column[Any]] = [
        Column("station_id", Integer, ForeignKey("stations.id"), nullable=False),
        Column("start_ts", BigInteger, nullable=False),  # epoch ms, UTC, start of hour/day
        Column("samples", BigInteger, nullable=False),
        Column("first_ts", BigInteger, nullable=False),
        Column("last_ts", BigInteger, nullable=False),
        Column("normal_interval_ms", Double),  # median inter-reading interval
    ]
    for name in READING_VALUE_COLUMNS:
        columns += [
            Column(f"{name}_count", BigInteger, nullable=False),  # non-null values
            Column(f"{name}_sum", Double),
            Column(f"{name}_min", Double),
            Column(f"{name}_max", Double),
        ]
    for name in MUX_COLUMNS:
        columns += [
            Column(f"{name}_kwh", Double, nullable=False),  # sum of normal deltas, never < 0
            Column(f"{name}_resets", Integer, nullable=False),  # deltas < 0 (not counted)
            Column(f"{name}_gaps", Integer, nullable=False),  # deltas across missing data
            Column(f"{name}_last", Double),  # last non-null value in the interval
            Column(f"{name}_last_ts", BigInteger),
        ]
    return columns


rollup_hourly = Table(
    "rollup_hourly",
    metadata,
    *rollup_columns(),
    PrimaryKeyConstraint("station_id", "start_ts", name="pk_rollup_hourly"),
    sqlite_with_rowid=False,
)

rollup_daily = Table(
    "rollup_daily",
    metadata,
    *rollup_columns(),
    PrimaryKeyConstraint("station_id", "start_ts", name="pk_rollup_daily"),
    sqlite_with_rowid=False,
)

# The work queue of the rollups: one row per (station, hour, batch) a load slice stored
# readings in, appended inside the load transaction; `refresh_rollups` consumes it.
rollup_dirty = Table(
    "rollup_dirty",
    metadata,
    Column("station_id", Integer, nullable=False),
    Column("hour_ts", BigInteger, nullable=False),  # epoch ms, UTC, start of the hour
    Column("batch_id", Integer, nullable=False),
    Column("readings", BigInteger, nullable=False),  # readings that batch stored in the hour
    Index("ix_rollup_dirty_station_hour", "station_id", "hour_ts"),
)
