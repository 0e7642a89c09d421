"""SIGTERM/SIGINT to a job command's whole process group (a terminal's Ctrl-C, systemd's
stop): what was done is kept, the command exits within 5 s with 128 + the signal and one
line saying what was kept, and the same command afterwards completes exactly.

Each job is paused at a named fault point (`pause` + `wait_for_line`), so the signal
arrives at a known moment. With PREFECT_API_URL (the session's server) and without it
(the command's temporary server then lives outside the group; see powerwatch.site.jobs).
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
from tests.prefect_db import seed

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
    wait_for_line(notify, point, proc, timeout=420)  # a temporary server took 3+ min here
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


@pytest.fixture(scope="module")
def prefect_home(tmp_path_factory: pytest.TempPathFactory, prefect_db_template: Path) -> Path:
    """One PREFECT_HOME for the temporary-server cases, on the run's migrated database."""
    return seed(tmp_path_factory.mktemp("prefect-home"), prefect_db_template)


def temporary_server_env(prefect_home: Path) -> dict[str, str]:
    """No PREFECT_API_URL: the command starts its temporary server (slow on a busy host)."""
    env = powerwatch_env(
        {
            "PREFECT_HOME": str(prefect_home),
            "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "240",
        }
    )
    env.pop("PREFECT_API_URL", None)
    return env


@pytest.mark.slow
def test_load_signalled_with_its_temporary_server_exits_in_time(
    sqlite_synced: Database, tmp_path: Path, prefect_home: Path
) -> None:
    check_load_interrupted(
        sqlite_synced, tmp_path, temporary_server_env(prefect_home), signal.SIGINT
    )


def load_directly(db: Database, frame: pl.DataFrame, name: str) -> None:
    """Readings into the database the way `load` stores them, without a Prefect run."""
    from db.engine import bulk_connection
    from powerwatch.core.settings import get_settings
    from powerwatch.load.chunks import load_chunk

    settings = get_settings()
    chunk = write_chunk(frame, settings.landing_dir, name)
    with bulk_connection(db.url) as bulk:
        assert load_chunk(bulk, chunk, settings).status == "loaded"


@pytest.mark.slow
def test_migrate_logs_signalled_keeps_committed_files_and_exits_in_time(
    sqlite_synced: Database, tmp_path: Path, prefect_api: str
) -> None:
    db, signum = sqlite_synced, signal.SIGTERM
    env = powerwatch_env({"PREFECT_API_URL": prefect_api})
    logs = tmp_path / "logs"
    logs.mkdir()
    start = int(T0.timestamp() * 1000)
    truth = []
    for name, offset in (("a.jsonl", 0), ("b.jsonl", 100)):
        rows = [
            (STATIONS[i % 3], start + (offset + i // 3) * 1000, float(i), float(i))
            for i in range(300)
        ]
        body = (
            f'{{"station":"{s}","timestamp":{ts},"readings":{{"activePower1":{p},"muxPower1":{m}}}}}'
            for s, ts, p, m in rows
        )
        (logs / name).write_text("\n".join(body) + "\n")
        truth.append(
            pl.DataFrame(rows, schema=["station", "ts", "p1", "m1"], orient="row").sort(
                "station", "ts"
            )
        )
    # the 2nd block parsed is b.jsonl's first: a.jsonl is committed, b.jsonl is not
    status, seconds, log = interrupt_at(
        "migrate.parsed", ["migrate-logs", str(logs)], env, tmp_path, signum, at=2
    )
    assert_interrupted(status, seconds, log, "migrate-logs", signum)
    assert stored_keys(db.url).equals(truth[0])
    again = run_powerwatch("migrate-logs", str(logs), env=env)
    assert again.returncode == 0, again.stderr
    both = pl.concat(truth).unique(["station", "ts"], keep="first").sort("station", "ts")
    assert stored_keys(db.url).equals(both)


@pytest.mark.slow
def test_archive_signalled_keeps_archived_days_and_exits_in_time(
    sqlite_synced: Database, tmp_path: Path, prefect_api: str
) -> None:
    db, signum = sqlite_synced, signal.SIGINT
    env = powerwatch_env({"PREFECT_API_URL": prefect_api})
    days = [make_readings(STATIONS, 30, start=T0 + timedelta(days=d)) for d in (0, 1, 10)]
    for i, frame in enumerate(days):
        load_directly(db, frame, f"manual-{i}.parquet")
    # days 0 and 1 are past a 5-day retention; the 2nd file written is day 1's
    status, seconds, log = interrupt_at(
        "archive.written", ["archive", "--older-than", "5"], env, tmp_path, signum, at=2
    )
    assert_interrupted(status, seconds, log, "archive", signum)
    assert stored_keys(db.url).equals(expected_keys(pl.concat(days[1:])))
    archive = db.data_dir / "archive"
    assert len(visible_files(archive, "**/*.parquet")) == 1  # day 0's; no half file of day 1
    again = run_powerwatch("archive", "--older-than", "5", env=env)
    assert again.returncode == 0, again.stderr
    assert stored_keys(db.url).equals(expected_keys(days[2]))
    assert len(visible_files(archive, "**/*.parquet")) == 2


@pytest.mark.slow
def test_backup_signalled_publishes_nothing_and_exits_in_time(
    sqlite_synced: Database, tmp_path: Path, prefect_api: str
) -> None:
    db, signum = sqlite_synced, signal.SIGTERM
    env = powerwatch_env({"PREFECT_API_URL": prefect_api})
    readings = make_readings(STATIONS, 60)
    load_directly(db, readings, "manual-0.parquet")
    status, seconds, log = interrupt_at("backup.copied", ["backup"], env, tmp_path, signum)
    assert_interrupted(status, seconds, log, "backup", signum)
    backups = db.data_dir / "backups"
    assert visible_files(backups) == []  # nothing half-made is visible
    assert stored_keys(db.url).equals(expected_keys(readings))
    again = run_powerwatch("backup", env=env)
    assert again.returncode == 0, again.stderr
    assert len(visible_files(backups, "*.zst")) == 1


SIMULATE = (
    "import sys\n"
    "from pathlib import Path\n"
    "from powerwatch.devtools.simulator import simulate\n"
    "simulate(2, 20.0, registry_path=Path(sys.argv[1]), record_path=Path(sys.argv[2]))\n"
)


def sent_frames(record: Path) -> pl.DataFrame:
    """The frames the simulator recorded as sent so far (complete lines only: it is
    still writing)."""
    import io

    from powerwatch.devtools.simulator import RECORD_SCHEMA

    text = record.read_bytes()
    text = text[: text.rfind(b"\n") + 1]
    if not text:
        return pl.DataFrame(schema=RECORD_SCHEMA)
    frames = pl.read_ndjson(io.BytesIO(text), schema=RECORD_SCHEMA)
    return frames.filter(pl.col("event").is_null())


def check_capture_interrupted(
    db: Database, tmp_path: Path, env: dict[str, str], signum: int
) -> None:
    """Capture with no flush of its own (60 s, 100 k rows) signalled once 2 s of frames were
    sent: every frame sent 1 s or more before the signal is stored after a load (flushed on
    the signal), none that was not sent, none twice."""
    import subprocess
    import sys
    import time

    from powerwatch.devtools.simulator import expected_readings

    # not stations.yaml: the fixture's registry is there, and would look written already
    registry, record = tmp_path / "sim-stations.yaml", tmp_path / "record.ndjson"
    env = env | {"POWERWATCH_STATIONS": str(registry)}
    simulator = subprocess.Popen(
        [sys.executable, "-c", SIMULATE, str(registry), str(record)], env=env
    )
    try:
        deadline = time.monotonic() + 60
        while not registry.exists():
            assert time.monotonic() < deadline and simulator.poll() is None
            time.sleep(0.1)
        assert run_powerwatch("stations", "sync", env=env).returncode == 0
        log = tmp_path / f"capture-{signum}.log"
        args = ["capture", "--flush-seconds", "60", "--flush-rows", "100000"]
        proc = spawn_powerwatch(*args, env=env, log=log)
        deadline = time.monotonic() + 240
        while True:  # the capture is connected and 2 s of frames were sent to it
            frames = sent_frames(record) if record.exists() else pl.DataFrame()
            sent_ms = frames["sent_ms"].to_list() if frames.height else []
            if sent_ms and max(sent_ms) - min(sent_ms) >= 2000:
                break
            assert time.monotonic() < deadline and proc.poll() is None, log.read_text()
            time.sleep(0.1)
        signalled_ms = int(time.time() * 1000)
        seconds = signal_group(proc, signum, timeout=30)
        assert_interrupted(proc.returncode, seconds, log.read_text(), "capture", signum)
    finally:
        simulator.terminate()
        simulator.wait(30)
    loaded = run_powerwatch("load", env=env)
    assert loaded.returncode == 0, loaded.stderr
    stored = stored_keys(db.url)
    early = tmp_path / "early.ndjson"
    sent = pl.read_ndjson(record, infer_schema_length=None)
    sent.filter(
        pl.col("sent_ms").is_null() | (pl.col("sent_ms") <= signalled_ms - 1000)
    ).write_ndjson(early)
    must = expected_keys(expected_readings(early))
    may = expected_keys(expected_readings(record))
    assert must.height > 40
    assert stored.join(may, on=["station", "ts"], how="anti").is_empty()  # nothing invented
    assert must.join(stored, on=["station", "ts"], how="anti").is_empty()  # nothing lost
    assert stored.n_unique(["station", "ts"]) == stored.height  # nothing twice


@pytest.mark.slow
def test_capture_signalled_with_a_server_flushes_what_it_received(
    sqlite_synced: Database, tmp_path: Path, prefect_api: str
) -> None:
    env = powerwatch_env({"PREFECT_API_URL": prefect_api})
    check_capture_interrupted(sqlite_synced, tmp_path, env, signal.SIGINT)


@pytest.mark.slow
def test_capture_signalled_with_its_temporary_server_exits_in_time(
    sqlite_synced: Database, tmp_path: Path, prefect_home: Path
) -> None:
    env = temporary_server_env(prefect_home)
    check_capture_interrupted(sqlite_synced, tmp_path, env, signal.SIGTERM)
