"""The names of the tables and columns `db.tables` declares, as plain strings.

For readers of the database (the query commands, `db.reader`): importing `db.tables`
costs SQLAlchemy (~0.25 s on this host; issue 14, query commands answer in <= 0.5 s,
docs/benchmarks.md "CLI fixed costs"), and SQL text needs only the names. `db.tables`
stays the one declaration: it takes its column names from here, and
tests/test_instant.py checks that every name below is the one declared there.
"""

from __future__ import annotations

from schemas.channels import CHANNELS

STATIONS = "stations"
DATA_SOURCES = "data_sources"
LOAD_BATCHES = "load_batches"
POWER_READINGS = "power_readings"
READING_CONFLICTS = "reading_conflicts"
ROLLUP_HOURLY = "rollup_hourly"
ROLLUP_DAILY = "rollup_daily"
ROLLUP_DIRTY = "rollup_dirty"
ENERGY_EVENTS = "energy_events"
ENERGY_STATEMENTS = "energy_statements"

READING_VALUE_COLUMNS: tuple[str, ...] = tuple(c.column for c in CHANNELS)
MUX_COLUMNS: tuple[str, ...] = tuple(c.column for c in CHANNELS if c.unit == "kWh")
# Per reading column, per meter, and the energy columns of migration 0003, in order.
VALUE_STATS = ("count", "sum", "min", "max")
METER_STATS = ("kwh", "resets", "gaps", "last", "last_ts")
ENERGY_STATS = ("wraps", "flagged", "first", "first_ts")
ROLLUP_COLUMNS: tuple[str, ...] = (
    "station_id",
    "start_ts",
    "samples",
    "first_ts",
    "last_ts",
    "normal_interval_ms",
    *(f"{c}_{s}" for c in READING_VALUE_COLUMNS for s in VALUE_STATS),
    *(f"{m}_{s}" for m in MUX_COLUMNS for s in (*METER_STATS, *ENERGY_STATS)),
)
