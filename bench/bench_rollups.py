"""Rollups benchmark: refresh throughput, the live increment, the queue's cost on the load.

    python -m bench.bench_rollups            # 100 stations x 3 h at 1 Hz (~1 M readings)
    python -m bench.bench_rollups --quick    # a smoke run on small data

Baseline in this same run, on the same readings: the plain SQL `GROUP BY` of
`db.queries.aggregates` (avg/min/max/count per station-hour; no meter deltas, no
days, nothing written). The queue's cost on the load is in bench_load's figures
(run before and after the rollups were added), and measured here directly: the
same load with and without the queue, in this run.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from bench.bench_load import fresh_database
from bench.data import EPOCH, readings
from bench.report import bench_arguments, publish, table
from powerwatch.core.parquet_files import write_parquet_atomically


@dataclass
class Sizes:
    stations: int = 100
    seconds: int = 3 * 3600
    chunks: int = 10
    live_rounds: int = 5
    ab_rounds: int = 3


QUICK = Sizes(stations=10, seconds=1800, chunks=3, live_rounds=2, ab_rounds=2)


def _load(frame: pl.DataFrame, name: str) -> float:
    from db.engine import bulk_connection
    from powerwatch.core.settings import get_settings
    from powerwatch.load.chunks import load_chunk

    settings = get_settings()
    path = write_parquet_atomically(frame, settings.landing_dir / f"{name}.parquet")
    started = time.perf_counter()
    with bulk_connection() as bulk:
        load_chunk(bulk, path, settings)
    return time.perf_counter() - started


def main() -> None:
    args = bench_arguments(__doc__)
    sizes = QUICK if args.quick else Sizes()

    import powerwatch.load.store
    from db.engine import bulk_connection
    from db.queries import aggregates
    from db.rollup_queue import pending_hours
    from powerwatch.rollups.queries import rollups
    from powerwatch.rollups.refresh import refresh_rollups

    # The last minutes are kept back for the live rounds, so those recompute a nearly
    # full hour per station: the worst case of a refresh in steady state.
    live_start = sizes.seconds - 60 * sizes.live_rounds
    data = readings(sizes.stations, live_start)
    step = data.height // sizes.chunks

    def load_all(prefix: str) -> float:
        return sum(
            _load(data.slice(i * step, step), f"{prefix}-{i:03d}") for i in range(sizes.chunks)
        )

    with tempfile.TemporaryDirectory(prefix="pw-bench-rollups-") as tmp:
        root = Path(tmp)
        # The queue's cost on the load: the same chunks with and without `mark_dirty`,
        # alternating which goes first.
        marking = vars(powerwatch.load.store)["mark_dirty"]
        inside = [0.0]

        def timed_marking(*args: Any) -> None:
            started = time.perf_counter()
            marking(*args)
            inside[0] += time.perf_counter() - started

        timings: dict[bool, list[float]] = {True: [], False: []}
        for r in range(sizes.ab_rounds):
            for queue in (True, False) if r % 2 == 0 else (False, True):
                fresh_database(root, f"ab-{r}-{queue}", sizes.stations)
                vars(powerwatch.load.store)["mark_dirty"] = (
                    timed_marking if queue else (lambda *_args: None)
                )
                timings[queue].append(load_all("ab"))
        vars(powerwatch.load.store)["mark_dirty"] = marking
        with_queue, without_queue = (statistics.median(timings[q]) for q in (True, False))

        fresh_database(root, "rollups", sizes.stations)
        load_s = load_all("chunk")
        with bulk_connection() as bulk:
            queued = pending_hours(bulk)
            started = time.perf_counter()
            result = refresh_rollups(bulk)
            refresh_s = time.perf_counter() - started
            started = time.perf_counter()
            baseline = aggregates(bulk, 3600)
            group_by_s = time.perf_counter() - started
            started = time.perf_counter()
            daily = rollups(bulk, "day")
            daily_ms = (time.perf_counter() - started) * 1000
            started = time.perf_counter()
            one = rollups(bulk, "hour", station="BENCH-0001")
            one_ms = (time.perf_counter() - started) * 1000
        stored = step * sizes.chunks

        # Live: one more minute of every station, loaded then refreshed (the current hour
        # of each station is recomputed whole).
        live = []
        for r in range(sizes.live_rounds):
            minute = readings(sizes.stations, 60, start_second=live_start + 60 * r)
            _load(minute, f"live-{r:03d}")
            with bulk_connection() as bulk:
                started = time.perf_counter()
                refresh_rollups(bulk)
                live.append(time.perf_counter() - started)
        live_s = statistics.median(live)
    assert baseline.height == result.recomputed, (baseline.height, result)
    rows = [
        (
            "refresh: every queued station-hour from scratch",
            f"{stored / refresh_s:,.0f} readings/s",
            "1.00",
            f"{queued:,} station-hours, {stored:,} readings, {refresh_s:.2f} s",
        ),
        (
            "baseline: SQL GROUP BY avg/min/max/count per station-hour",
            f"{stored / group_by_s:,.0f} readings/s",
            f"{group_by_s / refresh_s:.2f}x",
            "no meter deltas, no daily rollup, nothing written",
        ),
        (
            "load of the same readings (incl. queueing the hours)",
            f"{stored / load_s:,.0f} readings/s",
            "",
            f"{load_s:.2f} s; refresh adds {refresh_s / load_s:.0%} of the load time",
        ),
        (
            "load with the rollup queue (`mark_dirty` in store_readings)",
            f"{stored / with_queue:,.0f} readings/s",
            f"{without_queue / with_queue:.2f}x",
            f"time inside mark_dirty: {inside[0] / sum(timings[True]):.1%} of those loads "
            "(the direct figure); the ratio is vs the same load without it, "
            f"{stored / without_queue:,.0f} readings/s (median of {sizes.ab_rounds} each, "
            "alternating), and moves with the shared machine's load",
        ),
        (
            "live: refresh after one more minute of every station (hour nearly full)",
            f"{live_s * 1000:.0f} ms",
            "",
            f"{sizes.stations} station-hours recomputed, median of {sizes.live_rounds}",
        ),
        ("query: daily rollups of every station", f"{daily_ms:.1f} ms", "", f"{daily.height} rows"),
        ("query: one station's hourly rollups", f"{one_ms:.1f} ms", "", f"{one.height} rows"),
    ]
    markdown = (
        "## Rollups: refresh, live increment, queries (`bench/bench_rollups.py`)\n\n"
        f"Synthetic data: {sizes.stations} stations at 1 Hz for {sizes.seconds // 3600} h from "
        f"{EPOCH:%Y-%m-%d}, loaded in {sizes.chunks} chunks through `load_chunk`, then "
        "refreshed. SQLite, WAL.\n\n" + table(rows, ("what", "result", "powerwatch vs it", "notes"))
    )
    publish("bench-rollups", markdown, args)


if __name__ == "__main__":
    main()
