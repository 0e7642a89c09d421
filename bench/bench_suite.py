"""Test-suite wall time: the fault-injection suite on its own (issue 10: <= 5 min) and the
whole suite (issue 14: <= 8 min), each run as `make test` runs it (the Makefile's
PYTEST_PARALLEL options).

    python -m bench.bench_suite              # both parts, written to docs/benchmarks.md
    python -m bench.bench_suite --no-write   # printed only
    python -m bench.bench_suite --quick      # one small module: checks the bench itself

Wall time depends on the host's load more than anything else here (each case starts
real servers and processes), so the report gives the load average before and after and
the CPU seconds the part's processes used, which a busy host inflates far less.
"""

from __future__ import annotations

import os
import re
import resource
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

from bench.report import bench_arguments, publish, table

ROOT = Path(__file__).resolve().parents[1]
PARTS = {
    "fault injection (tests/faults)": ["tests/faults"],
    "the whole suite (what make test runs)": ["tests"],
}


def parallel_options() -> list[str]:
    """The options `make test` gives pytest (one definition: the Makefile's)."""
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    found = re.search(r"^PYTEST_PARALLEL \?= (.*)$", makefile, re.M)
    return found.group(1).split() if found else []


def run_part(paths: list[str], options: list[str]) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "junit.xml"
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        load_before = os.getloadavg()[0]
        started = time.monotonic()
        code = subprocess.call(
            [
                sys.executable,
                "-m",
                "pytest",
                *options,
                "-q",
                "-p",
                "no:cacheprovider",
                f"--junitxml={report}",
                *paths,
            ],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
        )
        wall = time.monotonic() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cases = ET.parse(report).getroot().iter("testcase")
        outcomes = {"passed": 0, "failed": 0, "skipped": 0}
        slowest: list[tuple[float, str]] = []
        for case in cases:
            kind = next((c.tag for c in case if c.tag in ("failure", "error", "skipped")), "passed")
            outcomes["failed" if kind in ("failure", "error") else kind] += 1
            slowest.append((float(case.get("time", 0)), case.get("name", "?")))
    return {
        "exit": code,
        "wall": wall,
        "cpu": (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime),
        "load": (load_before, os.getloadavg()[0]),
        "slowest": sorted(slowest, reverse=True)[:3],
        **outcomes,
    }


def main() -> None:
    args = bench_arguments(__doc__)
    options = parallel_options()
    rows: list[tuple[str, ...]] = []
    notes: list[str] = []
    parts = {"smoke (--quick)": ["tests/faults/test_points.py"]} if args.quick else PARTS
    for label, paths in parts.items():
        result = run_part(paths, options)
        print(label, result, flush=True)
        load = result["load"]
        assert isinstance(load, tuple)
        rows.append(
            (
                label,
                f"{result['wall']:.0f}",
                f"{result['cpu']:.0f}",
                f"{result['passed']} / {result['failed']} / {result['skipped']}",
                f"{load[0]:.1f} -> {load[1]:.1f}",
            )
        )
        slow = result["slowest"]
        assert isinstance(slow, list)
        notes.append(f"- {label}: " + "; ".join(f"{name} {s:.0f} s" for s, name in slow))
    markdown = (
        "## Test suite wall time (`bench/bench_suite.py`)\n\n"
        f"Each part run on its own as `make test` runs it (`pytest {' '.join(options)}`). "
        "Goals: fault suite <= 5 min (issue 10), whole suite <= 8 min (issue 14).\n\n"
        + table(
            rows,
            (
                "part",
                "wall, s",
                "CPU of its processes, s",
                "passed / failed / skipped",
                "load average before -> after",
            ),
        )
        + "\n\nSlowest cases:\n"
        + "\n".join(notes)
    )
    publish("bench-suite", markdown, args)


if __name__ == "__main__":
    main()
