"""Screenshots of every job's artifact in the Prefect UI at 1,440 px: docs/ui-*.png.

    make screenshots        # or: .venv/bin/python docs/ui_screenshots.py [--out DIR]

Issue 14: the main table of every table artifact must fit the UI at 1,440 px without
horizontal scrolling. This script runs the jobs as an operator does (the `powerwatch`
commands, against a temporary Prefect server they report to, on a temporary SQLite
database, with simulated stations), then has headless Chromium (`make browser`) take a
1,440 px wide screenshot of each run's artifacts. Not a test: it writes into docs/ and
takes a few minutes; run it after changing an artifact and look at the pictures.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import polars as pl

from powerwatch.core.parquet_files import write_parquet_atomically

ROOT = Path(__file__).resolve().parents[1]
# The legacy samples beside the project (`../shared`; a worktree sits one level deeper).
SAMPLES = next(
    (p / "shared" / "samples" / "legacy-logs" for p in ROOT.parents if (p / "shared").is_dir()),
    ROOT.parent / "shared" / "samples" / "legacy-logs",
)
# Artifact key -> the picture's name in docs/.
SHOTS = {
    "capture-stations": "ui-capture-stations.png",
    "load-chunks": "ui-load-chunks.png",
    "migrate-logs": "ui-migrate-logs.png",
    "archive-readings": "ui-archive-readings.png",
    "backup-database": "ui-backup-database.png",
    "statement-sim-0001": "ui-energy-station-table.png",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def powerwatch(env: dict[str, str], *args: str) -> None:
    print("$ powerwatch", " ".join(args), flush=True)
    done = subprocess.run(
        [sys.executable, "-m", "powerwatch.cli", *args], env=env, text=True, capture_output=True
    )
    print(done.stdout[-3000:], done.stderr[-1000:], sep="", flush=True)


def old_readings(station: str, start: datetime, hours: int) -> pl.DataFrame:
    """One reading a minute, meters counting up: for the archive and the statement."""
    from schemas.channels import ACTIVE_CHANNELS, MUX_CHANNELS, TIMESTAMP_DTYPE

    minutes = pl.int_range(0, hours * 60, eager=True)
    return pl.DataFrame(
        {
            "station": [station] * len(minutes),
            "timestamp": pl.Series([start + timedelta(minutes=int(m)) for m in minutes]).cast(
                TIMESTAMP_DTYPE
            ),
        }
    ).with_columns(
        *(pl.lit(1500.0 + i).alias(c.key) for i, c in enumerate(ACTIVE_CHANNELS)),
        *(
            (10_000.0 * (i + 1) + minutes.cast(pl.Float64) * 0.25 * (i + 1)).alias(c.key)
            for i, c in enumerate(MUX_CHANNELS)
        ),
    )


def shoot(chromium: str, url: str, target: Path, scratch: Path) -> None:
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--hide-scrollbars",
        "--disable-background-networking",
        "--window-size=1440,1000",
        "--virtual-time-budget=20000",
        f"--user-data-dir={scratch / 'chromium'}",
        f"--screenshot={target}",
    ]
    subprocess.run([chromium, *flags, url], capture_output=True, timeout=180, check=True)
    print(f"{target} <- {url}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    args = parser.parse_args()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        print("no chromium (Debian package `chromium`; `make browser` as root)", file=sys.stderr)
        return 1
    from powerwatch.site.stack import LocalStack

    with tempfile.TemporaryDirectory(prefix="pw-screenshots-") as tmp:
        root = Path(tmp)
        stack = LocalStack(home=root / "prefect", port=free_port())
        env = {k: v for k, v in os.environ.items() if not k.startswith("POWERWATCH_")}
        env |= {
            "POWERWATCH_DATABASE_URL": f"sqlite:///{root / 'powerwatch.db'}",
            "POWERWATCH_DATA_DIR": str(root / "data"),
            "POWERWATCH_STATIONS": str(root / "stations.yaml"),
            "PREFECT_API_URL": stack.api_url,
            "DO_NOT_TRACK": "1",
        }
        stack.start_server(timeout=900)
        simulator = None
        try:
            powerwatch(env, "db", "upgrade")
            simulator = subprocess.Popen(
                [
                    *(sys.executable, "-m", "powerwatch.cli", "simulate", "--count", "4"),
                    *("--rate", "5", "--faults", "--duration", "120"),
                    *("--outage", "SIM-0002@8+300"),
                ],
                env=env,
            )
            while not (root / "stations.yaml").exists():
                time.sleep(0.2)
            powerwatch(env, "stations", "sync")
            powerwatch(env, "capture", "--duration", "20", "--flush-seconds", "5")
            # A month ago and a few days ago: a statement to issue and days to archive.
            now = datetime.now(UTC)
            first = (now.replace(day=1) - timedelta(days=1)).replace(day=1, hour=0, minute=0)
            for n, start in enumerate((first, now - timedelta(days=3))):
                write_parquet_atomically(
                    old_readings("SIM-0001", start.replace(second=0, microsecond=0), 48),
                    root / "data" / "landing" / f"older-{n}.parquet",
                )
            powerwatch(env, "load")
            powerwatch(env, "refresh-rollups")
            if SAMPLES.is_dir():
                powerwatch(env, "migrate-logs", str(SAMPLES))
            powerwatch(env, "archive", "--older-than", "1")
            powerwatch(env, "backup")
            month = f"{first:%Y-%m}"
            code = f"from flows.energy_statements import energy_statements as e; e(month='{month}')"
            subprocess.run([sys.executable, "-c", code], env=env, check=False)
            for key, name in SHOTS.items():
                found = httpx.post(
                    f"{stack.api_url}/artifacts/filter",
                    json={
                        "artifacts": {"key": {"any_": [key]}},
                        "sort": "CREATED_DESC",
                        "limit": 1,
                    },
                ).json()
                if not found:
                    print(f"{key}: no artifact", file=sys.stderr)
                    continue
                url = f"{stack.ui_url}/artifacts/artifact/{found[0]['id']}"
                shoot(chromium, url, args.out / name, root)
        finally:
            if simulator is not None:
                simulator.terminate()
                simulator.wait(timeout=30)
            stack.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
