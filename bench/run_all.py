"""Run every benchmark in `bench/` in turn (`make bench`); each writes its own section of
docs/benchmarks.md.

Benchmarks run one after another, never together: each measures ratios against a
baseline in its own run, and two at once would share the machine's two cores.
Extra arguments (e.g. `--quick`) are passed to every benchmark.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent


def main() -> int:
    failed = []
    for script in sorted(BENCH.glob("bench_*.py")):
        module = f"bench.{script.stem}"
        print(f"== {module}", flush=True)
        if subprocess.run([sys.executable, "-m", module, *sys.argv[1:]], check=False).returncode:
            failed.append(module)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
