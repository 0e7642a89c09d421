"""SIGTERM/SIGINT to a job command's whole process group (a terminal's Ctrl-C, systemd's
stop): what was done is kept, the command exits within 5 s with 128 + the signal and one
line saying what was kept, and the same command afterwards completes exactly.

Each job is paused at a named fault point (`pause` + `wait_for_line`), so the signal
arrives at a known moment. With PREFECT_API_URL (the session's server) and without it
(the command's temporary server then lives outside the group; see powerwatch.jobs).
"""

from __future__ import annotations

import signal
from datetime import timedelta
from pathlib import Path

import polars as pl
import pytest

from tests.conftest import T0, Database, make_readings, write_chunk
from tests.faults.conftest import (
    armed,
    expected_keys,
    paused_at,
    powerwatch_env,
    run_powerwatch,
    signal_group,
    spawn_powerwatch,
    stored_keys,
    visible_files,
    wait_for_line,
)

STATIONS = ["KhonKaen", "ChiangMai", "Songkhla"]
LIMIT = 5.0  # seconds from the group's signal to the command's exit (issue 10)
SIGNALS = [pytest.param(signal.SIGTERM, id="SIGTERM"), pytest.param(signal.SIGINT, id="SIGINT")]


def interrupt_at(
    point: str, args: list[str], env: dict[str, str], tmp_path: Path, signum: int, at: int = 1
) -> tuple[int, float, str]:
    """Run `powerwatch ARGS` paused at `point` (its `at`-th pass), signal its group:
    exit status, seconds to exit, its output."""
    notify = tmp_path / f"notify-{signum}"
    log = tmp_path / f"log-{signum}"
    paused = paused_at(point, notify) | armed(point, "pause", at)
    proc = spawn_powerwatch(*args, env=env | paused, log=log)
    wait_for_line(notify, point, proc, timeout=180)
    seconds = signal_group(proc, signum, timeout=30)
    return proc.returncode, seconds, log.read_text()


def assert_interrupted(status: int, seconds: float, log: str, job: str, signum: int) -> None:
    assert seconds < LIMIT, f"{job} took {seconds:.1f} s to exit"
    assert status == 128 + signum
    name = signal.Signals(signum).name
    lines = [line for line in log.splitlines() if line.startswith(f"powerwatch: {job} interrupted")]
    assert len(lines) == 1 and name in lines[0], log
    assert "Traceback" not in log


def two_chunks(db: Database) -> tuple[pl.DataFrame, pl.DataFrame]:
    landing = db.data_dir / "landing"
    first = make_readings(STATIONS, 20)
    second = make_readings(STATIONS, 20, start=T0 + timedelta(seconds=20))
    write_chunk(first, landing, "manual-0001.parquet")
    write_chunk(second, landing, "manual-0002.parquet")
    return first, second


def check_load_interrupted(db: Database, tmp_path: Path, env: dict[str, str], signum: int) -> None:
    first, second = two_chunks(db)
    # the 2nd slice stored is the second chunk's first: the first chunk is committed
    status, seconds, log = interrupt_at("load.slice_stored", ["load"], env, tmp_path, signum, at=2)
    assert_interrupted(status, seconds, log, "load", signum)
    assert stored_keys(db.url).equals(expected_keys(first))  # chunk 2 rolled back whole
    assert [p.name for p in visible_files(db.data_dir / "landing")] == ["manual-0002.parquet"]
    again = run_powerwatch("load", env=env)
    assert again.returncode == 0, again.stderr
    assert stored_keys(db.url).equals(expected_keys(pl.concat([first, second])))


@pytest.mark.slow
@pytest.mark.parametrize("signum", SIGNALS)
def test_load_signalled_with_a_server_keeps_committed_chunks_and_exits_in_time(
    synced: Database, tmp_path: Path, prefect_api: str, signum: int
) -> None:
    check_load_interrupted(
        synced, tmp_path, powerwatch_env({"PREFECT_API_URL": prefect_api}), signum
    )


@pytest.mark.slow
@pytest.mark.parametrize("signum", SIGNALS)
def test_load_signalled_with_its_temporary_server_exits_in_time(
    synced: Database, tmp_path: Path, signum: int
) -> None:
    env = powerwatch_env({"PREFECT_HOME": str(tmp_path / "prefect")})
    env.pop("PREFECT_API_URL", None)
    check_load_interrupted(synced, tmp_path, env, signum)
