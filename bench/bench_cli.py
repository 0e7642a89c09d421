"""CLI fixed costs: idle job commands and query command latency, as an operator sees them.

    python -m bench.bench_cli            # 3 runs each (queries 7), with and without a server
    python -m bench.bench_cli --quick    # 3 runs each, without a server (a smoke run)

Idle job commands: `load` with an empty landing zone, `migrate-logs` on an empty folder,
`archive` with nothing older than the retention; each run as a real process
(`subprocess.run` timed with `time.perf_counter`), without PREFECT_API_URL and with it
pointing at a running server (`LocalStack`). Query commands: each on a demo-sized
database (5 stations x 6 h at 1 Hz, the demo's shape). Baseline in the same run:
`python -c pass`, the interpreter's own start. Medians.
"""

from __future__ import annotations

import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.report import bench_arguments, publish, table

QUERIES = (
    ("latest",),
    ("stations", "list"),
    ("readings", "--limit", "100"),
    ("rollups", "--interval", "hour"),
    ("completeness", "--station", "BENCH-0000", "--day", "2026-10-01"),
    ("status",),
)
QUERY_RUNS = 7  # a query is cheap: more runs, a steadier median on a shared host


def timed(command: list[str], env: dict[str, str], runs: int) -> str:
    """Median wall seconds (and median CPU seconds of the process, user + system: what the
    command itself costs, which a busy shared host does not inflate), or what failed (a
    temporary server may time out on a busy host)."""
    walls, cpus = [], []
    for _ in range(runs):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        walls.append(time.perf_counter() - started)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
        if done.returncode:
            last = (done.stderr.strip().splitlines() or ["?"])[-1][:120]
            return f"exit {done.returncode} after {walls[-1]:.1f} s: {last}"
    return f"{statistics.median(walls):.2f} (CPU {statistics.median(cpus):.2f})"


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "powerwatch.cli", *args]


def main() -> None:
    args = bench_arguments(__doc__)
    runs = 3
    from bench.bench_load import fresh_database
    from bench.bench_rollups import _load
    from bench.data import readings

    with tempfile.TemporaryDirectory(prefix="pw-bench-cli-") as tmp:
        root = Path(tmp)
        fresh_database(root, "demo", 5)  # sets POWERWATCH_* in os.environ
        _load(readings(5, 6 * 3600), "demo")
        from db.engine import bulk_connection
        from powerwatch.rollups.refresh import refresh_rollups

        with bulk_connection() as bulk:
            refresh_rollups(bulk)
        empty = root / "old-logs"
        empty.mkdir()
        env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
        env |= {"DO_NOT_TRACK": "1", "POWERWATCH_RETENTION_DAYS": "36500"}
        baseline = timed([sys.executable, "-c", "pass"], env, runs)
        jobs = {
            "load (empty landing/)": cli("load"),
            "migrate-logs (empty folder)": cli("migrate-logs", str(empty)),
            "archive (nothing older than the retention)": cli("archive"),
            "refresh-rollups (nothing queued)": cli("refresh-rollups"),
        }
        rows = [("`python -c pass` (baseline)", baseline, "")]
        servers: dict[str, str] = {}
        if not args.quick:
            from powerwatch.site.stack import LocalStack

            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = int(s.getsockname()[1])
            stack = LocalStack(home=root / "prefect", port=port)
            stack.start_server()
            servers["with"] = stack.api_url
        try:
            for name, command in jobs.items():
                without = timed(command, env, runs)
                with_server = (
                    timed(command, env | {"PREFECT_API_URL": servers["with"]}, runs)
                    if servers
                    else "not measured (--quick)"
                )
                rows.append((name, without, with_server))
        finally:
            if not args.quick:
                stack.stop()
        queries = [
            ("`powerwatch " + " ".join(q) + "`", timed(cli(*q), env, QUERY_RUNS)) for q in QUERIES
        ]
    load = os.getloadavg()[0]
    markdown = "\n\n".join(
        [
            "## CLI fixed costs (bench_cli)",
            f"Median of {runs} runs each (queries: {QUERY_RUNS}), real processes; load "
            f"average at the end {load:.1f} on {os.cpu_count()} cores. Targets: an idle job "
            "<= 2 s, a query <= 0.5 s (issue 14). Each figure: median wall seconds (median "
            "CPU seconds of the process, user + system, which other jobs on the host do not "
            "inflate; several threads can make it exceed the wall time).",
            table(rows, ("idle job command", "seconds, no server", "seconds, server configured")),
            "Query commands on a demo-sized SQLite database (5 stations x 6 h at 1 Hz, "
            "108,000 readings):",
            table(queries, ("query command", "seconds")),
        ]
    )
    publish("bench_cli", markdown, args)


if __name__ == "__main__":
    main()
