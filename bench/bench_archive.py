"""Archive and backup benchmark: archive throughput and memory, archive layout query
times, and an online backup of a ~1 GB database while a loader keeps loading.

    python -m bench.bench_archive            # 10 M readings (~1 GB database), a few minutes
    python -m bench.bench_archive --quick    # a smoke run on small data

One database is built with the load's own bulk path (`powerwatch.load.store.store_readings`,
no chunk files), then, in this order:
1. load throughput of a loader *process* alone (the baseline), then the same loader
   again while `backup_database` runs: backup time, and load rows/s during it as a
   ratio to the baseline;
2. `archive_readings` over all of it in a fresh process: readings/s including
   write, read-back verification and the checked delete; peak RSS (VmHWM);
3. analysts' queries on the archive (one station over the whole range, all
   stations over one day) against the same rows laid out `station=/month=`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import polars as pl

from bench.bench_load import fresh_database
from bench.data import EPOCH, readings
from bench.report import bench_arguments, publish, table


@dataclass
class Sizes:
    stations: int = 100
    seconds: int = 100_000  # 100 x 100,000 = 10 M readings over two UTC days
    loader_chunks: int = 24  # chunks of the concurrent-load measurement
    loader_seconds: int = 2_000  # per chunk: 100 x 2,000 = 200 k readings
    query_repeats: int = 5


QUICK = Sizes(stations=20, seconds=20_000, loader_chunks=4, loader_seconds=500, query_repeats=2)
SLICE = 1_000_000

# Loads every chunk of landing/ in a loop; prints "<monotonic end> <rows>" per chunk.
LOADER = """
import time
from db.engine import bulk_connection
from powerwatch.load import landing
from powerwatch.load.chunks import load_chunk
from powerwatch.core.settings import get_settings
s = get_settings()
with bulk_connection() as bulk:
    for chunk in landing.list_chunks(s.landing_dir):
        started = time.monotonic()
        rows = load_chunk(bulk, chunk, s).inserted
        print(started, time.monotonic(), rows, flush=True)
"""

# Archives everything older than the last day in this fresh process; its own peak RSS.
ARCHIVER = """
import json, re, sys, time
from datetime import datetime
from pathlib import Path
def hwm():
    return int(re.search(r"VmHWM:\\s+(\\d+)", Path("/proc/self/status").read_text()).group(1))
from db.engine import bulk_connection
from powerwatch.archive.writer import archive_day, archive_readings
from powerwatch.core.settings import get_settings
import polars, pyarrow.parquet
floor = hwm()
s = get_settings()
now = datetime.fromisoformat(sys.argv[1])
with bulk_connection() as bulk:
    started = time.perf_counter()
    run = archive_readings(bulk, s.archive_dir, 0, now)
    seconds = time.perf_counter() - started
print(json.dumps({
    "floor_kb": floor, "peak_kb": hwm(), "seconds": seconds, "failed": run.failed,
    "archived": sum(d.archived for d in run.days),
    "days": [(d.day, d.archived, d.seconds, d.delete_seconds) for d in run.days],
    "reclaim_seconds": run.reclaimed.seconds if run.reclaimed else 0.0,
    "reclaim_pages": run.reclaimed.pages if run.reclaimed else 0,
}))
"""


def build(root: Path, sizes: Sizes) -> tuple[Path, int]:
    """The database: every station once per second, stored through the load's bulk path."""
    from db.engine import bulk_connection
    from powerwatch.load.store import begin_batch, finish_batch, store_readings
    from powerwatch.rollups.refresh import refresh_rollups

    db = fresh_database(root, "archive", sizes.stations)
    frame = readings(sizes.stations, sizes.seconds)
    # One reading per station on the day after: the day the cut-off lands in stays.
    tail = readings(sizes.stations, 1, start_second=((sizes.seconds // 86_400) + 1) * 86_400)
    frame = pl.concat([frame, tail])
    with bulk_connection() as bulk:
        for i in range(0, frame.height, SLICE):
            part = frame.slice(i, SLICE)
            with bulk.transaction(lock_tables=("power_readings",)):
                batch = begin_batch(
                    bulk, kind="manual", reference="bench", input_name=f"b{i}", content_hash=""
                )
                result = store_readings(bulk, part, batch)
                finish_batch(
                    bulk,
                    batch,
                    status="committed",
                    rows_in=part.height,
                    result=result,
                    rejected_by_reason={},
                )
        # As the every-5-minutes refresh would have: the archive's delete transaction
        # then only refreshes what is still queued, not the whole build.
        refresh_rollups(bulk)
        bulk.rows("PRAGMA wal_checkpoint(TRUNCATE)")
    return db, frame.height


def _chunks(sizes: Sizes, landing: Path, first_second: int, prefix: str) -> None:
    from powerwatch.core.parquet_files import write_parquet_atomically

    for k in range(sizes.loader_chunks):
        start = first_second + k * sizes.loader_seconds
        frame = readings(sizes.stations, sizes.loader_seconds, start_second=start)
        path = write_parquet_atomically(frame, landing / f"{prefix}-{k:03}.parquet")
        os.utime(path, ns=(k * 10**9, k * 10**9))


def _loader() -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", LOADER], stdout=subprocess.PIPE, text=True, env=dict(os.environ)
    )


def _rate(lines: list[str], window: tuple[float, float] | None = None) -> tuple[float, int]:
    """Rows/s of the chunks that ran entirely inside `window` (all chunks if None), and
    how many chunks that was."""
    spans = [(float(a), float(b), int(r)) for a, b, r in (line.split() for line in lines)]
    if window is not None:
        spans = [s for s in spans if s[0] >= window[0] and s[1] <= window[1]]
    if not spans:
        return float("nan"), 0
    return sum(r for *_, r in spans) / sum(b - a for a, b, _ in spans), len(spans)


def backup_under_load(db: Path, sizes: Sizes, root: Path) -> dict[str, float]:
    from powerwatch.backup.snapshots import backup_database
    from powerwatch.core.settings import get_settings

    settings = get_settings()
    db.parent.mkdir(exist_ok=True)
    beyond = (sizes.seconds // 86_400 + 2) * 86_400  # new readings after everything stored
    _chunks(sizes, settings.landing_dir, beyond, "alone")
    alone = _loader()
    out, _ = alone.communicate()
    baseline, _ = _rate(out.splitlines())

    _chunks(
        sizes, settings.landing_dir, beyond + sizes.loader_chunks * sizes.loader_seconds, "busy"
    )
    size = db.stat().st_size
    loader = _loader()
    assert loader.stdout is not None
    first = loader.stdout.readline()  # the loader is writing: start the backup now
    started = time.monotonic()
    _path, manifest = backup_database(settings.database_url, root / "backups")
    ended = time.monotonic()
    rest, _ = loader.communicate()
    during, inside = _rate([first, *rest.splitlines()], (started, ended))
    return {
        "db_bytes": size,
        "backup_seconds": ended - started,
        "backup_bytes": manifest.bytes,
        "baseline": baseline,
        "during": during,
        "chunks_inside": inside,
        "chunks_after": sum(1 for line in rest.splitlines() if float(line.split()[0]) >= ended),
    }


def archive_in_process(sizes: Sizes) -> dict[str, object]:
    from db.engine import bulk_connection
    from powerwatch.rollups.refresh import refresh_rollups

    with bulk_connection() as bulk:  # the loader's readings, as the 5-minute refresh would
        refresh_rollups(bulk)
    now = EPOCH + timedelta(days=sizes.seconds // 86_400 + 1, hours=1)
    done = subprocess.run(
        [sys.executable, "-c", ARCHIVER, now.isoformat()],
        capture_output=True,
        text=True,
        check=True,
        env=dict(os.environ),
    )
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def query_layouts(archive_dir: Path, root: Path, repeats: int) -> list[tuple[str, ...]]:
    """The analyst's two typical queries on our `date=` layout and on `station=/month=`."""
    other = root / "station-month"
    pl.scan_parquet(archive_dir / "**/*.parquet", hive_partitioning=True).drop("date").with_columns(
        pl.col("timestamp").dt.strftime("%Y-%m").alias("month")
    ).collect().write_parquet(other, partition_by=["station", "month"], compression="zstd")
    one_station = pl.col("station") == "BENCH-0007"
    one_day = pl.col("timestamp").dt.date() == EPOCH.date()

    def timed(folder: Path, predicate: pl.Expr) -> str:
        def query() -> int:
            scan = pl.scan_parquet(folder / "**/*.parquet", hive_partitioning=True)
            return scan.filter(predicate).collect().height

        query()  # warm
        runs = []
        rows = 0
        for _ in range(repeats):
            started = time.perf_counter()
            rows = query()
            runs.append(time.perf_counter() - started)
        return f"{sorted(runs)[len(runs) // 2] * 1000:.0f} ms ({rows:,} rows)"

    return [
        (
            "date= (ours)",
            str(len(list(archive_dir.rglob("*.parquet")))),
            timed(archive_dir, one_station),
            # the partition key prunes the other days' files
            timed(archive_dir, pl.col("date") == EPOCH.date()),
        ),
        (
            "station=/month=",
            str(len(list(other.rglob("*.parquet")))),
            timed(other, one_station),
            timed(other, one_day),
        ),
    ]


def main() -> None:
    args = bench_arguments(__doc__)
    sizes = QUICK if args.quick else Sizes()
    with tempfile.TemporaryDirectory(prefix="pw-bench-archive-") as tmp:
        root = Path(tmp)
        started = time.perf_counter()
        db, stored = build(root, sizes)
        build_s = time.perf_counter() - started
        backup = backup_under_load(db, sizes, root)
        archived = archive_in_process(sizes)
        from powerwatch.core.settings import get_settings

        layouts = query_layouts(get_settings().archive_dir, root, sizes.query_repeats)

    seconds = float(archived["seconds"])  # type: ignore[arg-type]
    vacuum = float(archived["reclaim_seconds"])  # type: ignore[arg-type]
    rate = float(archived["archived"]) / seconds  # type: ignore[arg-type]
    days = archived["days"]
    assert isinstance(days, list)
    longest_lock = max(d[3] for d in days)
    archived_rows = int(archived["archived"])  # type: ignore[call-overload]
    days_s = sum(d[2] for d in days)
    delete_s = sum(d[3] for d in days)
    peak_mb = int(archived["peak_kb"]) / 1024  # type: ignore[call-overload]
    floor_mb = int(archived["floor_kb"]) / 1024  # type: ignore[call-overload]
    ratio = backup["during"] / backup["baseline"]
    results = [
        (
            "archive: write + read-back verify + checked delete",
            f"{archived_rows / days_s:,.0f} readings/s",
            f"{archived_rows:,} readings, {len(days)} day files, {days_s:.1f} s, of which "
            f"delete transactions (the read-back verification runs inside them) {delete_s:.1f} s; "
            "target >= 1,000,000/s",
        ),
        (
            "archive: the same + giving the space back (incremental vacuum)",
            f"{rate:,.0f} readings/s",
            f"{seconds:.1f} s in all, vacuum {vacuum:.1f} s ({archived['reclaim_pages']:,} "
            "pages in 8 MiB steps, each its own short transaction)",
        ),
        (
            "archive: peak memory of the archiving process (VmHWM)",
            f"{peak_mb:,.0f} MB",
            f"imports alone {floor_mb:,.0f} MB; target <= 500 MB",
        ),
        (
            "archive: longest delete transaction (loads wait at most this)",
            f"{longest_lock:.1f} s",
            "one transaction per day file, deleting while the file is read back: "
            + ", ".join(f"{d[0]} {d[1]:,} rows {d[3]:.1f} s" for d in days),
        ),
        (
            "backup while a loader process loads",
            f"{backup['backup_seconds']:.1f} s",
            f"database {backup['db_bytes'] / 1e9:.2f} GB -> {backup['backup_bytes'] / 1e6:,.0f} MB "
            "zstd, integrity_check + counts included",
        ),
        (
            "load throughput during the backup / without",
            f"{ratio:.2f}x",
            f"{backup['during']:,.0f} vs {backup['baseline']:,.0f} rows/s (same loader, same run; "
            f"{backup['chunks_inside']:.0f} chunks of {sizes.stations * sizes.loader_seconds:,} "
            f"rows ran wholly inside the backup, {backup['chunks_after']:.0f} after it)",
        ),
    ]
    report = (
        "## Archive and backup (`bench/bench_archive.py`)\n\n"
        f"{stored:,} readings ({sizes.stations} stations at 1 Hz) stored through the load's "
        f"bulk path in {build_s:.0f} s.\n\n"
        + table(results, ("measure", "result", "notes"))
        + "\n\nAnalysts' queries on the archive (polars `scan_parquet(..., hive_partitioning=True)`"
        ", median of warm runs): our `date=` layout against the same rows as `station=/month=`.\n\n"
        + table(layouts, ("layout", "files", "one station, all days", "all stations, one day"))
    )
    publish("bench_archive", report, args)


if __name__ == "__main__":
    main()
