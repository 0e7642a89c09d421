"""Hourly and daily rollups per station, kept forever; maintained incrementally.

Why they exist: the archive moves readings older than the retention out of
`power_readings`; the rollups stay, so history remains queryable.

How they stay correct and cheap (docs/design.md, "Rollups"):
- The load path (`powerwatch.load.store.store_readings`, shared by chunk loads, capture and
  the legacy migration) appends one *mark* per (station, hour, batch) it stored
  readings in to `rollup_dirty`: one Arrow append per slice, nothing else.
- `refresh_rollups` consumes the marks in batches, one write transaction each:
  a marked hour whose raw rows are all present is *recomputed* from them (so
  late and out-of-order readings give exactly what one in-order load gives);
  an hour whose raw rows were partly archived (fewer rows than the rollup
  already counts plus the marks) has its new readings *merged* in instead.
  The hour of the first reading after each marked hour is recomputed too,
  because a late reading changes the delta into that reading. Then the days
  of every changed hour are rebuilt from their hours.
- Everything is set-based: the work set is staged into a temporary table and
  joined with the readings' key; deltas, classes and aggregates are polars
  expressions. No Python object per reading.

Meter deltas, per kWh meter: consecutive accepted values of one station in time
order, classified by `powerwatch.rollups.energy` (normal, reset, wrap, glitch, implausible; across
a gap or not). A delta belongs to the hour of its later reading, except a delta
across a gap whose readings lie in different hours: that one is kept in
`energy_events` only and spread over the gap by the queries (`queries.rollups`,
`powerwatch.rollups.statements`), its parts estimated where the gap crosses the period's bounds.
An hour's first value steps from the last value before it, however far back:
the raw rows of the work set, else the stored rollups' `*_last` (which survive
the archive). The maths (gap threshold, classes, aggregates) is `powerwatch.rollups.compute`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

import polars as pl

from db.names import (
    ENERGY_EVENTS,
    MUX_COLUMNS,
    POWER_READINGS,
    READING_VALUE_COLUMNS,
    ROLLUP_DAILY,
    ROLLUP_DIRTY,
    ROLLUP_HOURLY,
    STATIONS,
)
from powerwatch.rollups import energy
from powerwatch.rollups.compute import EVENT_SCHEMA, KEY, ROLLUP_SCHEMA, combine, compute_hours
from powerwatch.rollups.queries import typed_frame
from schemas.channels import DAY_MS, HOUR_MS

if TYPE_CHECKING:  # not at run time: a query on `db.reader` loads no ADBC
    from db.bulk import BulkConnection


# One refresh transaction takes queued station-hours up to either bound, so memory stays
# bounded after a big legacy import at the same throughput as bigger batches
# (docs/benchmarks.md, "Tuning decisions").
REFRESH_BATCH_HOURS = 2_000
REFRESH_BATCH_READINGS = 100_000
# Refresh serialises with writers of readings (loads, archive) via power_readings' lock.
LOCK_TABLES = (
    POWER_READINGS,
    ROLLUP_DIRTY,
    ROLLUP_HOURLY,
    ROLLUP_DAILY,
    ENERGY_EVENTS,
)


# --- refresh -----------------------------------------------------------------------------


@dataclass
class RefreshResult:
    marks: int = 0  # queued station-hours consumed
    recomputed: int = 0  # station-hours recomputed from their raw readings
    merged: int = 0  # station-hours whose raw rows were archived: new readings merged in
    days: int = 0  # station-days rebuilt from their hours

    def __iadd__(self, other: RefreshResult) -> RefreshResult:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))
        return self


def refresh_rollups(
    bulk: BulkConnection,
    *,
    batch_hours: int = REFRESH_BATCH_HOURS,
    batch_readings: int = REFRESH_BATCH_READINGS,
) -> RefreshResult:
    """Bring the rollups up to date: every queued hour, one write transaction per batch.

    Safe to run at any time and concurrently with loads (they serialise on the
    readings' write lock); a crash loses nothing (the marks go with the commit).
    """
    total = RefreshResult()
    while True:
        with bulk.transaction(lock_tables=LOCK_TABLES):
            done = refresh_batch(bulk, batch_hours, batch_readings)
        if not done.marks:
            return total
        total += done


def refresh_pending(
    bulk: BulkConnection,
    *,
    batch_hours: int = REFRESH_BATCH_HOURS,
    batch_readings: int = REFRESH_BATCH_READINGS,
) -> RefreshResult:
    """Refresh every queued hour inside the caller's open write transaction.

    For the archive: call this in the transaction that deletes raw readings,
    before the DELETE, so no hour is still waiting for rows that are about to go.
    """
    total = RefreshResult()
    while True:
        done = refresh_batch(bulk, batch_hours, batch_readings)
        if not done.marks:
            return total
        total += done


@contextmanager
def _staged(bulk: BulkConnection, name: str, frame: pl.DataFrame) -> Iterator[None]:
    bulk.ingest(name, frame.to_arrow(), temporary=True)
    try:
        yield
    finally:
        bulk.execute(f"DROP TABLE {name}")


def refresh_batch(
    bulk: BulkConnection, limit: int, max_readings: int = REFRESH_BATCH_READINGS
) -> RefreshResult:
    """One batch of up to `limit` queued station-hours (and about `max_readings` queued
    readings); call inside a write transaction."""
    queued = typed_frame(
        bulk,
        "SELECT station_id, hour_ts, CAST(sum(readings) AS BIGINT) AS readings "
        f"FROM {ROLLUP_DIRTY} GROUP BY station_id, hour_ts "
        f"ORDER BY station_id, hour_ts LIMIT {int(limit)}",
        {"station_id": pl.Int32(), "hour_ts": pl.Int64(), "readings": pl.Int64()},
    )
    # The first hour always goes, however big; then up to `max_readings` queued readings.
    keys = queued.filter(pl.col("readings").cum_sum().shift(1, fill_value=0) < max_readings).select(
        KEY
    )
    if keys.is_empty():
        return RefreshResult()
    with _staged(bulk, "pw_rollup_keys", keys):
        following = typed_frame(
            bulk,
            f"SELECT k.station_id, (SELECT min(p.ts) FROM {POWER_READINGS} p "
            f"WHERE p.station_id = k.station_id AND p.ts >= k.hour_ts + {HOUR_MS}) AS next_ts "
            "FROM pw_rollup_keys k",
            {"station_id": pl.Int32(), "next_ts": pl.Int64()},
        )
    followers = following.drop_nulls("next_ts").select(
        "station_id", (pl.col("next_ts") // HOUR_MS * HOUR_MS).alias("hour_ts")
    )
    work = pl.concat([keys, followers]).unique().sort(KEY)
    # `CROSS JOIN` makes SQLite loop over the (small, unanalysed) work table and probe the
    # big tables' keys, instead of scanning power_readings against an automatic index.
    with _staged(bulk, "pw_rollup_work", work):
        marks = typed_frame(
            bulk,
            "SELECT d.station_id, d.hour_ts, d.batch_id, "
            "CAST(sum(d.readings) AS BIGINT) AS readings "
            f"FROM pw_rollup_work w CROSS JOIN {ROLLUP_DIRTY} d "
            "WHERE d.station_id = w.station_id AND d.hour_ts = w.hour_ts "
            "GROUP BY d.station_id, d.hour_ts, d.batch_id",
            {
                "station_id": pl.Int32(),
                "hour_ts": pl.Int64(),
                "batch_id": pl.Int32(),
                "readings": pl.Int64(),
            },
        )
        raw = typed_frame(
            bulk,
            f"SELECT p.station_id, w.hour_ts, p.ts, p.batch_id, "
            f"{', '.join(f'p.{c}' for c in READING_VALUE_COLUMNS)} "
            f"FROM pw_rollup_work w CROSS JOIN {POWER_READINGS} p "
            f"WHERE p.station_id = w.station_id AND p.ts >= w.hour_ts "
            f"AND p.ts < w.hour_ts + {HOUR_MS}",
            {
                "station_id": pl.Int32(),
                "hour_ts": pl.Int64(),
                "ts": pl.Int64(),
                "batch_id": pl.Int32(),
                **{c: pl.Float64() for c in READING_VALUE_COLUMNS},
            },
        )
        raw = raw.sort("station_id", "ts")
        stored = typed_frame(
            bulk,
            f"SELECT DISTINCT r.* FROM pw_rollup_work w JOIN {ROLLUP_HOURLY} r "
            "ON r.station_id = w.station_id "
            f"AND r.start_ts >= w.hour_ts - {HOUR_MS} AND r.start_ts <= w.hour_ts",
            ROLLUP_SCHEMA,
        ).rename({"start_ts": "hour_ts"})
    preds = _stored_predecessors(bulk, raw)
    moduli = typed_frame(
        bulk,
        f"SELECT id AS station_id, meter_modulus AS modulus FROM {STATIONS} "
        "WHERE meter_modulus IS NOT NULL",
        {"station_id": pl.Int32(), "modulus": pl.Float64()},
    )
    from powerwatch.core.settings import get_settings

    computed = compute_hours(
        work, marks, raw, stored, preds, moduli, get_settings().energy_max_power_kw
    )
    hours = computed.hours
    if not hours.is_empty():
        _replace(bulk, ROLLUP_HOURLY, hours)
        days = _rebuild_days(bulk, hours.select("station_id", "start_ts"))
    else:
        days = 0
    _replace_events(bulk, computed.complete, computed.events)
    with _staged(bulk, "pw_rollup_marks", marks.select(*KEY, "batch_id")):
        # Exactly the marks read above: a mark committed meanwhile (by a writer that
        # does not take the readings' lock) stays queued for the next refresh.
        bulk.execute(
            f"DELETE FROM {ROLLUP_DIRTY} WHERE (station_id, hour_ts, batch_id) IN "
            "(SELECT station_id, hour_ts, batch_id FROM pw_rollup_marks)"
        )
    consumed = marks.select(KEY).unique().height
    return RefreshResult(
        marks=consumed, recomputed=computed.recomputed, merged=computed.merged, days=days
    )


def _stored_predecessors(bulk: BulkConnection, raw: pl.DataFrame) -> dict[str, pl.DataFrame]:
    """Per meter, the last value stored in a rollup before each hour whose first value has
    no raw predecessor in the hour before (`energy.lookup_keys`): one indexed backward
    probe per such hour, found in the previous rollup row unless the meter was silent."""
    preds: dict[str, pl.DataFrame] = {}
    for m in MUX_COLUMNS:
        values = raw.select(*KEY, "ts", pl.col(m).alias("v")).drop_nulls("v")
        keys = energy.lookup_keys(values)
        if keys.is_empty():
            preds[m] = pl.DataFrame(schema=energy.PRED_SCHEMA)
            continue
        with _staged(bulk, "pw_energy_keys", keys):
            preds[m] = typed_frame(
                bulk,
                f"SELECT k.station_id, k.hour_ts, r.{m}_last_ts AS pred_ts, r.{m}_last AS pred_v "
                f"FROM pw_energy_keys k CROSS JOIN {ROLLUP_HOURLY} r "
                "WHERE r.station_id = k.station_id AND r.start_ts = ("
                f"SELECT max(q.start_ts) FROM {ROLLUP_HOURLY} q "
                "WHERE q.station_id = k.station_id AND q.start_ts > k.lo "
                f"AND q.start_ts < k.hour_ts AND q.{m}_last_ts IS NOT NULL)",
                energy.PRED_SCHEMA,
            )
    return preds


def _replace_events(bulk: BulkConnection, complete: pl.DataFrame, events: pl.DataFrame) -> None:
    """The recomputed hours' events replace what was stored for those hours."""
    if not complete.is_empty():
        with _staged(bulk, "pw_energy_hours", complete):
            bulk.execute(
                f"DELETE FROM {ENERGY_EVENTS} WHERE (station_id, ts, meter) IN ("
                f"SELECT e.station_id, e.ts, e.meter FROM pw_energy_hours k "
                f"CROSS JOIN {ENERGY_EVENTS} e WHERE e.station_id = k.station_id "
                f"AND e.ts >= k.hour_ts AND e.ts < k.hour_ts + {HOUR_MS})"
            )
    if not events.is_empty():
        bulk.ingest(
            ENERGY_EVENTS,
            events.select(pl.col(n).cast(t) for n, t in EVENT_SCHEMA.items()).to_arrow(),
        )


def _replace(bulk: BulkConnection, table: str, frame: pl.DataFrame) -> None:
    """Delete the rows of `table` with the frame's keys, then append the frame."""
    with _staged(bulk, "pw_rollup_replace", frame.select("station_id", "start_ts")):
        # Row values: each key is one primary-key probe (the table grows forever).
        bulk.execute(
            f"DELETE FROM {table} WHERE (station_id, start_ts) IN "
            "(SELECT station_id, start_ts FROM pw_rollup_replace)"
        )
    bulk.ingest(table, frame.select(pl.col(n).cast(t) for n, t in ROLLUP_SCHEMA.items()).to_arrow())


def _rebuild_days(bulk: BulkConnection, hours: pl.DataFrame) -> int:
    """Rebuild the days of the given station-hours from all of those days' hours."""
    days = hours.select("station_id", (pl.col("start_ts") // DAY_MS * DAY_MS).alias("day_ts"))
    days = days.unique()
    with _staged(bulk, "pw_rollup_days", days):
        stored = typed_frame(
            bulk,
            f"SELECT r.* FROM pw_rollup_days d JOIN {ROLLUP_HOURLY} r "
            "ON r.station_id = d.station_id "
            f"AND r.start_ts >= d.day_ts AND r.start_ts < d.day_ts + {DAY_MS}",
            ROLLUP_SCHEMA,
        )
    daily = (
        stored.with_columns((pl.col("start_ts") // DAY_MS * DAY_MS).alias("day_ts"))
        .sort("station_id", "start_ts")
        .group_by("station_id", "day_ts")
        .agg(combine(pl.col("normal_interval_ms").quantile(0.5, "lower")))
        .rename({"day_ts": "start_ts"})
    )
    _replace(bulk, ROLLUP_DAILY, daily)
    return daily.height
