"""Foundation benchmark: load throughput, re-load, size per reading, query latency, memory.

    python -m bench.bench_load            # the full run (1 M / 10 M readings), a few minutes
    python -m bench.bench_load --quick    # a smoke run on small data (used by the test suite)

Baselines run in this same process on the same chunks: a bare stdlib
`sqlite3.executemany` into the same keyed table, SQLAlchemy ORM `add_all`
and pandas `to_sql`.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from bench.data import EPOCH, bench_stations, readings, spoil
from bench.deployed import deployed_python
from bench.report import bench_arguments, publish, table
from powerwatch.core.parquet_files import write_parquet_atomically

CHUNKS = 10


@dataclass
class Sizes:
    stations: int = 100
    seconds: int = 9_500  # 100 x 9,500 = 950 k unique readings, +5 % duplicates = 1 M rows
    orm_rows: int = 100_000
    big_full_stations: int = 100  # each with a whole day at 1 Hz
    big_stations: int = 1_000
    big_sparse_seconds: int = 1_500
    query_repeats: int = 15
    load_repeats: int = 3  # ours and stdlib alternate, each on a fresh database; medians


QUICK = Sizes(
    stations=10,
    seconds=2_000,
    orm_rows=5_000,
    big_full_stations=3,
    big_stations=50,
    big_sparse_seconds=100,
    query_repeats=3,
    load_repeats=1,
)


def _env(db: Path, data: Path, stations: Path) -> None:
    os.environ["POWERWATCH_DATABASE_URL"] = f"sqlite:///{db}"
    os.environ["POWERWATCH_DATA_DIR"] = str(data)
    os.environ["POWERWATCH_STATIONS"] = str(stations)


def fresh_database(root: Path, name: str, stations: int) -> Path:
    """An upgraded database with the bench stations registered, wired into the settings."""
    from db.engine import make_engine
    from db.migrate import upgrade
    from db.stations import sync_stations

    db = root / f"{name}.db"
    _env(db, root / f"{name}-data", root / "stations.yaml")
    engine = make_engine()
    upgrade(engine)
    sync_stations(engine, bench_stations(stations))
    engine.dispose()
    return db


def make_chunks(sizes: Sizes, folder: Path) -> tuple[list[Path], pl.DataFrame]:
    """10 chunks: 95 % new readings in arrival order, 5 % exact duplicates of earlier ones,
    1 % of all rows out of range."""
    base = readings(sizes.stations, sizes.seconds)
    parts = [base.slice(i * base.height // CHUNKS, base.height // CHUNKS) for i in range(CHUNKS)]
    dup_per_chunk = round(base.height / CHUNKS / 19)  # 5 % of each chunk
    chunks = []
    for i, part in enumerate(parts):
        earlier = pl.concat(parts[: max(i, 1)])
        dups = earlier.sample(dup_per_chunk, seed=i)
        chunks.append(spoil(pl.concat([part, dups]), 0.01, seed=i))
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, chunk in enumerate(chunks):
        path = folder / f"chunk-{i:03d}.parquet"
        chunk.write_parquet(path, compression="zstd")
        paths.append(path)
    return paths, base


def _into_landing(paths: list[Path], landing: Path, prefix: str = "") -> None:
    landing.mkdir(parents=True, exist_ok=True)
    for i, path in enumerate(paths):
        target = landing / f"{prefix}{path.name}"
        shutil.copy(path, target)
        os.utime(target, ns=(i * 10**9, i * 10**9))


def run_ours() -> tuple[float, int]:
    from db.engine import bulk_connection
    from powerwatch.core.settings import get_settings
    from powerwatch.load import landing
    from powerwatch.load.chunks import load_chunk

    settings = get_settings()
    rows = 0
    started = time.perf_counter()
    with bulk_connection() as bulk:
        for chunk in landing.list_chunks(settings.landing_dir):
            rows += load_chunk(bulk, chunk, settings).rows_in
    return time.perf_counter() - started, rows


def run_stdlib(db: Path, paths: list[Path]) -> tuple[float, int]:
    """Bare stdlib: parquet -> ids -> tuples -> executemany ON CONFLICT DO NOTHING, 50 k/txn."""
    from schemas.channels import CHANNELS

    con = sqlite3.connect(db, isolation_level=None)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=NORMAL")
    ids = pl.DataFrame(
        con.execute("SELECT name, id FROM stations").fetchall(),
        schema=["station", "station_id"],
        orient="row",
    )
    columns = ", ".join(["station_id", "ts", *(c.column for c in CHANNELS), "batch_id"])
    sql = (
        f"INSERT INTO power_readings ({columns}) VALUES ({', '.join('?' * 13)}) "
        "ON CONFLICT DO NOTHING"
    )
    con.execute("INSERT INTO data_sources (kind, reference) VALUES ('manual', 'bench')")
    con.execute(
        "INSERT INTO load_batches (id, source_id, input_name, content_hash, status, "
        "started_at) VALUES (1, 1, 'bench', '', 'committed', CURRENT_TIMESTAMP)"
    )
    rows = 0
    started = time.perf_counter()
    for path in paths:
        frame = (
            pl.read_parquet(path)
            .join(ids, on="station")
            .select(
                "station_id",
                pl.col("timestamp").dt.epoch("ms"),
                *(c.key for c in CHANNELS),
                pl.lit(1).alias("batch_id"),
            )
        )
        tuples = frame.rows()
        for start in range(0, len(tuples), 50_000):
            con.execute("BEGIN")
            con.executemany(sql, tuples[start : start + 50_000])
            con.execute("COMMIT")
        rows += len(tuples)
    elapsed = time.perf_counter() - started
    con.close()
    return elapsed, rows


def _db_rows(frame: pl.DataFrame, db: Path) -> pl.DataFrame:
    from schemas.channels import CHANNELS

    con = sqlite3.connect(db)
    ids = pl.DataFrame(
        con.execute("SELECT name, id FROM stations").fetchall(),
        schema=["station", "station_id"],
        orient="row",
    )
    con.close()
    return frame.join(ids, on="station").select(
        "station_id",
        pl.col("timestamp").dt.epoch("ms").alias("ts"),
        *(pl.col(c.key).alias(c.column) for c in CHANNELS),
        pl.lit(1).alias("batch_id"),
    )


def _seed_batch(db: Path) -> None:
    con = sqlite3.connect(db, isolation_level=None)
    con.execute("INSERT INTO data_sources (kind, reference) VALUES ('manual', 'bench')")
    con.execute(
        "INSERT INTO load_batches (id, source_id, input_name, content_hash, status, "
        "started_at) VALUES (1, 1, 'bench', '', 'committed', CURRENT_TIMESTAMP)"
    )
    con.close()


def run_orm(db: Path, frame: pl.DataFrame) -> tuple[float, int]:
    from sqlalchemy.orm import Session, registry

    from db.engine import make_engine
    from db.tables import power_readings

    class Reading:
        pass

    registry().map_imperatively(Reading, power_readings)
    _seed_batch(db)
    rows = _db_rows(frame, db).to_dicts()
    engine = make_engine()
    started = time.perf_counter()
    with Session(engine) as session:
        for start in range(0, len(rows), 50_000):
            objects = []
            for values in rows[start : start + 50_000]:
                obj = Reading()
                obj.__dict__.update({})
                for key, value in values.items():
                    setattr(obj, key, value)
                objects.append(obj)
            session.add_all(objects)
            session.commit()
    return time.perf_counter() - started, len(rows)


def run_pandas(db: Path, frame: pl.DataFrame) -> tuple[float, int]:
    from db.engine import make_engine

    _seed_batch(db)
    pdf = _db_rows(frame, db).to_pandas()
    engine = make_engine()
    started = time.perf_counter()
    pdf.to_sql("power_readings", engine, if_exists="append", index=False, chunksize=50_000)
    return time.perf_counter() - started, len(pdf)


def bytes_per_reading(db: Path) -> tuple[float, int]:
    con = sqlite3.connect(db)
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    stored = con.execute("SELECT count(*) FROM power_readings").fetchone()[0]
    con.close()
    return db.stat().st_size / stored, stored


MEMORY_PROBE = """
import re
from pathlib import Path
def hwm():  # VmHWM: this process's own peak RSS (ru_maxrss would include the parent's)
    return int(re.search(r"VmHWM:\\s+(\\d+)", Path("/proc/self/status").read_text()).group(1))
from db.engine import bulk_connection
from powerwatch.load import landing
from powerwatch.load.chunks import load_chunk
from powerwatch.core.settings import get_settings
import polars, pandera, pyarrow
floor = hwm()
s = get_settings()
with bulk_connection() as b:
    for c in landing.list_chunks(s.landing_dir):
        r = load_chunk(b, c, s)
print(floor, hwm(), r.rows_in)
"""


def peak_memory(root: Path, sizes: Sizes, paths: list[Path]) -> tuple[float, float, int]:
    """Peak RSS (MB) of a fresh process loading one chunk of all 1 M rows, and its import floor."""
    fresh_database(root, "memory", sizes.stations)
    one = pl.concat([pl.read_parquet(p) for p in paths])
    landing_dir = Path(os.environ["POWERWATCH_DATA_DIR"]) / "landing"
    landing_dir.mkdir(parents=True, exist_ok=True)
    one.write_parquet(landing_dir / "one-million.parquet")
    del one
    out = subprocess.run(
        [deployed_python(), "-c", MEMORY_PROBE],
        capture_output=True,
        text=True,
        check=True,
        env=dict(os.environ),
    )
    floor, peak, rows = (int(x) for x in out.stdout.split()[-3:])
    return peak / 1024, floor / 1024, rows


def build_big(root: Path, sizes: Sizes) -> tuple[int, float]:
    """~10 M readings: `big_full_stations` with a whole day at 1 Hz, the rest sparse."""
    fresh_database(root, "big", sizes.big_stations)
    from db.engine import bulk_connection
    from powerwatch.core.settings import get_settings
    from powerwatch.load.chunks import load_chunk

    settings = get_settings()
    day = readings(sizes.big_full_stations, 86_400)
    sparse = readings(sizes.big_stations, sizes.big_sparse_seconds).filter(
        pl.col("station") >= f"BENCH-{sizes.big_full_stations:04d}"
    )
    everything = pl.concat([day, sparse]).sort("timestamp")
    step = 1_000_000
    started = time.perf_counter()
    with bulk_connection() as bulk:
        for i in range(0, everything.height, step):
            path = write_parquet_atomically(
                everything.slice(i, step), settings.landing_dir / f"big-{i:012d}.parquet"
            )
            load_chunk(bulk, path, settings)
    return everything.height, time.perf_counter() - started


def query_latency(sizes: Sizes) -> tuple[float, float, int, int]:
    from db.engine import bulk_connection
    from db.queries import latest, station_day

    def timed(fn: Callable[[], pl.DataFrame]) -> tuple[float, int]:
        fn()  # warm the page cache and the connection once
        runs = []
        height = 0
        for _ in range(sizes.query_repeats):
            started = time.perf_counter()
            height = fn().height
            runs.append(time.perf_counter() - started)
        return statistics.median(runs) * 1000, height

    with bulk_connection() as bulk:
        day_ms, day_rows = timed(lambda: station_day(bulk, "BENCH-0001", EPOCH))
        latest_ms, stations = timed(lambda: latest(bulk))
    return day_ms, latest_ms, day_rows, stations


def _median_run(runs: list[tuple[float, int]]) -> tuple[float, int]:
    """The run of median rate, as (seconds, rows)."""
    return sorted(runs, key=lambda run: run[1] / run[0])[len(runs) // 2]


def main() -> None:
    args = bench_arguments(__doc__)
    sizes = QUICK if args.quick else Sizes()
    with tempfile.TemporaryDirectory(prefix="pw-bench-") as tmp:
        root = Path(tmp)
        paths, base = make_chunks(sizes, root / "chunks")
        total_rows = sum(pl.scan_parquet(p).select(pl.len()).collect().item() for p in paths)

        # Alternating runs on fresh databases, medians: the shared 2-core machine moves
        # single runs by +-15 %, which a single pair of runs would put into the ratio.
        loads, reloads, stdlibs = [], [], []
        for i in range(sizes.load_repeats):
            ours_db = fresh_database(root, f"ours-{i}", sizes.stations)
            _into_landing(paths, Path(os.environ["POWERWATCH_DATA_DIR"]) / "landing")
            loads.append(run_ours())
            if i == 0:
                per_reading, stored = bytes_per_reading(ours_db)
            _into_landing(paths, Path(os.environ["POWERWATCH_DATA_DIR"]) / "landing", "again-")
            reloads.append(run_ours())
            stdlibs.append(run_stdlib(fresh_database(root, f"stdlib-{i}", sizes.stations), paths))
        ours_s, ours_rows = _median_run(loads)
        reload_s, reload_rows = _median_run(reloads)
        stdlib_s, stdlib_rows = _median_run(stdlibs)

        subset = base.head(sizes.orm_rows)
        orm_s, orm_rows = run_orm(fresh_database(root, "orm", sizes.stations), subset)
        pandas_s, pandas_rows = run_pandas(fresh_database(root, "pandas", sizes.stations), subset)

        peak_mb, floor_mb, memory_rows = peak_memory(root, sizes, paths)
        big_rows, big_s = build_big(root, sizes)
        big_db = Path(os.environ["POWERWATCH_DATABASE_URL"].removeprefix("sqlite:///"))
        big_per_reading, _ = bytes_per_reading(big_db)
        day_ms, latest_ms, day_rows, latest_rows = query_latency(sizes)

    ours_rate = ours_rows / ours_s
    rate = {
        "stdlib": stdlib_rows / stdlib_s,
        "orm": orm_rows / orm_s,
        "pandas": pandas_rows / pandas_s,
    }
    rows = [
        (
            "load: powerwatch (chunk on disk -> validated -> committed)",
            f"{ours_rate:,.0f} rows/s",
            "1.00",
            f"{ours_rows:,} rows, {ours_s:.2f} s; median of {sizes.load_repeats} runs",
        ),
        (
            "baseline: stdlib sqlite3.executemany (no validation)",
            f"{rate['stdlib']:,.0f} rows/s",
            f"{ours_rate / rate['stdlib']:.2f}x",
            f"median of {sizes.load_repeats} runs, alternating with ours; target >= 1.25x",
        ),
        (
            "baseline: SQLAlchemy ORM add_all",
            f"{rate['orm']:,.0f} rows/s",
            f"{ours_rate / rate['orm']:.1f}x",
            f"{orm_rows:,} unique rows",
        ),
        (
            "baseline: pandas to_sql",
            f"{rate['pandas']:,.0f} rows/s",
            f"{ours_rate / rate['pandas']:.1f}x",
            f"{pandas_rows:,} unique rows",
        ),
        (
            "re-load the same chunks (all duplicates)",
            f"{reload_rows / reload_s:,.0f} rows/s",
            "",
            f"median of {sizes.load_repeats} runs; target >= 600,000 rows/s",
        ),
        (
            "database bytes per reading (1 M load)",
            f"{per_reading:.1f} B",
            "",
            f"{stored:,} readings; target <= 110",
        ),
        (
            "database bytes per reading (10 M)",
            f"{big_per_reading:.1f} B",
            "",
            f"{big_rows:,} readings",
        ),
        (
            "load at 10 M scale (1 M-row chunks)",
            f"{big_rows / big_s:,.0f} rows/s",
            "",
            f"{big_s:.1f} s",
        ),
        (
            "query: one station-day at 1 Hz",
            f"{day_ms:.1f} ms",
            "",
            f"{day_rows:,} rows, median of {sizes.query_repeats}; target <= 100 ms",
        ),
        (
            "query: latest reading of every station",
            f"{latest_ms:.1f} ms",
            "",
            f"{latest_rows:,} stations; target <= 20 ms",
        ),
        (
            "peak memory, one 1 M-row chunk",
            f"{peak_mb:.0f} MB",
            "",
            f"{memory_rows:,} rows; a site's install (no dev packages, `bench/deployed.py`), "
            f"floor after imports {floor_mb:.0f} MB; target <= 400",
        ),
    ]
    markdown = (
        "## Foundation: load, re-load, size, queries, memory (`bench/bench_load.py`)\n\n"
        f"Synthetic data: {sizes.stations} stations, {total_rows:,} rows in {CHUNKS} chunks, "
        "5 % exact duplicates of earlier readings, 1 % out of range. SQLite, WAL, "
        "synchronous=NORMAL. ORM and pandas baselines load the first "
        f"{sizes.orm_rows:,} unique readings (they cannot skip duplicates).\n\n"
        + table(rows, ("what", "result", "powerwatch vs it", "notes"))
    )
    publish("bench-load", markdown, args)


if __name__ == "__main__":
    main()
