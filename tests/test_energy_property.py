"""Property: meter consumption telescopes (issue 13) on random register sequences with
gaps, resets, wraps and glitches: hours add up to the register's whole difference plus
the compensations, to the last kWh, and an hour that no gap straddles is exactly
`closing - opening + compensations`. Pure polars (`powerwatch.rollups.energy`), no database."""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from powerwatch.rollups import energy

HOUR_MS = 3_600_000
MODULUS = 10_000.0
MAX_KW = 2000.0
THRESHOLD_MS = 60_000


@dataclass
class Truth:
    ts: list[int]  # real readings
    values: list[float]
    consumed: float  # true consumption between the first and last reading
    compensation: dict[int, float]  # per hour: wraps (+M) and resets (+old value)
    glitches: list[tuple[int, float]]  # extra bad readings (ts, value)


step = st.tuples(
    st.one_of(st.integers(10, 30), st.integers(600, 3 * 86_400)),  # seconds: normal or gap
    st.floats(0.0, 1.5, allow_nan=False).map(lambda x: round(x, 2)),  # kWh consumed
    st.sampled_from(["none"] * 6 + ["reset", "glitch"]),
)


@st.composite
def sequences(draw: st.DrawFn) -> Truth:
    start = draw(st.floats(200.0, MODULUS - 1, allow_nan=False).map(lambda x: round(x, 2)))
    t = 1_700_000_000_000 + draw(st.integers(0, HOUR_MS))
    ts, values = [t], [start]
    compensation: dict[int, float] = {}
    glitches: list[tuple[int, float]] = []
    consumed = 0.0
    for seconds, inc, event in draw(st.lists(step, min_size=1, max_size=60)):
        previous = values[-1]
        if event == "glitch" and 200 <= previous < MODULUS - 50:
            glitches.append((t + 1000, round(previous - 3.0, 2)))
        t += seconds * 1000
        hour = t // HOUR_MS
        if event == "reset" and seconds <= 30 and 200 <= previous < MODULUS / 2:
            value = inc  # the new cycle counts from 0
            compensation[hour] = compensation.get(hour, 0.0) + previous
        else:
            value = round(previous + inc, 2)
            if value >= MODULUS:
                value = round(value - MODULUS, 2)
                compensation[hour] = compensation.get(hour, 0.0) + MODULUS
        ts.append(t)
        values.append(value)
        consumed += inc
    return Truth(ts, values, consumed, compensation, glitches)


def _steps(truth: Truth) -> pl.DataFrame:
    points = sorted([*zip(truth.ts, truth.values, strict=True), *truth.glitches])
    values = pl.DataFrame(
        {"ts": [p[0] for p in points], "v": [p[1] for p in points]},
        schema={"ts": pl.Int64(), "v": pl.Float64()},
    ).select(
        pl.lit(1, pl.Int32).alias("station_id"),
        (pl.col("ts") // HOUR_MS * HOUR_MS).alias("hour_ts"),
        "ts",
        "v",
    )
    limits = (
        values.select("station_id", "hour_ts")
        .unique()
        .with_columns(pl.lit(THRESHOLD_MS, pl.Int64).alias("threshold"))
    )
    moduli = pl.DataFrame({"station_id": [1], "modulus": [MODULUS]}).cast({"station_id": pl.Int32})
    pred = pl.DataFrame(schema=energy.PRED_SCHEMA)
    return energy.meter_steps(values, pred, limits, moduli, MAX_KW)


@settings(max_examples=150, deadline=None)
@given(sequences())
def test_hours_telescope_to_the_whole_register_difference(truth: Truth) -> None:
    steps = _steps(truth)
    hours = energy.hour_aggregates(steps, "m")
    gaps = energy.events(steps, 1, MAX_KW).filter(pl.col("spread") == 1)
    spread = energy.spread_hours_or_days(gaps, HOUR_MS)
    parts = spread.group_by("start_ts").agg(pl.col("part").sum())
    total = float(hours["m_kwh"].sum()) + float(parts["part"].sum())
    # Everything consumed between the first and the last reading, to the last kWh.
    assert total == pytest.approx(truth.consumed, abs=1e-6)
    assert hours["m_flagged"].sum() == len(truth.glitches)

    # An hour that no spread gap touches: exactly closing - opening + compensations.
    straddled = set(spread["start_ts"].to_list())
    real = dict(zip(truth.ts, truth.values, strict=True))
    for row in hours.sort("hour_ts").iter_rows(named=True):
        hour = row["hour_ts"]
        if hour in straddled or row["m_first_ts"] == truth.ts[0]:
            continue
        opening = real[max(t for t in truth.ts if t < hour)]
        closing = real[row["m_last_ts"]]
        expected = closing - opening + truth.compensation.get(hour // HOUR_MS, 0.0)
        assert row["m_kwh"] == pytest.approx(expected, abs=1e-6)


@settings(max_examples=50, deadline=None)
@given(sequences(), st.integers(1, 10**9))
def test_any_cut_into_periods_adds_up(truth: Truth, cut: int) -> None:
    """Two consecutive periods split anywhere (not on an hour) add up to the whole."""
    steps = _steps(truth)
    at = truth.ts[0] + cut % max(1, truth.ts[-1] - truth.ts[0])
    events = energy.events(steps, 1, MAX_KW).filter(pl.col("spread") == 1)
    plain = steps.filter(~energy.spread_flag() & pl.col("kwh").is_not_null())
    halves = []
    for lo, hi in ((truth.ts[0] - 1, at), (at, truth.ts[-1] + 1)):
        inside = float(plain.filter((pl.col("ts") >= lo) & (pl.col("ts") < hi))["kwh"].sum())
        bounds = (pl.lit(lo, pl.Int64), pl.lit(hi, pl.Int64))
        halves.append(inside + float(energy.spread_over(events, *bounds)["part"].sum()))
    assert sum(halves) == pytest.approx(truth.consumed, abs=1e-6)
