"""Rollup refresh throughput before and after a change, interleaved on the same machine.

    python -m bench.bench_refresh_ab --base /tmp/base-checkout   # e.g. a `git worktree`
                                                                 # of the commit before

Each round runs the same refresh (100 stations x 1 h at 1 Hz, loaded in 4 chunks into a
fresh SQLite database, then `refresh_rollups` timed) once with the base checkout's code
and once with this one's, alternating which goes first, each in its own process. On a
shared host the absolute figures move with the load; the pairs' ratio is the figure.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

from bench.report import publish, table

HERE = Path(__file__).resolve().parents[1]
ONE_RUN = """
import sys, tempfile, time
from pathlib import Path
from bench.bench_load import fresh_database
from bench.bench_rollups import _load
from bench.data import readings

data = readings(100, 3600)
with tempfile.TemporaryDirectory(prefix="pw-ab-") as tmp:
    fresh_database(Path(tmp), "ab", 100)
    step = data.height // 4
    for i in range(4):
        _load(data.slice(i * step, step), f"c-{i}")
    from db.engine import bulk_connection
    from powerwatch.rollups.refresh import refresh_rollups
    with bulk_connection() as bulk:
        started = time.perf_counter()
        refresh_rollups(bulk)
        print(data.height / (time.perf_counter() - started))
"""


def _run(tree: Path) -> float:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run(
        [sys.executable, "-c", ONE_RUN], cwd=tree, env=env, capture_output=True, text=True
    )
    if done.returncode:
        raise SystemExit(done.stderr[-2000:])
    return float(done.stdout.split()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--base", type=Path, required=True, help="checkout of the code before")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-write", action="store_true", help="do not update docs/")
    args = parser.parse_args()
    figures: dict[str, list[float]] = {"before": [], "after": []}
    for r in range(args.rounds):
        order = ("before", "after") if r % 2 == 0 else ("after", "before")
        for which in order:
            figures[which].append(_run(args.base if which == "before" else HERE))
            print(which, f"{figures[which][-1]:,.0f} readings/s", flush=True)
    before, after = (statistics.median(figures[k]) for k in ("before", "after"))
    ratios = [a / b for a, b in zip(figures["after"], figures["before"], strict=True)]
    rows = [
        (
            "before (base checkout)",
            f"{before:,.0f} readings/s",
            "1.00",
            ", ".join(f"{v:,.0f}" for v in figures["before"]),
        ),
        (
            "after (this checkout)",
            f"{after:,.0f} readings/s",
            f"{after / before:.2f}x",
            ", ".join(f"{v:,.0f}" for v in figures["after"])
            + f"; per-round ratios {', '.join(f'{x:.2f}' for x in ratios)}",
        ),
    ]
    markdown = (
        "## Rollup refresh before/after energy accounting (`bench/bench_refresh_ab.py`)\n\n"
        "100 stations x 1 h at 1 Hz (360,000 readings), fresh SQLite database each run, "
        f"{args.rounds} rounds alternating which code goes first; medians. Issue 13 requires "
        "the refresh not to fall by more than 10 %.\n\n"
        + table(rows, ("code", "refresh", "vs before", "each round"))
    )
    publish("bench-refresh-ab", markdown, argparse.Namespace(quick=False, no_write=args.no_write))


if __name__ == "__main__":
    main()
