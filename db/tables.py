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

from db.names import MUX_COLUMNS as MUX_COLUMNS
from db.names import READING_VALUE_COLUMNS as READING_VALUE_COLUMNS

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
    # Registry key `meter_modulus`: where the kWh registers wrap to 0 (None: never).
    Column("meter_modulus", Double),
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

# --- Rollups (powerwatch/rollups/refresh.py; docs/design.md "Rollups") ------------------------
# Hourly and daily rollups per station, kept forever: they stay when the archive deletes
# the raw readings. Sums (not averages) are stored so that rollups merge exactly; the
# `*_last` columns carry each meter's last value so the next interval's first delta can
# be computed after the raw rows are gone.


def energy_columns(name: str) -> list[Column[Any]]:
    """Per-meter columns added by migration 0003 (energy accounting)."""
    return [
        Column(f"{name}_wraps", Integer, nullable=False, server_default="0"),
        Column(f"{name}_flagged", Integer, nullable=False, server_default="0"),  # glitch/jump
        Column(f"{name}_first", Double),  # first accepted value in the interval
        Column(f"{name}_first_ts", BigInteger),
    ]


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
            # Measured kWh of the deltas ending in the interval; a delta across a gap that
            # spans interval boundaries is not here but in `energy_events`
            # (powerwatch/rollups/energy.py).
            Column(f"{name}_kwh", Double, nullable=False),
            Column(f"{name}_resets", Integer, nullable=False),  # new cycles (counted from 0)
            Column(f"{name}_gaps", Integer, nullable=False),  # deltas across missing data
            Column(f"{name}_last", Double),  # last accepted value in the interval
            Column(f"{name}_last_ts", BigInteger),
            *energy_columns(name),
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

# --- Energy accounting (powerwatch/rollups/energy.py; docs/design.md "Energy accounting") ---
# Every meter delta that is not plain: across a gap, a new cycle (reset/replacement), a
# wrap, a glitch or an implausible jump; kept forever like the rollups. Keyed by the later
# reading: a recomputed hour replaces its events.
energy_events = Table(
    "energy_events",
    metadata,
    Column("station_id", Integer, ForeignKey("stations.id"), nullable=False),
    Column("meter", Integer, nullable=False),  # 1..4 (muxPower1..4)
    Column("ts", BigInteger, nullable=False),  # the later reading, epoch ms UTC
    Column("prev_ts", BigInteger, nullable=False),
    Column("prev_kwh", Double, nullable=False),
    Column("value_kwh", Double, nullable=False),
    Column("kind", String(12), nullable=False),  # normal|reset|wrap|glitch|implausible
    Column("gap", Integer, nullable=False),  # 1: the readings straddle missing data
    Column("spread", Integer, nullable=False),  # 1: a gap across hours, kWh spread over it
    Column("kwh", Double, nullable=False),  # consumption counted for the delta
    Column("reason", Text, nullable=False, server_default=""),
    PrimaryKeyConstraint("station_id", "ts", "meter", name="pk_energy_events"),
    sqlite_with_rowid=False,
)

# Issued monthly statements, one row per station and broadcaster; a month restated by late
# data gets a new revision, earlier revisions are kept.
energy_statements = Table(
    "energy_statements",
    metadata,
    Column("month", String(7), nullable=False),  # YYYY-MM in the zone below
    Column("tz", String(64), nullable=False),
    Column("revision", Integer, nullable=False),
    Column("station_id", Integer, ForeignKey("stations.id"), nullable=False),
    Column("broadcaster", String(16), nullable=False),
    Column("period_start", BigInteger, nullable=False),  # epoch ms UTC
    Column("period_end", BigInteger, nullable=False),
    Column("opening_ts", BigInteger),
    Column("opening_kwh", Double),
    Column("closing_ts", BigInteger),
    Column("closing_kwh", Double),
    Column("consumption_kwh", Double, nullable=False),
    Column("estimated_kwh", Double, nullable=False),
    Column("resets", Integer, nullable=False),
    Column("wraps", Integer, nullable=False),
    Column("flagged", Integer, nullable=False),
    Column("completeness", Double, nullable=False),
    Column("share", Double),
    Column("issued_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    PrimaryKeyConstraint(
        "month", "tz", "revision", "station_id", "broadcaster", name="pk_energy_statements"
    ),
)
