"""Energy statement benchmark: a month for 1,000 stations (4,000 rows) from the rollups.

    python -m bench.bench_energy            # 1,000 stations, October 2026 (Asia/Bangkok)
    python -m bench.bench_energy --quick    # 50 stations, a smoke run

The rollups are written directly (what `refresh_rollups` would have stored for meters
counting steadily, every hour of the month and the day before, with one spread gap
event per station across the month's end): the statement never reads raw readings, so
the benchmark measures exactly what it reads. Target (issue 13): <= 2 s.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import polars as pl

from bench.bench_load import fresh_database
from bench.report import bench_arguments, publish, table

MONTH, TZ = "2026-10", "Asia/Bangkok"
HOUR_MS, DAY_MS = 3_600_000, 86_400_000


def _rollups(stations: int, start: int, end: int) -> tuple[pl.DataFrame, pl.DataFrame]:
    from db.tables import MUX_COLUMNS
    from powerwatch.rollups.compute import ROLLUP_SCHEMA

    hours = pl.DataFrame({"start_ts": pl.int_range(start, end, HOUR_MS, eager=True)}).join(
        pl.DataFrame({"station_id": pl.int_range(1, stations + 1, eager=True)}), how="cross"
    )
    n = (pl.col("start_ts") - start) // HOUR_MS + 1
    columns: dict[str, pl.Expr] = {
        "samples": pl.lit(3600),
        "first_ts": pl.col("start_ts"),
        "last_ts": pl.col("start_ts") + HOUR_MS - 1000,
        "normal_interval_ms": pl.lit(1000.0),
    }
    for k, m in enumerate(MUX_COLUMNS, start=1):
        rate = 10.0 * k  # kWh per hour
        columns |= {
            f"{m}_kwh": pl.lit(rate),
            f"{m}_first": 1000.0 + (n - 1) * rate,
            f"{m}_first_ts": pl.col("start_ts"),
            f"{m}_last": 1000.0 + n * rate,
            f"{m}_last_ts": pl.col("start_ts") + HOUR_MS - 1000,
        }
    hourly = hours.with_columns(**columns).select(
        pl.col(c).cast(t) if c in hours.columns or c in columns else pl.lit(0).cast(t).alias(c)
        for c, t in ROLLUP_SCHEMA.items()
    )
    from powerwatch.rollups.compute import combine

    daily = (
        hourly.with_columns((pl.col("start_ts") // DAY_MS * DAY_MS).alias("day"))
        .group_by("station_id", "day")
        .agg(combine(pl.col("normal_interval_ms").median()))
        .rename({"day": "start_ts"})
        .select(pl.col(c).cast(t) for c, t in ROLLUP_SCHEMA.items())
    )
    return hourly, daily


def main() -> None:
    args = bench_arguments(__doc__)
    stations = 50 if args.quick else 1000

    from db.engine import bulk_connection
    from powerwatch.core.settings import get_settings
    from powerwatch.rollups.statements import compute_statement, issue_statement, month_period

    start, end = month_period(MONTH, TZ)
    with tempfile.TemporaryDirectory(prefix="pw-bench-energy-") as tmp:
        fresh_database(Path(tmp), "energy", stations)
        hourly, daily = _rollups(stations, start - DAY_MS, end + DAY_MS)
        events = pl.DataFrame(
            {"station_id": pl.int_range(1, stations + 1, eager=True, dtype=pl.Int32)}
        ).select(
            "station_id",
            pl.lit(1, pl.Int32).alias("meter"),
            pl.lit(end + 1000).alias("ts"),
            pl.lit(end - 1800_000).alias("prev_ts"),
            pl.lit(5000.0).alias("prev_kwh"),
            pl.lit(5005.0).alias("value_kwh"),
            pl.lit("normal").alias("kind"),
            pl.lit(1, pl.Int32).alias("gap"),
            pl.lit(1, pl.Int32).alias("spread"),
            pl.lit(5.0).alias("kwh"),
            pl.lit("").alias("reason"),
        )
        with bulk_connection() as bulk:
            with bulk.transaction():
                bulk.ingest("rollup_hourly", hourly.to_arrow())
                bulk.ingest("rollup_daily", daily.to_arrow())
                bulk.ingest("energy_events", events.to_arrow())
            timings = []
            for _ in range(3):
                started = time.perf_counter()
                statement = compute_statement(bulk, MONTH, TZ)
                timings.append(time.perf_counter() - started)
            started = time.perf_counter()
            issued = issue_statement(bulk, MONTH, TZ, get_settings().statements_dir)
            issue_s = time.perf_counter() - started
            started = time.perf_counter()
            again = issue_statement(bulk, MONTH, TZ, get_settings().statements_dir)
            again_s = time.perf_counter() - started
    assert statement.height == 4 * stations and issued.revision == again.revision == 1
    compute_s = statistics.median(timings)
    rows = [
        (
            f"statement of a month, {stations:,} stations (compute)",
            f"{compute_s:.2f} s",
            f"{statement.height:,} rows from {hourly.height:,} hourly + {daily.height:,} daily "
            "rollup rows stored; median of 3",
        ),
        (
            "issue: compute + record revision 1 + CSV and Parquet",
            f"{issue_s:.2f} s",
            "one transaction, files written under a hidden name then renamed",
        ),
        ("issue again, unchanged (compare with revision 1)", f"{again_s:.2f} s", "no new revision"),
    ]
    markdown = (
        "## Energy statements (`bench/bench_energy.py`)\n\n"
        f"Month {MONTH} in {TZ} (UTC+7: the whole UTC days from `rollup_daily`, the edge hours "
        "from `rollup_hourly`), one spread gap per station across the month's end. SQLite, "
        "WAL. Target: <= 2 s.\n\n" + table(rows, ("what", "result", "notes"))
    )
    publish("bench-energy", markdown, args)


if __name__ == "__main__":
    main()
