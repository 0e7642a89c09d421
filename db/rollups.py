"""Hourly and daily rollups per station, kept forever; maintained incrementally.

Why they exist: the archive moves readings older than the retention out of
`power_readings`; the rollups stay, so history remains queryable.

How they stay correct and cheap (docs/design.md, "Rollups"):
- The load path (`db.load.store_readings`, shared by chunk loads, capture and
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
order, classified by `db.energy` (normal, reset, wrap, glitch, implausible; across
a gap or not). A delta belongs to the hour of its later reading, except a delta
across a gap whose readings lie in different hours: that one is kept in
`energy_events` only and spread over the gap by the queries (`rollups`,
`db.statements`), its parts estimated where the gap crosses the period's bounds.
An hour's first value steps from the last value before it, however far back:
the raw rows of the work set, else the stored rollups' `*_last` (which survive
the archive). The gap threshold of an hour is `GAP_FACTOR` x its normal interval (the lower
median of its inter-reading intervals, or the previous hour's if smaller),
clamped to [GAP_MIN_MS, GAP_MAX_MS].
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from datetime import datetime
from typing import TYPE_CHECKING, Literal

import polars as pl

from db import energy
from db.names import (
    ENERGY_EVENTS,
    MUX_COLUMNS,
    POWER_READINGS,
    READING_VALUE_COLUMNS,
    ROLLUP_COLUMNS,
    ROLLUP_DAILY,
    ROLLUP_DIRTY,
    ROLLUP_HOURLY,
    STATIONS,
)
from powerwatch.errors import UnknownStationError
from schemas.channels import CHANNELS, DAY_MS, HOUR_MS

if TYPE_CHECKING:  # not at run time: a query on `db.reader` loads no ADBC
    from db.bulk import BulkConnection

GAP_FACTOR = 5  # a delta spanning more than 5 normal intervals straddles missing data
GAP_MIN_MS = 60_000  # ...but never less than a minute (jittery fast stations)
GAP_MAX_MS = 900_000  # ...nor more than 15 min; must stay <= HOUR_MS (see _predecessors)
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

KEY = ["station_id", "hour_ts"]
Interval = Literal["hour", "day"]


def _rollup_schema() -> dict[str, pl.DataType]:
    schema: dict[str, pl.DataType] = {}
    for name in ROLLUP_COLUMNS:
        if name == "station_id" or name.endswith(("_resets", "_gaps", "_wraps", "_flagged")):
            schema[name] = pl.Int32()
        elif name.endswith(("_ts", "_count")) or name == "samples":
            schema[name] = pl.Int64()
        else:
            schema[name] = pl.Float64()
    return schema


ROLLUP_SCHEMA = _rollup_schema()
METER_COUNTS = ("resets", "gaps", "wraps", "flagged")
EVENT_SCHEMA: dict[str, pl.DataType] = {
    "station_id": pl.Int32(),
    "meter": pl.Int32(),
    "ts": pl.Int64(),
    "prev_ts": pl.Int64(),
    "prev_kwh": pl.Float64(),
    "value_kwh": pl.Float64(),
    "kind": pl.String(),
    "gap": pl.Int32(),
    "spread": pl.Int32(),
    "kwh": pl.Float64(),
    "reason": pl.String(),
}


# --- the load path's hook ----------------------------------------------------------------


def mark_dirty(bulk: BulkConnection, stored: pl.DataFrame, batch_id: int) -> None:
    """Queue the station-hours of readings just stored (`station_id`, `ts`): one append.

    Called by `store_readings` inside the load transaction, so a mark commits
    exactly when its readings do.
    """
    if stored.is_empty():
        return
    # Runs of one (station, hour) key: the load hands over rows in key order, so this is
    # one mark per station-hour without a hash group-by (3x cheaper); rows out of order
    # only make more marks, which the refresh sums.
    key = pl.col("station_id").cast(pl.Int64) * 2**32 + pl.col("ts") // HOUR_MS
    marks = (
        stored.select(key.rle().alias("run"))
        .unnest("run")
        .select(
            (pl.col("value") // 2**32).cast(pl.Int32).alias("station_id"),
            (pl.col("value") % 2**32 * HOUR_MS).alias("hour_ts"),
            pl.lit(batch_id, pl.Int32).alias("batch_id"),
            pl.col("len").cast(pl.Int64).alias("readings"),
        )
    )
    bulk.ingest(ROLLUP_DIRTY, marks.to_arrow())


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


def _frame(bulk: BulkConnection, sql: str, schema: dict[str, pl.DataType]) -> pl.DataFrame:
    """A query's result with the given dtypes whatever the driver inferred (or if empty)."""
    frame = bulk.frame(sql)
    if frame.is_empty():
        return pl.DataFrame(schema=schema)
    return frame.select(pl.col(name).cast(dtype) for name, dtype in schema.items())


def refresh_batch(
    bulk: BulkConnection, limit: int, max_readings: int = REFRESH_BATCH_READINGS
) -> RefreshResult:
    """One batch of up to `limit` queued station-hours (and about `max_readings` queued
    readings); call inside a write transaction."""
    queued = _frame(
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
        following = _frame(
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
        marks = _frame(
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
        raw = _frame(
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
        stored = _frame(
            bulk,
            f"SELECT DISTINCT r.* FROM pw_rollup_work w JOIN {ROLLUP_HOURLY} r "
            "ON r.station_id = w.station_id "
            f"AND r.start_ts >= w.hour_ts - {HOUR_MS} AND r.start_ts <= w.hour_ts",
            ROLLUP_SCHEMA,
        ).rename({"start_ts": "hour_ts"})
    preds = _stored_predecessors(bulk, raw)
    moduli = _frame(
        bulk,
        f"SELECT id AS station_id, meter_modulus AS modulus FROM {STATIONS} "
        "WHERE meter_modulus IS NOT NULL",
        {"station_id": pl.Int32(), "modulus": pl.Float64()},
    )
    from powerwatch.settings import get_settings

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
            preds[m] = _frame(
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
        stored = _frame(
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
        .agg(_combine(pl.col("normal_interval_ms").quantile(0.5, "lower")))
        .rename({"day_ts": "start_ts"})
    )
    _replace(bulk, ROLLUP_DAILY, daily)
    return daily.height


# --- the computation (pure polars, testable without a database) ---------------------------


def _stats(last_values: bool = True) -> list[pl.Expr]:
    """Channel statistics of raw readings (rows sorted by time within each group); the
    meters' last values too unless the energy steps provide them."""
    aggs = [
        pl.len().cast(pl.Int64).alias("samples"),
        pl.col("ts").min().alias("first_ts"),
        pl.col("ts").max().alias("last_ts"),
    ]
    for c in READING_VALUE_COLUMNS:
        aggs += [
            pl.col(c).count().cast(pl.Int64).alias(f"{c}_count"),
            pl.col(c).sum().alias(f"{c}_sum"),
            pl.col(c).min().alias(f"{c}_min"),
            pl.col(c).max().alias(f"{c}_max"),
        ]
    return aggs + _last_values() if last_values else aggs


def _last_values() -> list[pl.Expr]:
    """Each meter's last value and its time (rows sorted by time within each group)."""
    return [
        expr
        for m in MUX_COLUMNS
        for expr in (
            pl.col(m).drop_nulls().last().alias(f"{m}_last"),
            pl.col("ts").filter(pl.col(m).is_not_null()).max().alias(f"{m}_last_ts"),
        )
    ]


def _combine(normal_interval: pl.Expr) -> list[pl.Expr]:
    """Rollup rows -> one rollup row: sums add, extremes combine, the latest value wins."""
    aggs = [
        pl.col("samples").sum(),
        pl.col("first_ts").min(),
        pl.col("last_ts").max(),
        normal_interval.alias("normal_interval_ms"),
    ]
    for c in READING_VALUE_COLUMNS:
        aggs += [
            pl.col(f"{c}_count").sum(),
            pl.col(f"{c}_sum").sum(),
            pl.col(f"{c}_min").min(),
            pl.col(f"{c}_max").max(),
        ]
    for m in MUX_COLUMNS:
        last_ts = pl.col(f"{m}_last_ts")
        first_ts = pl.col(f"{m}_first_ts")
        aggs += [
            pl.col(f"{m}_kwh").sum(),
            *(pl.col(f"{m}_{k}").sum() for k in METER_COUNTS),
            pl.col(f"{m}_first").filter(first_ts == first_ts.min()).first(),
            first_ts.min(),
            pl.col(f"{m}_last").filter(last_ts == last_ts.max()).first(),
            last_ts.max(),
        ]
    return aggs


def gap_threshold(normal_interval_ms: pl.Expr) -> pl.Expr:
    """Deltas spanning more than this straddle missing data (unknown interval: the maximum)."""
    return (normal_interval_ms * GAP_FACTOR).clip(GAP_MIN_MS, GAP_MAX_MS).fill_null(GAP_MAX_MS)


@dataclass
class Computed:
    hours: pl.DataFrame  # new rollup rows, keyed `start_ts`
    recomputed: int
    merged: int
    complete: pl.DataFrame  # the recomputed hours' keys: their events are replaced
    events: pl.DataFrame  # the recomputed hours' energy events


def compute_hours(
    work: pl.DataFrame,
    marks: pl.DataFrame,
    raw: pl.DataFrame,
    stored: pl.DataFrame,
    preds: dict[str, pl.DataFrame],
    moduli: pl.DataFrame,
    max_kw: float,
) -> Computed:
    """New rollup rows and energy events for the work hours.

    `raw`: the readings of every work hour (sorted by station and time);
    `stored`: the stored rollups of the work hours and of the hours before them;
    `marks`: queued (hour, batch, readings); `preds`: per meter the last stored value
    before hours that need one (`_stored_predecessors`); `moduli`: the stations'
    declared meter moduli; `max_kw`: the plausible power limit. An hour is recomputed
    when all the rows its rollup counted are still there (raw >= stored + queued),
    merged otherwise.
    """
    counts = raw.group_by(KEY).agg(pl.len().cast(pl.Int64).alias("raw"))
    queued = marks.group_by(KEY).agg(pl.col("readings").sum().alias("queued"))
    decided = (
        work.join(counts, on=KEY, how="left")
        .join(queued, on=KEY, how="left")
        .join(stored.select(*KEY, "samples"), on=KEY, how="left")
        .with_columns(pl.col("raw", "queued", "samples").fill_null(0))
    )
    complete = decided.filter(
        (pl.col("raw") > 0) & (pl.col("raw") >= pl.col("samples") + pl.col("queued"))
    ).select(KEY)
    partial = decided.filter(
        (pl.col("raw") < pl.col("samples") + pl.col("queued")) & (pl.col("queued") > 0)
    ).select(KEY)
    recomputed, events = _recompute(complete, raw, stored, preds, moduli, max_kw)
    merged = _merge(partial, marks, raw, stored)
    parts = [f for f in (recomputed, merged) if not f.is_empty()]
    if not parts:
        hours = pl.DataFrame(schema=ROLLUP_SCHEMA)
    else:
        hours = pl.concat(parts, how="diagonal_relaxed").rename({"hour_ts": "start_ts"})
    return Computed(hours, recomputed.height, merged.height, complete, events)


def _merge(
    partial: pl.DataFrame, marks: pl.DataFrame, raw: pl.DataFrame, stored: pl.DataFrame
) -> pl.DataFrame:
    """Hours whose raw rows were archived: add the queued batches' readings to the rollup.

    Their meter deltas are not counted: the archived neighbours' delta already
    covers the meter's movement across them when it was normal, and when it was
    a gap nothing may be invented.
    """
    new = (
        raw.join(partial, on=KEY, how="semi")
        .join(marks.select(*KEY, "batch_id"), on=[*KEY, "batch_id"], how="semi")
        .sort("station_id", "ts")
    )
    if new.is_empty():
        return pl.DataFrame()
    added = (
        new.group_by(KEY, maintain_order=True)
        .agg(_stats())
        .with_columns(
            *(pl.lit(0.0).alias(f"{m}_kwh") for m in MUX_COLUMNS),
            *(pl.lit(0, pl.Int32).alias(f"{m}_{k}") for m in MUX_COLUMNS for k in METER_COUNTS),
        )
    )
    before = stored.join(partial, on=KEY, how="semi")
    return (
        pl.concat([before, added], how="diagonal_relaxed")
        .group_by(KEY, maintain_order=True)
        .agg(_combine(pl.col("normal_interval_ms").drop_nulls().first()))
    )


def _predecessors(complete: pl.DataFrame, raw: pl.DataFrame, stored: pl.DataFrame) -> pl.DataFrame:
    """Per complete hour, the time of the last reading of the hour before (for the normal
    interval): from the raw rows when that hour is in the work set, from its stored rollup
    otherwise; the later of the two wins. (Meter predecessors: `db.energy`.)"""
    previous = raw.group_by(KEY).agg(pl.col("ts").max().alias("last_ts"))
    candidates = pl.concat(
        [previous, stored.select(*KEY, "last_ts")], how="vertical_relaxed"
    ).with_columns(pl.col("hour_ts") + HOUR_MS)
    candidates = candidates.join(complete, on=KEY, how="semi")
    return candidates.group_by(KEY).agg(pl.col("last_ts").max().alias("prev_ts"))


def _steps(
    frame: pl.DataFrame, pred: pl.DataFrame, prev_ts: str, meter: str | None = None
) -> pl.DataFrame:
    """Time steps `dt` (and the meter's value steps `dv`) between consecutive rows of each
    hour (`frame` sorted by station and time); an hour's first row steps from the hour's
    predecessor (`prev_ts`, `{meter}_prev` in `pred`; null when there is none).

    Plain `diff` masked where the hour changes, plus a join for the first rows only:
    no sort and no window function over the (large) frame.
    """
    first = (
        (pl.col("station_id") != pl.col("station_id").shift(1))
        | (pl.col("hour_ts") != pl.col("hour_ts").shift(1))
    ).fill_null(True)
    steps = [pl.col("ts").diff().alias("dt")]
    from_pred = [(pl.col("ts") - pl.col(prev_ts)).alias("dt")]
    carried = [prev_ts]
    if meter is not None:
        steps.append(pl.col(meter).diff().alias("dv"))
        from_pred.append((pl.col(meter) - pl.col(f"{meter}_prev")).alias("dv"))
        carried.append(f"{meter}_prev")
    marked = frame.with_columns(first.alias("first"), *steps)
    heads = (
        marked.filter("first")
        .select(frame.columns)
        .join(pred.select(*KEY, *carried), on=KEY, how="left")
        .with_columns(from_pred)
        .drop(carried)
    )
    return pl.concat([marked.filter(~pl.col("first")).drop("first"), heads], how="vertical")


def _recompute(
    complete: pl.DataFrame,
    raw: pl.DataFrame,
    stored: pl.DataFrame,
    preds: dict[str, pl.DataFrame],
    moduli: pl.DataFrame,
    max_kw: float,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Rollups of hours whose raw readings are all present, with classified meter deltas;
    and those hours' energy events."""
    rows = raw.join(complete, on=KEY, how="semi", maintain_order="left")
    if rows.is_empty():
        return pl.DataFrame(), pl.DataFrame(schema=EVENT_SCHEMA)
    pred = _predecessors(complete, raw, stored)
    stats = rows.group_by(KEY, maintain_order=True).agg(_stats(last_values=False))

    # Normal interval: lower median of the intervals ending in the hour.
    normal = (
        _steps(rows.select(*KEY, "ts"), pred, "prev_ts")
        .group_by(KEY)
        .agg(
            pl.col("dt")
            .drop_nulls()
            .cast(pl.Float64)
            .quantile(0.5, "lower")
            .alias("normal_interval_ms")
        )
    )
    # The threshold also looks at the previous hour's normal interval: an hour with a
    # single interval (a reading after a long silence) cannot vouch for itself.
    before = pl.concat(
        [
            normal,
            stored.join(normal, on=KEY, how="anti").select(*KEY, "normal_interval_ms"),
        ]
    ).select(
        "station_id",
        (pl.col("hour_ts") + HOUR_MS).alias("hour_ts"),
        pl.col("normal_interval_ms").alias("prev_normal_ms"),
    )
    limits = (
        complete.join(normal, on=KEY, how="left")
        .join(before, on=KEY, how="left")
        .select(
            *KEY,
            gap_threshold(pl.min_horizontal("normal_interval_ms", "prev_normal_ms")).alias(
                "threshold"
            ),
        )
    )
    # The meters' values in every raw row (complete or not: a predecessor may be in a
    # merged hour), steps kept for the complete hours only.
    result = stats.join(normal, on=KEY, how="left")
    found = []
    for number, m in enumerate(MUX_COLUMNS, start=1):
        values = raw.select(*KEY, "ts", pl.col(m).alias("v")).drop_nulls("v")
        steps = energy.meter_steps(values, preds[m], limits, moduli, max_kw).join(
            complete, on=KEY, how="semi"
        )
        result = result.join(energy.hour_aggregates(steps, m), on=KEY, how="left")
        found.append(energy.events(steps, number, max_kw))
    result = result.with_columns(
        *(pl.col(f"{m}_kwh").fill_null(0.0) for m in MUX_COLUMNS),
        *(pl.col(f"{m}_{k}").fill_null(0) for m in MUX_COLUMNS for k in METER_COUNTS),
    )
    return result, pl.concat(found, how="vertical_relaxed")


# --- queries -------------------------------------------------------------------------------


def require_station_id(bulk: BulkConnection, station: str) -> int:
    """The id of a registered station; an unknown name is bad input."""
    found = bulk.scalar(f"SELECT id FROM {STATIONS} WHERE name = ?", [station])
    if found is None:
        raise UnknownStationError(f"unknown station: {station!r}")
    return int(found)


def rollups(
    bulk: BulkConnection,
    interval: Interval = "hour",
    *,
    station: str | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
) -> pl.DataFrame:
    """Stored rollups, ordered by station then time: per channel avg/min/max/count, per
    meter consumption: measured and estimated kWh (`db.energy`: a gap across the
    interval's bounds is spread over its time, that part estimated) with the counts of
    resets, wraps, gaps and flagged deltas. `start` inclusive, `end` exclusive, both
    matched against the interval's start. An interval inside an outage has no readings
    but its share of the spread kWh: it is listed with 0 samples."""
    from db.queries import epoch_ms

    table = ROLLUP_HOURLY if interval == "hour" else ROLLUP_DAILY
    length = HOUR_MS if interval == "hour" else DAY_MS
    station_id = None if station is None else require_station_id(bulk, station)
    start_ms = None if start is None else int(start.timestamp() * 1000)
    end_ms = None if end is None else int(end.timestamp() * 1000)
    sql = [
        f"SELECT s.name AS station, r.* FROM {table} r "
        f"JOIN {STATIONS} s ON s.id = r.station_id WHERE 1 = 1"
    ]
    params: list[object] = []
    if station_id is not None:
        sql.append("AND r.station_id = ?")
        params.append(station_id)
    if start_ms is not None:
        sql.append("AND r.start_ts >= ?")
        params.append(start_ms)
    if end_ms is not None:
        sql.append("AND r.start_ts < ?")
        params.append(end_ms)
    frame = bulk.frame(" ".join(sql), params)
    if frame.is_empty():
        frame = pl.DataFrame(schema={"station": pl.String(), **ROLLUP_SCHEMA})
    frame = frame.select(
        pl.col("station").cast(pl.String),
        *(pl.col(n).cast(t) for n, t in ROLLUP_SCHEMA.items()),
    )
    frame = _with_spread(bulk, frame, length, station_id, start_ms, end_ms).sort(
        "station", "start_ts"
    )
    columns: list[pl.Expr] = [
        pl.col("station"),
        epoch_ms("start_ts").alias("start"),
        pl.col("samples"),
        epoch_ms("first_ts").alias("first"),
        epoch_ms("last_ts").alias("last"),
        (pl.col("normal_interval_ms") / 1000).alias("normal_interval_s"),
    ]
    for c in CHANNELS:
        n = pl.col(f"{c.column}_count")
        columns += [
            (pl.col(f"{c.column}_sum") / pl.when(n > 0).then(n)).alias(f"{c.key}_avg"),
            pl.col(f"{c.column}_min").alias(f"{c.key}_min"),
            pl.col(f"{c.column}_max").alias(f"{c.key}_max"),
            n.alias(f"{c.key}_count"),
        ]
    for c in CHANNELS:
        if c.column in MUX_COLUMNS:
            columns += [
                pl.col(f"{c.column}_kwh").alias(f"{c.key}_kwh"),
                pl.col(f"{c.column}_estimated_kwh").alias(f"{c.key}_estimated_kwh"),
                *(pl.col(f"{c.column}_{k}").alias(f"{c.key}_{k}") for k in METER_COUNTS),
            ]
    return frame.select(columns)


def _with_spread(
    bulk: BulkConnection,
    frame: pl.DataFrame,
    length: int,
    station_id: int | None,
    start_ms: int | None,
    end_ms: int | None,
) -> pl.DataFrame:
    """Add the spread gaps' parts to the rollup rows: `*_kwh` gains the parts of gaps
    lying wholly inside the interval, `*_estimated_kwh` holds the others; intervals
    that only an outage covers are added (0 samples)."""
    sql = [
        f"SELECT station_id, meter, prev_ts, ts, kwh FROM {ENERGY_EVENTS} "
        "WHERE spread = 1 AND kwh > 0"
    ]
    # Integers only (ids and epoch ms), so inlined.
    if station_id is not None:
        sql.append(f"AND station_id = {int(station_id)}")
    if start_ms is not None:
        sql.append(f"AND ts >= {int(start_ms)}")
    if end_ms is not None:
        sql.append(f"AND prev_ts < {int(end_ms + length)}")
    spread = _frame(
        bulk,
        " ".join(sql),
        {
            "station_id": pl.Int32(),
            "meter": pl.Int32(),
            "prev_ts": pl.Int64(),
            "ts": pl.Int64(),
            "kwh": pl.Float64(),
        },
    )
    estimated = [pl.lit(0.0).alias(f"{m}_estimated_kwh") for m in MUX_COLUMNS]
    if spread.is_empty():
        return frame.with_columns(estimated)
    parts = energy.spread_hours_or_days(spread, length)
    if start_ms is not None:
        parts = parts.filter(pl.col("start_ts") >= start_ms)
    if end_ms is not None:
        parts = parts.filter(pl.col("start_ts") < end_ms)
    per_interval = parts.group_by("station_id", "start_ts").agg(
        expr
        for number, m in enumerate(MUX_COLUMNS, start=1)
        for expr in (
            pl.col("part")
            .filter((pl.col("meter") == number) & ~pl.col("estimated"))
            .sum()
            .alias(f"{m}_inside"),
            pl.col("part")
            .filter((pl.col("meter") == number) & pl.col("estimated"))
            .sum()
            .alias(f"{m}_estimated_kwh"),
        )
    )
    names = _frame(
        bulk,
        f"SELECT id AS station_id, name AS station FROM {STATIONS}",
        {"station_id": pl.Int32(), "station": pl.String()},
    )
    missing = (
        per_interval.select("station_id", "start_ts")
        .join(frame, on=["station_id", "start_ts"], how="anti")
        .join(names, on="station_id")
        .with_columns(
            pl.lit(0, pl.Int64).alias("samples"),
            pl.col("start_ts").alias("first_ts"),
            pl.col("start_ts").alias("last_ts"),
            *(pl.lit(0, pl.Int64).alias(f"{c}_count") for c in READING_VALUE_COLUMNS),
            *(pl.lit(0.0).alias(f"{m}_kwh") for m in MUX_COLUMNS),
            *(pl.lit(0, pl.Int32).alias(f"{m}_{k}") for m in MUX_COLUMNS for k in METER_COUNTS),
        )
    )
    return (
        pl.concat([frame, missing], how="diagonal_relaxed")
        .join(per_interval, on=["station_id", "start_ts"], how="left")
        .with_columns(
            *(
                (pl.col(f"{m}_kwh") + pl.col(f"{m}_inside").fill_null(0.0)).alias(f"{m}_kwh")
                for m in MUX_COLUMNS
            ),
            *(pl.col(f"{m}_estimated_kwh").fill_null(0.0) for m in MUX_COLUMNS),
        )
        .drop(f"{m}_inside" for m in MUX_COLUMNS)
    )


def pending_hours(bulk: BulkConnection) -> int:
    """Station-hours queued for the next refresh (rollups of them may be behind)."""
    return int(
        bulk.scalar(
            f"SELECT count(*) FROM (SELECT DISTINCT station_id, hour_ts FROM {ROLLUP_DIRTY}) q"
        )
    )
