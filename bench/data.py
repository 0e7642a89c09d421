"""Synthetic readings shaped like the real ones (see the legacy samples).

Deterministic for a seed; built with polars expressions (no per-row Python),
so generating 10 M readings takes a second or two.
"""

from __future__ import annotations

from datetime import UTC, datetime

import polars as pl

from schemas.channels import ACTIVE_CHANNELS, MUX_CHANNELS
from schemas.registry import Station

EPOCH = datetime(2026, 10, 1, tzinfo=UTC)


def station_names(count: int) -> list[str]:
    return [f"BENCH-{i:04d}" for i in range(count)]


def bench_stations(count: int) -> list[Station]:
    return [
        Station(
            name,
            f"00000000-0000-4000-8000-{i:012d}",
            "127.0.0.1",
            "bench",
            f"ws://127.0.0.1:{20000 + i}/",
        )
        for i, name in enumerate(station_names(count))
    ]


def _noise(index: pl.Expr, seed: int, modulo: int) -> pl.Expr:
    return (index.hash(seed) % modulo).cast(pl.Float64)


def readings(stations: int, seconds: int, *, start_second: int = 0, seed: int = 0) -> pl.DataFrame:
    """Every station once per second for `seconds`, interleaved as they arrive live."""
    names = pl.Series("station", station_names(stations), dtype=pl.String)
    n = stations * seconds
    i = pl.int_range(0, n, dtype=pl.Int64)
    second = i // stations + start_second
    station_no = i % stations
    # Values are a function of (station, second), not of the position in this frame:
    # two calls over overlapping seconds give the same readings (rotated logs).
    i = second * stations + station_no
    columns: dict[str, pl.Expr] = {
        "station": pl.lit(names).gather(station_no),
        "timestamp": (pl.lit(int(EPOCH.timestamp() * 1000)) + second * 1000)
        .cast(pl.Datetime("ms"))
        .dt.replace_time_zone("UTC"),
    }
    for k, c in enumerate(ACTIVE_CHANNELS):
        if k < 3:
            power = 1500.0 + 7.0 * station_no.cast(pl.Float64) + _noise(i, seed + k, 20_000) / 100
        else:  # outputs 4-6: usually 0, sometimes a few watts, as in the real logs
            power = (
                pl.when(_noise(i, seed + k, 10) == 0)
                .then(_noise(i, seed + 10 + k, 5_000) / 100)
                .otherwise(0.0)
            )
        columns[c.key] = power.round(2)
    for k, c in enumerate(MUX_CHANNELS):
        meter = 783_700.0 + 1000.0 * station_no.cast(pl.Float64)
        columns[c.key] = (meter + second.cast(pl.Float64) * 0.0006 * (k + 1)).round(2)
    # DataFrame().select, not LazyFrame().select: polars 1.44 broadcasts a literal Series against
    # the empty LazyFrame (length 0) inside when/then and fails.
    return pl.DataFrame().select(**columns)


def spoil(frame: pl.DataFrame, fraction: float, seed: int = 1) -> pl.DataFrame:
    """Make `fraction` of the rows invalid (out of range), spread evenly."""
    step = round(1 / fraction)
    index = pl.int_range(0, frame.height)
    bad = (index.hash(seed) % step) == 0
    return frame.with_columns(
        pl.when(bad).then(-5000.0).otherwise(pl.col("activePower2")).alias("activePower2")
    )
