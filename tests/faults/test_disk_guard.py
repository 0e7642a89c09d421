"""The disk guard (powerwatch.core.diskguard): on a nearly full disk a write job refuses to
start in one line (exit 1, a Failed run with that line) and runs normally once space is
back. A real 8 MiB tmpfs (`small_disk`, as root; skipped with the reason otherwise)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from powerwatch.core import diskguard
from powerwatch.core.errors import DiskFull
from powerwatch.core.settings import get_settings
from tests.conftest import T0, Database, make_readings, write_chunk
from tests.faults.conftest import fill, free, powerwatch_env, run_powerwatch

STATIONS = ["KhonKaen", "ChiangMai", "Songkhla"]


@pytest.fixture
def guarded(small_disk: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The small disk with the guard at its defaults (5 % of 8 MiB: 419 kB)."""
    monkeypatch.delenv("POWERWATCH_DISK_MIN_FREE_BYTES")
    monkeypatch.delenv("POWERWATCH_DISK_MIN_FREE_PERCENT", raising=False)
    return small_disk


def test_the_threshold_is_the_smaller_of_the_share_and_the_bytes(
    guarded: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("POWERWATCH_DATA_DIR", str(guarded / "data"))  # not there yet
    settings = get_settings()
    assert diskguard.threshold(8 << 20, settings) == int((8 << 20) * 0.05)
    assert diskguard.threshold(10**13, settings) == 2_000_000_000
    assert diskguard.low_space(settings, "load") is None

    fill(guarded, leave_bytes=100_000)
    low = diskguard.low_space(settings, "load")

    assert isinstance(low, DiskFull)
    assert str(low).startswith("load refused to start: ") and "\n" not in str(low)
    monkeypatch.setenv("POWERWATCH_DISK_MIN_FREE_PERCENT", "0")  # the guard off
    assert diskguard.low_space(get_settings(), "load") is None


@pytest.mark.slow
def test_a_load_refuses_to_start_on_a_nearly_full_disk_and_runs_once_space_is_back(
    sqlite_synced: Database, prefect_api: str, guarded: Path
) -> None:
    data = guarded / "data"
    write_chunk(make_readings(STATIONS, 10, T0), data / "landing", "c1.parquet")
    fill(guarded, leave_bytes=100_000)
    env = powerwatch_env({"PREFECT_API_URL": prefect_api, "POWERWATCH_DATA_DIR": str(data)})

    refused = run_powerwatch("load", env=env)

    assert refused.returncode == 1, refused.stderr[-2000:]
    # The command's own line (Prefect may still log a warning of its own after it).
    [line] = [x for x in refused.stderr.splitlines() if x.startswith("powerwatch:")]
    assert line.startswith("powerwatch: load failed: load refused to start: "), line
    assert "disk guard" in line and "Traceback" not in refused.stderr
    assert (data / "landing" / "c1.parquet").exists()  # nothing touched
    message = line.removeprefix("powerwatch: load failed: ")
    runs = httpx.post(
        f"{prefect_api}/flow_runs/filter",
        json={"flow_runs": {"state": {"type": {"any_": ["FAILED"]}}}, "limit": 50},
        timeout=30,
    ).json()
    assert message in [run["state"]["message"] for run in runs]

    free(guarded)
    again = run_powerwatch("load", env=env)

    assert again.returncode == 0, again.stderr[-2000:]
    assert (data / "loaded" / "c1.parquet").exists()
