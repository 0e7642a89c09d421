"""Log migration benchmark: lines/s per format vs a line-by-line baseline, and peak memory.

    python -m bench.bench_migrate            # full run: 1 M lines per format, a 2 GB text log
    python -m bench.bench_migrate --quick    # a smoke run on small files

For each format (T, J, C) one generated log (`bench/legacy_gen.py`) is imported
end to end into a fresh SQLite database: by `powerwatch.legacy.migration.import_file`
(detection, hash, parse, pandera validation, ledger, idempotent store, one
transaction), and by the straightforward way in the same run on the same file:
a line-by-line Python parser (regex / json / csv, `datetime`, range checks in
Python) inserting with SQLAlchemy Core `executemany` (ON CONFLICT DO NOTHING),
10,000 rows per statement, one transaction. Then a text log of 2 GB is imported
in a fresh process whose peak resident memory (VmHWM) is read from /proc.
Generated files are deleted as soon as they were measured.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any
from zoneinfo import ZoneInfo

from bench.data import bench_stations
from bench.legacy_gen import generate
from bench.report import bench_arguments, publish, table
from powerwatch.legacy.formats import Format

FORMATS: tuple[Format, ...] = ("T", "J", "C")
TZ = "Asia/Bangkok"


@dataclass
class Sizes:
    lines: int = 1_000_000  # per format
    stations: int = 50
    big_bytes: int = 2 * 1024**3


QUICK = Sizes(lines=30_000, stations=10, big_bytes=20 * 1024**2)


def fresh_database(path: Path, stations: int) -> str:
    from db.engine import make_engine
    from db.migrate import upgrade
    from db.stations import sync_stations

    for old in path.parent.glob(path.name + "*"):
        old.unlink()
    url = f"sqlite:///{path}"
    os.environ["POWERWATCH_DATABASE_URL"] = url
    engine = make_engine(url)
    upgrade(engine)
    sync_stations(engine, bench_stations(stations))
    engine.dispose()
    return url


def run_ours(path: Path) -> tuple[float, int, int]:
    """Seconds, lines read, rows inserted."""
    from db.engine import bulk_connection
    from powerwatch.legacy.migration import import_file

    started = time.perf_counter()
    with bulk_connection() as bulk:
        report = import_file(bulk, path, tz=TZ)
    assert report.balanced(), report
    return time.perf_counter() - started, report.lines, report.inserted


# --------------------------------------------------------------------------- baseline

_T_LINE = re.compile(r"^(\S+ \S+) \[\w+\] \[([^\]]+)\] Active Power \(W\): (.*)$")
_T_KEYS = {
    **{f"P{i}": f"active_power{i}" for i in range(1, 7)},
    "TV5": "mux_power1",
    "MCOT": "mux_power2",
    "PRD": "mux_power3",
    "TPBS": "mux_power4",
}
_J_KEYS = {f"activePower{i}": f"active_power{i}" for i in range(1, 7)} | {
    f"muxPower{i}": f"mux_power{i}" for i in range(1, 5)
}
_COLUMNS = tuple(_T_KEYS.values())


def _epoch_ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def _iso_ms(text: str) -> int:
    return _epoch_ms(datetime.fromisoformat(text.replace("Z", "+00:00")))


def _number_or_null(value: object) -> bool:
    return value is None or (isinstance(value, int | float) and not isinstance(value, bool))


def _valid(row: dict[str, Any]) -> bool:
    for column in _COLUMNS:
        value = row.get(column)
        if value is None:
            continue
        if column.startswith("active") and not -1_000 <= value <= 1_000_000:
            return False
        if column.startswith("mux") and not 0 <= value < 1e12:
            return False
    # After 2000-01-01 and at most 5 minutes ahead of now (station-protocol.md).
    return bool(946_684_800_000 <= row["ts"] <= time.time() * 1000 + 300_000)


def baseline_rows(path: Path, fmt: Format, ids: dict[str, int]) -> Iterator[dict[str, Any]]:
    """One dict per valid reading line, parsed the obvious way (line by line, no polars):
    the baseline here, and the independent oracle of tests/test_migration.py's
    shared-samples test."""
    zone = ZoneInfo(TZ)
    with _open_text(path) as handle:
        if fmt == "C":
            reader = csv.reader(handle)
            header = next(reader)
            for cells in reader:
                if len(cells) != len(header):
                    continue
                record = dict(zip(header, cells, strict=True))
                try:
                    row: dict[str, Any] = {"ts": _iso_ms(record["timestamp"])}
                    for key, column in _J_KEYS.items():
                        text = record.get(key, "")
                        row[column] = float(text) if text else None
                except ValueError:
                    continue
                station = ids.get(record["station"])
                if station is not None and _valid(row):
                    yield row | {"station_id": station}
            return
        for line in handle:
            line = line.rstrip("\r\n")
            if fmt == "T":
                match = _T_LINE.match(line)
                if match is None:
                    continue
                try:
                    local = datetime.strptime(match[1], "%Y-%m-%d %H:%M:%S.%f")
                    row = {"ts": _epoch_ms(local.replace(tzinfo=zone))}
                    row |= dict.fromkeys(_COLUMNS)
                    for token in match[3].split():
                        label, _, value = token.partition("=")
                        if label in _T_KEYS:
                            row[_T_KEYS[label]] = None if value == "N/A" else float(value)
                except ValueError:
                    continue
                station = ids.get(match[2])
            else:
                try:
                    record = json.loads(line)
                    stamp = record["timestamp"]
                    ts = stamp if isinstance(stamp, int) else _iso_ms(stamp)
                    values = record["readings"]
                    row = {"ts": ts} | {c: values.get(k) for k, c in _J_KEYS.items()}
                except (ValueError, KeyError, TypeError, AttributeError):
                    continue
                if not all(_number_or_null(v) for v in row.values()):
                    continue  # "ERR", true, [..]: a value that does not parse
                station = ids.get(record.get("station"))
            if station is not None and _valid(row):
                yield row | {"station_id": station}


def run_baseline(path: Path, fmt: Format) -> tuple[float, int, int]:
    """Seconds, lines read, rows inserted: line by line, SQLAlchemy Core executemany."""
    from sqlalchemy import func, insert, select
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    from db.engine import make_engine
    from db.tables import data_sources, load_batches, power_readings, stations

    engine = make_engine()
    started = time.perf_counter()
    inserted = 0
    with engine.begin() as conn:
        ids = {name: sid for name, sid in conn.execute(select(stations.c.name, stations.c.id))}
        source = conn.execute(
            insert(data_sources)
            .values(kind="log_migration", reference=str(path))
            .returning(data_sources.c.id)
        ).scalar_one()
        batch_id = conn.execute(
            insert(load_batches)
            .values(
                source_id=source,
                input_name=str(path),
                content_hash="",
                status="committed",
                started_at=func.current_timestamp(),
            )
            .returning(load_batches.c.id)
        ).scalar_one()
        statement = sqlite_insert(power_readings).on_conflict_do_nothing()
        pending: list[dict[str, Any]] = []
        for row in baseline_rows(path, fmt, ids):
            row["batch_id"] = batch_id
            pending.append(row)
            if len(pending) == 10_000:
                inserted += conn.execute(statement, pending).rowcount
                pending = []
        if pending:
            inserted += conn.execute(statement, pending).rowcount
    engine.dispose()
    with _open_binary(path) as raw:
        lines = sum(1 for _ in raw)
    return time.perf_counter() - started, lines, inserted


def _open_binary(path: Path) -> IO[bytes]:
    with open(path, "rb") as handle:
        gz = handle.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rb") if gz else open(path, "rb")  # type: ignore[return-value]


def _open_text(path: Path) -> IO[str]:
    """The obvious way: text mode, a BOM dropped (utf-8-sig), gzip by its magic bytes."""
    return io.TextIOWrapper(_open_binary(path), encoding="utf-8-sig", errors="replace", newline="")


# --------------------------------------------------------------------------- memory

MEMORY_PROBE = """
import re, sys, time
from pathlib import Path
def hwm():  # VmHWM: this process's own peak RSS (ru_maxrss would include the parent's)
    return int(re.search(r"VmHWM:\\s+(\\d+)", Path("/proc/self/status").read_text()).group(1))
from db.engine import bulk_connection
from powerwatch.legacy.migration import import_file
import polars, pandera, pyarrow
floor = hwm()
started = time.perf_counter()
with bulk_connection() as bulk:
    report = import_file(bulk, Path(sys.argv[1]), tz="Asia/Bangkok")
assert report.balanced()
print(floor, hwm(), report.lines, report.inserted, time.perf_counter() - started)
"""


def peak_memory(root: Path, sizes: Sizes) -> tuple[float, float, int, int, float, int]:
    """Peak and floor RSS (MB) of a fresh process importing one big text log."""
    per_line = 185  # bytes per line of a generated format-T log, non-data lines included
    log = root / "big-monitor.log"
    generate(log, "T", sizes.big_bytes // per_line, stations=200)
    size = log.stat().st_size
    fresh_database(root / "memory.db", 200)
    try:
        out = subprocess.run(
            [sys.executable, "-c", MEMORY_PROBE, str(log)],
            capture_output=True,
            text=True,
            check=True,
            env=dict(os.environ),
        )
    finally:
        log.unlink()
        for db in root.glob("memory.db*"):
            db.unlink()
    floor, peak, lines, inserted, seconds = out.stdout.split()[-5:]
    return int(peak) / 1024, int(floor) / 1024, int(lines), int(inserted), float(seconds), size


def main() -> None:
    args = bench_arguments(__doc__)
    sizes = QUICK if args.quick else Sizes()
    load_before = os.getloadavg()[0]
    rows: list[tuple[str, ...]] = []
    with tempfile.TemporaryDirectory(prefix="pw-bench-migrate-") as tmp:
        root = Path(tmp)
        for fmt in FORMATS:
            log = root / f"monitor.{fmt}"
            made = generate(log, fmt, sizes.lines, stations=sizes.stations)
            mb = log.stat().st_size / 1024**2
            fresh_database(root / "ours.db", sizes.stations)
            ours_s, ours_lines, ours_rows = run_ours(log)
            fresh_database(root / "baseline.db", sizes.stations)
            base_s, base_lines, base_rows = run_baseline(log, fmt)
            log.unlink()
            assert ours_lines == base_lines == made.lines, (ours_lines, base_lines, made.lines)
            assert ours_rows == base_rows == made.readings, (ours_rows, base_rows, made.readings)
            ours_rate, base_rate = ours_lines / ours_s, base_lines / base_s
            rows.append(
                (
                    f"format {fmt}: powerwatch migrate (import_file)",
                    f"{ours_rate:,.0f} lines/s",
                    f"{ours_rate / base_rate:.1f}x",
                    f"{ours_lines:,} lines ({mb:.0f} MB), {ours_rows:,} inserted, {ours_s:.2f} s;"
                    " target >= 250,000 lines/s",
                )
            )
            rows.append(
                (
                    f"format {fmt}: baseline line-by-line + SQLAlchemy Core",
                    f"{base_rate:,.0f} lines/s",
                    "1.0x",
                    f"{base_lines:,} lines, {base_rows:,} inserted, {base_s:.2f} s",
                )
            )
            print(rows[-2], rows[-1], sep="\n", flush=True)
        peak, floor, lines, inserted, seconds, size = peak_memory(root, sizes)
        rows.append(
            (
                f"peak memory, one {size / 1024**3:.2f} GB text log",
                f"{peak:.0f} MB",
                "",
                f"{lines:,} lines, {inserted:,} inserted in {seconds:.0f} s "
                f"({lines / seconds:,.0f} lines/s); process floor after imports {floor:.0f} MB; "
                "target <= 400 MB",
            )
        )
        print(rows[-1], flush=True)
    load = f"{load_before:.1f} at the start, {os.getloadavg()[0]:.1f} at the end"
    markdown = (
        "## Log migration (`bench/bench_migrate.py`)\n\n"
        f"Generated logs (`bench/legacy_gen.py`): {sizes.stations} stations, "
        f"{sizes.lines:,} reading lines per format, 1 in 1,000 lines that does not parse, "
        "format T with 3 % non-data lines. Each import into a fresh SQLite database "
        "(WAL, synchronous=NORMAL), end to end: detection, SHA-256, parsing, validation, "
        "ledger, store, commit. The baseline parses line by line in Python and inserts with "
        "SQLAlchemy Core executemany (10,000 rows per statement, ON CONFLICT DO NOTHING, "
        "one transaction), on the same file in the same run; both store the same rows. "
        "Peak memory: VmHWM of a fresh process that imports the big log with "
        "`powerwatch.legacy.migration.import_file` (no Prefect in that process). "
        f"Machine load average (1 min) during the run: {load}: other work on the same two "
        "cores slows both sides alike, the ratios less than the absolute rates.\n\n"
        + table(rows, ("what", "result", "vs baseline", "notes"))
    )
    publish("bench-migrate", markdown, args)


if __name__ == "__main__":
    main()
