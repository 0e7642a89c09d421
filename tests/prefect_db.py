"""One migrated Prefect server database per test run, copied into each test server's home.

A `prefect server start` on an empty PREFECT_HOME first runs all of Prefect's migrations
on a new SQLite file: on this 2-core host about 22 CPU-s and 24 s per start, against
about 10 CPU-s and 11 s with the database already at head (docs/benchmarks.md, "Test
suite wall time"). The suite starts at least 13 servers (each xdist worker's session
server, the sites, the demos and `serve`s the restart and alert tests run), so the
migrations run once here, by Prefect's own `prefect server database upgrade`, and every
test server starts on a copy. The server, its migrations check and everything after it
are Prefect's own: only the repeated work is saved.

The template is built once for all xdist workers of a run (a file lock in the run's
shared temporary root) and written atomically, so a worker never copies half a file.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
from pathlib import Path

DATABASE = "prefect.db"  # the file a server keeps in its PREFECT_HOME (SQLite)


def template(root: Path) -> Path:
    """The migrated database under `root` (shared by the run's workers), built if missing."""
    folder = root / "prefect-db-template"
    folder.mkdir(parents=True, exist_ok=True)
    built = folder / DATABASE
    with open(folder / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one worker builds; the others wait, then copy
        if not built.exists():
            work = folder / "building"
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir()
            env = dict(os.environ) | {"PREFECT_HOME": str(work), "DO_NOT_TRACK": "1"}
            env.pop("PREFECT_API_DATABASE_CONNECTION_URL", None)
            subprocess.run(
                [sys.executable, "-m", "prefect", "server", "database", "upgrade", "-y"],
                env=env,
                check=True,
                capture_output=True,
                timeout=600,
            )
            os.replace(work / DATABASE, built)  # checkpointed: the process has exited
            shutil.rmtree(work)
    return built


def seed(home: Path, migrated: Path) -> Path:
    """`home` with a copy of the migrated database, unless it holds one already (a site
    started again keeps its history); the home."""
    home.mkdir(parents=True, exist_ok=True)
    if not (home / DATABASE).exists():
        partial = home / f".{DATABASE}.copy"
        shutil.copyfile(migrated, partial)
        os.replace(partial, home / DATABASE)
    return home
