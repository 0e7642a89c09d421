"""The interpreter of a site's install, for the processes whose memory a benchmark measures.

`make bench` adds pandas to the dev venv (the `baselines` group, only for the `to_sql`
baseline). pandera imports pandas whenever it is importable: +110 MB of RSS that its
polars backend never uses, and that no site's process carries, since a site installs
without the dev and baselines groups. So the processes measured for peak memory run in a
second venv made from the same lock file without them (`uv sync --locked --no-dev`),
exactly as a site has it: with its bytecode compiled, as `make setup` installs (with
PYTHONDONTWRITEBYTECODE=1, as on this host, every process would otherwise compile
Prefect from source at each start: seconds of CPU per flow run).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENV = ROOT / ".venv-deployed"  # git-ignored; rebuilt from uv.lock when missing


def deployed_python() -> str:
    """Path of the site-like interpreter (created on first use, ~10 s from uv's cache)."""
    python = VENV / "bin" / "python"
    if not (VENV / ".compiled").exists():
        uv = ROOT / ".tools" / "bin" / "uv"
        subprocess.run(
            [str(uv), "sync", "--locked", "--no-dev", "--quiet", "--compile-bytecode"],
            cwd=ROOT,
            env=dict(os.environ) | {"UV_PROJECT_ENVIRONMENT": str(VENV)},
            check=True,
        )
        (VENV / ".compiled").touch()
    return str(python)
