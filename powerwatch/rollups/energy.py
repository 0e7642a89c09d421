"""The meter maths of energy accounting: classify every kWh register delta, spread gaps.

Why: the four `muxPower` registers are what the broadcasters are billed from, so a
period's consumption must *telescope*: consecutive periods add up to the register's
whole difference plus the compensations of its resets and wraps, to the last kWh, and a
monitor outage must not make a bill smaller (docs/design.md, "Energy accounting").

One meter's readings in time order (glitches and implausible jumps removed, see below)
give deltas `dv = v - v_prev` over `dt`; each delta is counted in full for the interval
of its later reading, except a delta across a *gap* (dt above the hour's gap threshold)
whose readings lie in different hours: that one is *spread* over the gap's time in
proportion, and the part of it that falls in a period is *estimated* unless the whole
gap lies inside that period. A delta is

- normal (`dv >= 0`): counted `dv`;
- a wrap (`dv < 0`, the station declares `meter_modulus` M, `v + M - v_prev` fits the
  plausible power): counted `v + M - v_prev`;
- a reset / replacement (`dv < 0`, the new value below half the old one): the new
  cycle counts from 0, so `v` is counted;
- a glitch (any other drop, e.g. 5,000 -> 4,990 -> 5,001): the reading is dropped from
  the series, flagged and listed; the next delta is taken from the last good value;
- implausible (counted kWh above `energy_max_power_kw` x dt): the reading is dropped
  and flagged with the reason, like a glitch.

Dropping is repeated (a second glitch right after a first) up to `DROP_PASSES` times;
after that a bad reading stays in the series as the reference, its delta counted 0.
All of it is polars expressions over whole frames: no Python object per reading.
"""

from __future__ import annotations

import polars as pl

from schemas.channels import HOUR_MS

KEY = ["station_id", "hour_ts"]
NORMAL, RESET, WRAP, GLITCH, IMPLAUSIBLE = 0, 1, 2, 3, 4
KIND_NAMES = {
    NORMAL: "normal",
    RESET: "reset",
    WRAP: "wrap",
    GLITCH: "glitch",
    IMPLAUSIBLE: "implausible",
}
FLAGGED = (GLITCH, IMPLAUSIBLE)
DROP_PASSES = 3  # passes that drop flagged readings; the last one keeps them as reference

STEP_SCHEMA: dict[str, pl.DataType] = {
    "station_id": pl.Int32(),
    "hour_ts": pl.Int64(),
    "ts": pl.Int64(),
    "v": pl.Float64(),
    "prev_ts": pl.Int64(),
    "prev_v": pl.Float64(),
    "kind": pl.Int8(),
    "gap": pl.Boolean(),
    "kwh": pl.Float64(),
    "kept": pl.Boolean(),
}
PRED_SCHEMA: dict[str, pl.DataType] = {
    "station_id": pl.Int32(),
    "hour_ts": pl.Int64(),
    "pred_ts": pl.Int64(),
    "pred_v": pl.Float64(),
}


def lookup_keys(values: pl.DataFrame) -> pl.DataFrame:
    """Hours whose first value needs the stored rollups for its predecessor.

    `values` (station_id, hour_ts, ts, v; sorted by station and time) are the raw
    readings the refresh has; a first value of an hour whose previous raw value is in
    the hour before (or the same hour) needs nothing else. Otherwise the last value
    stored in a rollup strictly between that raw value's hour (`lo`, -1 when none) and
    the hour may be later: the refresh looks it up
    (`powerwatch.rollups.refresh._stored_predecessors`).
    """
    same = pl.col("station_id") == pl.col("station_id").shift(1)
    prev_hour = pl.when(same).then(pl.col("hour_ts").shift(1))
    return (
        values.select("station_id", "hour_ts", prev_hour.alias("lo"))
        .filter(pl.col("lo").is_null() | (pl.col("lo") < pl.col("hour_ts") - HOUR_MS))
        .unique(KEY)
        .with_columns(pl.col("lo").fill_null(-1))
    )


def _with_previous(values: pl.DataFrame, pred: pl.DataFrame) -> pl.DataFrame:
    """Each value with the previous one of its station: the previous row, or for an hour's
    first row the stored predecessor (`pred`) when that one is later. Rows come back in
    no particular order (heads appended), as in the rollups' `_steps`."""
    same = pl.col("station_id") == pl.col("station_id").shift(1)
    head = (~same | (pl.col("hour_ts") != pl.col("hour_ts").shift(1))).fill_null(True)
    frame = values.with_columns(
        pl.when(same).then(pl.col("ts").shift(1)).alias("prev_ts"),
        pl.when(same).then(pl.col("v").shift(1)).alias("prev_v"),
        head.alias("head"),
    )
    if pred.is_empty():
        return frame.drop("head")
    use = pl.col("pred_ts").is_not_null() & (
        pl.col("prev_ts").is_null() | (pl.col("pred_ts") > pl.col("prev_ts"))
    )
    heads = (
        frame.filter("head")
        .join(pred, on=KEY, how="left")
        .with_columns(
            pl.when(use).then(pl.col("pred_ts")).otherwise(pl.col("prev_ts")).alias("prev_ts"),
            pl.when(use).then(pl.col("pred_v")).otherwise(pl.col("prev_v")).alias("prev_v"),
        )
        .drop("pred_ts", "pred_v")
    )
    return pl.concat([frame.filter(~pl.col("head")), heads], how="vertical").drop("head")


def _classify(
    steps: pl.DataFrame, limits: pl.DataFrame, moduli: pl.DataFrame, max_kw: float
) -> pl.DataFrame:
    """Kind, gap and counted kWh of each delta (null kind: a first value, no delta)."""
    if not moduli.is_empty():
        steps = steps.join(moduli, on="station_id", how="left")
    else:
        steps = steps.with_columns(pl.lit(None, pl.Float64).alias("modulus"))
    steps = steps.join(limits, on=KEY, how="left")
    v, prev = pl.col("v"), pl.col("prev_v")
    dt = pl.col("ts") - pl.col("prev_ts")
    dv = v - prev
    cap = dt.cast(pl.Float64) * (max_kw / HOUR_MS)  # the most kWh plausible over dt
    wrapped = v + pl.col("modulus") - prev
    kind = (
        pl.when(pl.col("prev_ts").is_null())
        .then(None)
        .when(dv >= 0)
        .then(pl.when(dv > cap).then(IMPLAUSIBLE).otherwise(NORMAL))
        .when(pl.col("modulus").is_not_null() & (wrapped >= 0) & (wrapped <= cap))
        .then(WRAP)
        .when(v < prev / 2)
        .then(pl.when(v > cap).then(IMPLAUSIBLE).otherwise(RESET))
        .otherwise(GLITCH)
        .cast(pl.Int8)
    )
    counted = (
        pl.when(pl.col("kind") == NORMAL)
        .then(dv)
        .when(pl.col("kind") == WRAP)
        .then(wrapped)
        .when(pl.col("kind") == RESET)
        .then(v)
        .when(pl.col("kind").is_not_null())
        .then(0.0)
    )
    return (
        steps.with_columns(kind.alias("kind"), (dt > pl.col("threshold")).alias("gap"))
        .with_columns(counted.alias("kwh"), pl.lit(True).alias("kept"))
        .drop("modulus", "threshold")
    )


def meter_steps(
    values: pl.DataFrame,
    pred: pl.DataFrame,
    limits: pl.DataFrame,
    moduli: pl.DataFrame,
    max_kw: float,
) -> pl.DataFrame:
    """Every reading of one meter with its delta classified (`STEP_SCHEMA`).

    `values`: station_id, hour_ts, ts, v sorted by station and time (nulls dropped);
    `pred`: stored predecessors per hour (`PRED_SCHEMA`); `limits`: gap threshold per
    hour; `moduli`: station_id, modulus of the stations that declare one. Dropped
    readings come back too, with `kept` false.
    """
    dropped: list[pl.DataFrame] = []
    for attempt in range(DROP_PASSES + 1):
        steps = _classify(_with_previous(values, pred), limits, moduli, max_kw)
        bad = steps.filter(pl.col("kind").is_in(FLAGGED))
        if bad.is_empty() or attempt == DROP_PASSES:
            break
        # Only the first of consecutive bad readings goes in this pass: the one after a
        # spike is judged again against the last good value (5000 -> 9e6 -> 5001).
        bad = bad.join(
            bad.select("station_id", pl.col("ts").alias("prev_ts")),
            on=["station_id", "prev_ts"],
            how="anti",
        )
        dropped.append(bad.with_columns(pl.lit(False).alias("kept")))
        values = values.join(bad.select("station_id", "ts"), on=["station_id", "ts"], how="anti")
    return pl.concat([steps, *dropped], how="vertical").select(
        pl.col(n).cast(t) for n, t in STEP_SCHEMA.items()
    )


def spread_flag() -> pl.Expr:
    """A gap whose readings lie in different hours: its kWh is spread over the gap."""
    return pl.col("gap").fill_null(False) & (pl.col("prev_ts") < pl.col("hour_ts"))


def hour_aggregates(steps: pl.DataFrame, meter: str) -> pl.DataFrame:
    """Per hour: measured kWh (spread gaps excluded), class counts, first/last kept value."""
    kind = pl.col("kind")
    kept = pl.col("kept")
    ts_kept = pl.col("ts").filter(kept)
    v_kept = pl.col("v").filter(kept)
    return steps.group_by(KEY).agg(
        pl.col("kwh").filter(~spread_flag()).sum().alias(f"{meter}_kwh"),
        (kind == RESET).sum().cast(pl.Int32).alias(f"{meter}_resets"),
        (pl.col("gap").fill_null(False) & kept).sum().cast(pl.Int32).alias(f"{meter}_gaps"),
        (kind == WRAP).sum().cast(pl.Int32).alias(f"{meter}_wraps"),
        kind.is_in(FLAGGED).sum().cast(pl.Int32).alias(f"{meter}_flagged"),
        v_kept.get(ts_kept.arg_min()).alias(f"{meter}_first"),
        ts_kept.min().alias(f"{meter}_first_ts"),
        v_kept.get(ts_kept.arg_max()).alias(f"{meter}_last"),
        ts_kept.max().alias(f"{meter}_last_ts"),
    )


def events(steps: pl.DataFrame, meter_no: int, max_kw: float) -> pl.DataFrame:
    """The deltas worth listing: every one that is not a plain normal delta."""
    notable = steps.filter(
        pl.col("kind").is_not_null() & ((pl.col("kind") != NORMAL) | pl.col("gap"))
    )
    dt_s = (pl.col("ts") - pl.col("prev_ts")) / 1000
    dv = pl.col("v") - pl.col("prev_v")
    reason = (
        pl.when(pl.col("kind") == GLITCH)
        .then(
            pl.format(
                "dropped from {} to {} kWh: neither a reset nor a wrap; reading ignored",
                pl.col("prev_v").round(3),
                pl.col("v").round(3),
            )
        )
        .when(pl.col("kind") == IMPLAUSIBLE)
        .then(
            pl.format(
                "{} kWh in {} s implies {} kW > {} kW; reading ignored",
                pl.when(dv >= 0).then(dv).otherwise(pl.col("v")).round(3),
                dt_s.round(1),
                (pl.when(dv >= 0).then(dv).otherwise(pl.col("v")) / dt_s * 3600).round(0),
                pl.lit(max_kw),
            )
        )
        .otherwise(pl.lit(""))
    )
    kind_name = pl.col("kind").replace_strict(KIND_NAMES, return_dtype=pl.String)
    return notable.select(
        pl.col("station_id").cast(pl.Int32),
        pl.lit(meter_no, pl.Int32).alias("meter"),
        pl.col("ts"),
        pl.col("prev_ts"),
        pl.col("prev_v").alias("prev_kwh"),
        pl.col("v").alias("value_kwh"),
        kind_name.alias("kind"),
        pl.col("gap").fill_null(False).cast(pl.Int32),
        spread_flag().cast(pl.Int32).alias("spread"),
        pl.col("kwh"),
        reason.alias("reason"),
    )


def spread_over(events: pl.DataFrame, starts: pl.Expr, ends: pl.Expr) -> pl.DataFrame:
    """Spread gap events' kWh over periods: `events` (prev_ts, ts, kwh, ...) joined with
    their periods beforehand; `starts`/`ends` the period bounds (epoch ms, end exclusive).
    Adds `part` (kWh in the period, proportional to time) and `estimated` (the gap does
    not lie wholly inside the period)."""
    overlap = (
        pl.min_horizontal(pl.col("ts"), ends) - pl.max_horizontal(pl.col("prev_ts"), starts)
    ).clip(lower_bound=0)
    return events.with_columns(
        (pl.col("kwh") * overlap / (pl.col("ts") - pl.col("prev_ts"))).alias("part"),
        ((pl.col("prev_ts") < starts) | (pl.col("ts") >= ends)).alias("estimated"),
    )


def spread_hours_or_days(events: pl.DataFrame, length_ms: int) -> pl.DataFrame:
    """Spread events (station_id, meter, prev_ts, ts, kwh) over every interval of
    `length_ms` they touch -> station_id, meter, start_ts, part, estimated."""
    if events.is_empty():
        return pl.DataFrame(
            schema={
                "station_id": pl.Int32(),
                "meter": pl.Int32(),
                "start_ts": pl.Int64(),
                "part": pl.Float64(),
                "estimated": pl.Boolean(),
            }
        )
    exploded = events.with_columns(
        pl.int_ranges(
            pl.col("prev_ts") // length_ms * length_ms,
            pl.col("ts") // length_ms * length_ms + 1,
            length_ms,
        ).alias("start_ts")
    ).explode("start_ts", empty_as_null=True)
    starts = pl.col("start_ts")
    return spread_over(exploded, starts, starts + length_ms).select(
        "station_id", "meter", "start_ts", "part", "estimated"
    )
