"""Load speed by row order: the same readings in time, station and random order.

    python -m bench.bench_load_order            # 500,000 readings, 3 runs per order
    python -m bench.bench_load_order --quick    # a smoke run on small data

Issue 14: a chunk in random row order (a one-off script, another collector) loaded at
0.58x the baseline while one in time order loaded at 1.37x. Each order is one chunk
loaded in-process by `powerwatch.load.chunks.load_chunk` (claim, validate, store, move) into a
fresh database; the baseline, alternating with it on a fresh database each time, is a
bare stdlib `sqlite3.executemany` of the same rows *sorted by key* (its best case;
`bench_load.run_stdlib`). Ratios are of medians; target >= 1.25x for every order.
500 k readings (50 stations x 10,000 s) keep the run to a few minutes on 2 cores; the
loader streams chunks in 100 k-row slices, so a bigger chunk only has more slices.
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import polars as pl

from bench.bench_load import fresh_database, run_stdlib
from bench.data import readings
from bench.report import bench_arguments, publish, table

ORDERS = ("time", "station", "random")


def ordered(frame: pl.DataFrame, order: str) -> pl.DataFrame:
    if order == "station":
        return frame.sort("station", "timestamp")
    if order == "random":
        return frame.sample(fraction=1.0, shuffle=True, seed=14)
    return frame  # bench.data.readings: every station each second, as captured live


def load_once(root: Path, name: str, stations: int, chunk: Path) -> float:
    fresh_database(root, name, stations)
    from db.engine import bulk_connection
    from powerwatch.core.settings import get_settings
    from powerwatch.load.chunks import load_chunk

    settings = get_settings()
    settings.landing_dir.mkdir(parents=True, exist_ok=True)
    target = shutil.copy(chunk, settings.landing_dir / chunk.name)
    started = time.perf_counter()
    with bulk_connection() as bulk:
        report = load_chunk(bulk, Path(target), settings)
    elapsed = time.perf_counter() - started
    assert report.inserted == pl.scan_parquet(chunk).select(pl.len()).collect().item()
    return elapsed


def main() -> None:
    args = bench_arguments(__doc__)
    stations, seconds, runs = (10, 2_000, 1) if args.quick else (50, 10_000, 5)
    base = readings(stations, seconds)
    rows = []
    with tempfile.TemporaryDirectory(prefix="pw-bench-order-") as tmp:
        root = Path(tmp)
        by_key = root / "by-key.parquet"
        base.sort("station", "timestamp").write_parquet(by_key)
        for order in ORDERS:
            chunk = root / f"{order}.parquet"
            ordered(base, order).write_parquet(chunk)
            ours, stdlib = [], []
            for i in range(runs):
                ours.append(load_once(root, f"ours-{order}-{i}", stations, chunk))
                stdlib.append(
                    run_stdlib(fresh_database(root, f"std-{order}-{i}", stations), [by_key])[0]
                )
            o, s = statistics.median(ours), statistics.median(stdlib)
            rows.append(
                (
                    order,
                    f"{base.height / o:,.0f} rows/s ({o:.2f} s)",
                    f"{base.height / s:,.0f} rows/s ({s:.2f} s)",
                    f"{s / o:.2f}x",
                )
            )
            print(rows[-1], flush=True)
    load = os.getloadavg()[0]
    markdown = "\n\n".join(
        [
            "## Load by row order (`bench/bench_load_order.py`)",
            f"One chunk of {base.height:,} readings ({stations} stations x {seconds:,} s), "
            f"median of {runs} runs per order, each on a fresh database; baseline: stdlib "
            "`executemany` of the same rows sorted by key, alternating with ours. "
            f"Load average at the end {load:.1f} on {os.cpu_count()} cores. Target >= 1.25x.",
            table(
                rows,
                ("row order", "powerwatch load_chunk", "stdlib executemany, sorted", "ratio"),
            ),
        ]
    )
    publish("bench-load-order", markdown, args)


if __name__ == "__main__":
    main()
