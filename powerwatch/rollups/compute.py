"""The rollups' computation: hourly aggregates and meter deltas as polars expressions,
pure functions over frames, testable without a database (docs/design.md, "Rollups").

The gap threshold of an hour is `GAP_FACTOR` x its normal interval (the lower median of
its inter-reading intervals, or the previous hour's if smaller), clamped to
[GAP_MIN_MS, GAP_MAX_MS]; deltas are classified by `powerwatch.rollups.energy`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import polars as pl

from db.names import MUX_COLUMNS, READING_VALUE_COLUMNS, ROLLUP_COLUMNS
from powerwatch.rollups import energy
from schemas.channels import HOUR_MS

GAP_FACTOR = 5  # a delta spanning more than 5 normal intervals straddles missing data
GAP_MIN_MS = 60_000  # ...but never less than a minute (jittery fast stations)
GAP_MAX_MS = 900_000  # ...nor more than 15 min; must stay <= HOUR_MS (see _predecessors)

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


def combine(normal_interval: pl.Expr) -> list[pl.Expr]:
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
        .agg(combine(pl.col("normal_interval_ms").drop_nulls().first()))
    )


def _predecessors(complete: pl.DataFrame, raw: pl.DataFrame, stored: pl.DataFrame) -> pl.DataFrame:
    """Per complete hour, the time of the last reading of the hour before (for the normal
    interval): from the raw rows when that hour is in the work set, from its stored rollup
    otherwise; the later of the two wins. (Meter predecessors: `powerwatch.rollups.energy`.)"""
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
