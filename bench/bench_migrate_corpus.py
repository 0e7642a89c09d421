"""`powerwatch migrate-logs` end to end on a realistic multi-file corpus: net and gross
lines/s, the fixed cost apart, peak memory, and a line-by-line baseline of the same files.

    python -m bench.bench_migrate_corpus            # ~1 M lines (bench/legacy_corpus.py)
    python -m bench.bench_migrate_corpus --quick    # a smoke run on ~60,000 lines

The corpus (`bench/legacy_corpus.py`): seven files, all three formats, gzip, CRLF,
BOM, rotation overlaps, lines out of order, bad lines, an unknown station. Each
command is the operator's: a fresh `powerwatch migrate-logs FOLDER` process against a
fresh SQLite database and a Prefect server that the bench starts once and names in
`PREFECT_API_URL` (as `powerwatch demo` does for the commands of its site), so
the run shows in a UI and no temporary server is started.

- fixed cost: the same command on a folder with one one-line log (process start,
  imports, the flow and task runs, the report): what any run pays whatever its size;
- gross: lines / the command's wall time on the corpus; net: lines / (wall time -
  fixed cost), the rate a larger corpus approaches;
- peak memory: the command process's own peak RSS (`ru_maxrss` read in that process
  when the command returns; the Prefect server's memory is not in it);
- baseline: the same files parsed line by line in Python and inserted with SQLAlchemy
  Core `executemany` (`bench.bench_migrate.run_baseline`), in this process, into
  another fresh database; both must store the same rows.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench.bench_migrate import fresh_database, run_baseline
from bench.legacy_corpus import Corpus, make_corpus
from bench.report import bench_arguments, publish, table
from powerwatch.legacy.formats import detect_format

LINES = 1_000_000
QUICK_LINES = 60_000
STATIONS = 50

# The command, run as `powerwatch` runs it, then its own peak RSS (kB) on stderr's last line.
COMMAND = """
import resource, sys
from powerwatch.cli import main
code = main(sys.argv[1:])
print(f"maxrss_kb={resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}", file=sys.stderr)
sys.exit(code)
"""


@contextmanager
def prefect_server(home: Path) -> Iterator[str]:
    """A Prefect server of its own (own home, own database) for the bench's commands."""
    os.environ["PREFECT_HOME"] = str(home)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.pop("PREFECT_API_URL", None)
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()
    server.start(timeout=180)
    try:
        yield server.api_url
    finally:
        server.stop()


def migrate(folder: Path, report: Path, env: dict[str, str]) -> tuple[float, float, dict[str, int]]:
    """Wall seconds, peak RSS (MB) and the JSON report's totals of one command."""
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", COMMAND, "migrate-logs", str(folder), "--report", str(report)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"migrate-logs exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    rss = int(done.stderr.strip().splitlines()[-1].removeprefix("maxrss_kb="))
    totals: dict[str, int] = json.loads(report.read_text())["totals"]
    return seconds, rss / 1024, totals


def baseline(corpus: Corpus, db: Path) -> tuple[float, int]:
    """Seconds and rows inserted by the line-by-line baseline over every file."""
    fresh_database(db, STATIONS)
    seconds, inserted = 0.0, 0
    for generated in corpus.files:
        fmt = detect_format(generated.path)
        assert fmt is not None, generated.path
        s, _lines, rows = run_baseline(generated.path, fmt)
        seconds += s
        inserted += rows
    return seconds, inserted


def main() -> None:
    args = bench_arguments(__doc__)
    lines = QUICK_LINES if args.quick else LINES
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="pw-bench-corpus-") as tmp:
        root = Path(tmp)
        made = time.perf_counter()
        corpus = make_corpus(root / "corpus", lines, stations=STATIONS)
        made_s = time.perf_counter() - made
        corpus_mb = corpus.bytes / 1024**2
        tiny = root / "tiny"
        tiny.mkdir()
        (tiny / "one.log").write_text(
            "2026-10-01 07:00:00.000 [INFO] [BENCH-0000] Active Power (W): P1=1.5\n"
        )
        with prefect_server(root / "prefect") as api_url:
            env = dict(os.environ) | {
                "PREFECT_API_URL": api_url,
                "POWERWATCH_DATA_DIR": str(root / "data"),
            }
            fresh_database(root / "fixed.db", STATIONS)
            env["POWERWATCH_DATABASE_URL"] = os.environ["POWERWATCH_DATABASE_URL"]
            fixed = min(migrate(tiny, root / "fixed.json", env)[0] for _ in range(2))
            fresh_database(root / "ours.db", STATIONS)
            env["POWERWATCH_DATABASE_URL"] = os.environ["POWERWATCH_DATABASE_URL"]
            gross_s, peak_mb, totals = migrate(corpus.folder, root / "ours.json", env)
        base_s, base_rows = baseline(corpus, root / "baseline.db")
    assert totals["lines"] == corpus.lines, (totals, corpus.lines)
    assert totals["inserted"] + totals["duplicates"] == corpus.readings, totals
    assert totals["rejected"] == corpus.rejected, (totals, corpus.rejected)
    assert totals["inserted"] == base_rows, (totals, base_rows)
    net_s = gross_s - fixed
    net, gross, base = corpus.lines / net_s, corpus.lines / gross_s, corpus.lines / base_s
    rows = [
        (
            "migrate-logs, net of the fixed cost",
            f"{net:,.0f} lines/s",
            f"{net / base:.1f}x",
            f"{corpus.lines:,} lines in {net_s:.2f} s; target >= 250,000 lines/s",
        ),
        (
            "migrate-logs, gross (wall time of the command)",
            f"{gross:,.0f} lines/s",
            f"{gross / base:.1f}x",
            f"{gross_s:.2f} s: {totals['inserted']:,} inserted, {totals['duplicates']:,} "
            f"duplicates, {totals['rejected']:,} rejected, {totals['non_data']:,} non-data",
        ),
        (
            "fixed cost (a one-line log, same command)",
            f"{fixed:.2f} s",
            "",
            "process start, imports, flow and task runs on a running server, report",
        ),
        ("peak memory of the command", f"{peak_mb:.0f} MB", "", "target <= 400 MB"),
        (
            "baseline: line by line + SQLAlchemy Core executemany",
            f"{base:,.0f} lines/s",
            "1.0x",
            f"{base_s:.2f} s, {base_rows:,} inserted (same rows), in the bench's process",
        ),
    ]
    for row in rows:
        print(row, flush=True)
    load = f"{load_before:.1f} at the start, {os.getloadavg()[0]:.1f} at the end"
    markdown = (
        "## Log migration end to end (`bench/bench_migrate_corpus.py`)\n\n"
        f"`powerwatch migrate-logs FOLDER` on the corpus of `bench/legacy_corpus.py` "
        f"({len(corpus.files)} files, {corpus.lines:,} lines, "
        f"{corpus_mb:.0f} MB on disk, written in {made_s:.1f} s): all three "
        "formats, gzip, CRLF, BOM, rotation overlaps, lines out of order, 1 in 1,000 reading "
        f"lines that does not parse, an unknown station; {STATIONS} stations. A fresh "
        "command process against a fresh SQLite database and a running Prefect server "
        "(`PREFECT_API_URL`); the fixed cost is the same command on a one-line log and "
        "is taken off for the net rate. The baseline parses the same files line by line "
        "and inserts with SQLAlchemy Core executemany; both store the same rows. "
        f"Machine load average (1 min): {load}.\n\n"
        + table(rows, ("what", "result", "vs baseline", "notes"))
    )
    publish("bench-migrate-corpus", markdown, args)


if __name__ == "__main__":
    main()
