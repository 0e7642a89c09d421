"""The `energy-statements` flow against a real Prefect server, and its summary artifact
(markdown with a mermaid chart) rendered by the UI in headless chromium. The screenshot
goes to tmp (docs/ui-energy-statement.png is a copy made by hand)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import polars as pl
import pytest

from schemas.channels import CHANNEL_KEYS, TIMESTAMP_DTYPE
from tests.conftest import Database
from tests.test_energy import load


def _month_of_readings() -> pl.DataFrame:
    """KhonKaen, October 2026 in Bangkok, one reading every 10 minutes, the four meters at
    different rates following the day's hours, a two-day monitor outage on the 12th."""
    start = datetime(2026, 9, 30, 17, tzinfo=UTC)
    minutes = [m for m in range(0, 31 * 24 * 60, 10) if not 11 * 1440 <= m < 13 * 1440]
    frame = pl.DataFrame({"minute": minutes}).with_columns(
        pl.col("minute").cast(pl.Float64).alias("m"),
        pl.lit("KhonKaen").alias("station"),
        pl.Series([start + timedelta(minutes=m) for m in minutes])
        .cast(TIMESTAMP_DTYPE)
        .alias("timestamp"),
    )
    rates = {"muxPower1": 0.9, "muxPower2": 0.6, "muxPower3": 0.45, "muxPower4": 0.3}
    return frame.select(
        "station",
        "timestamp",
        *(
            (
                (pl.lit(10_000.0 * (i + 1)) + pl.col("m") * rates[key]).round(2)
                if key in rates
                else pl.lit(1500.0)
            ).alias(key)
            for i, key in enumerate(CHANNEL_KEYS)
        ),
    )


@pytest.mark.slow
@pytest.mark.timeout(1500)  # a server start, a flow run and chromium on a loaded host
def test_the_ui_renders_the_statement_summary_chart(
    sqlite_synced: Database, tmp_path: Path, prefect_db_template: Path
) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("no chromium here (Debian package `chromium`; `make browser` as root)")
    from powerwatch.site.stack import LocalStack
    from tests.prefect_db import seed
    from tests.sites import free_port

    load(sqlite_synced, _month_of_readings())
    # Its own server with a patient start: on a shared 2-core host under heavy load the
    # session server's 120 s were not always enough.
    home = seed(tmp_path / "prefect-home", prefect_db_template)
    with LocalStack(home=home, port=free_port()) as stack:
        stack.start_server(timeout=900)
        _render(stack.api_url, chromium, tmp_path)


def _render(prefect_api: str, chromium: str, tmp_path: Path) -> None:
    env = {**os.environ, "PREFECT_API_URL": prefect_api}
    code = (
        "from flows.energy_statements import energy_statements; energy_statements(month='2026-10')"
    )
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "revision 1 issued" in run.stdout + run.stderr
    found = httpx.post(
        f"{prefect_api}/artifacts/filter",
        json={"artifacts": {"key": {"any_": ["energy-statement"]}}, "limit": 1},
    ).json()
    [artifact] = found
    assert "xychart-beta" in artifact["data"]
    # The V2 UI (served under /v2) renders mermaid in markdown artifacts; V1 shows the
    # chart's source as a code block.
    url = f"{prefect_api.removesuffix('/api')}/v2/artifacts/artifact/{artifact['id']}"
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--window-size=1440,1100",
        "--virtual-time-budget=20000",
        f"--user-data-dir={tmp_path / 'chromium'}",
    ]
    dom = subprocess.run(
        [chromium, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=120
    )
    (tmp_path / "dom.html").write_text(dom.stdout)
    assert "Daily kWh per broadcaster" in dom.stdout, "the artifact page did not render"
    assert 'aria-roledescription="xychart"' in dom.stdout, "the mermaid chart was not drawn"
    shot = tmp_path / "ui-energy-statement.png"
    done = subprocess.run(
        [chromium, *flags, f"--screenshot={shot}", url], capture_output=True, timeout=120
    )
    assert done.returncode == 0 and shot.stat().st_size > 20_000
    print(f"screenshot: {shot}")
