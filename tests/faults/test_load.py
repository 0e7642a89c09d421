"""Fault injection for `powerwatch load`: kill -9 at every step, loaders racing for the
same chunks, full disks, hostile entries in landing/ and a damaged database.

Every case runs real `powerwatch load` processes and ends by comparing the database
with ground truth (each reading once, none missing), checking the ledger (each chunk
committed once) and that no half file or claim is left visible.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from datetime import timedelta
from pathlib import Path

import polars as pl
import pytest

from db.engine import bulk_connection
from powerwatch.core.faults import POINTS
from powerwatch.core.settings import Settings
from powerwatch.load import landing as landing_zone
from powerwatch.load.chunks import load_chunk
from tests.conftest import T0, Database, make_readings, write_chunk
from tests.faults.conftest import (
    armed,
    committed_per_input,
    expected_keys,
    fill,
    free,
    paused_at,
    powerwatch_env,
    run_powerwatch,
    spawn_powerwatch,
    stored_keys,
    visible_files,
    wait_for_line,
)

STATIONS = ["KhonKaen", "ChiangMai", "Songkhla"]
LOAD_POINTS = [name for name in POINTS if name.startswith("load.")]


def _env(prefect_api: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    return powerwatch_env({"PREFECT_API_URL": prefect_api} | (extra or {}))


def land(landing: Path, chunks: int, seconds: int = 20, first: int = 0) -> pl.DataFrame:
    """`chunks` chunks of `seconds` seconds each (3 stations), each with one reading of an
    unknown station (quarantined); the readings that should be stored."""
    stored: list[pl.DataFrame] = []
    for i in range(first, first + chunks):
        frame = make_readings(STATIONS, seconds, start=T0 + timedelta(seconds=i * seconds))
        unknown = frame.head(1).with_columns(pl.lit("Atlantis").alias("station"))
        write_chunk(pl.concat([frame, unknown]), landing, f"chunk-{i:03d}.parquet")
        os.utime(landing / f"chunk-{i:03d}.parquet", ns=(i * 10**9, i * 10**9))
        stored.append(frame)
    return pl.concat(stored)


def names(folder: Path, pattern: str = "*.parquet") -> set[str]:
    return {p.name for p in visible_files(folder, pattern)} if folder.exists() else set()


def assert_all_loaded_once(db: Database, truth: pl.DataFrame, chunks: set[str]) -> None:
    """Ground truth: every reading once, every chunk committed once and in loaded/, its
    rejected row in quarantine/, nothing left in landing/ (claimed or not)."""
    data = db.data_dir
    assert stored_keys(db.url).equals(expected_keys(truth))
    assert committed_per_input(db.url) == dict.fromkeys(chunks, 1)
    assert names(data / "loaded") == chunks
    assert names(data / "quarantine") == chunks
    assert list((data / "landing").iterdir()) in ([], [data / "landing" / ".claimed"])
    claims = data / "landing" / ".claimed"
    assert not claims.exists() or list(claims.iterdir()) == []
    hidden = [p for p in data.rglob(".*") if p.is_file()]
    assert hidden == [], hidden  # no temporary file left behind


def preload(url: str, data_dir: Path, first: int) -> pl.DataFrame:
    """Load one chunk in this process (no Prefect: fast); the stored readings after it."""
    truth = land(data_dir / "landing", 1, seconds=20, first=first)
    with bulk_connection(url) as bulk:
        [chunk] = landing_zone.list_chunks(data_dir / "landing")
        assert load_chunk(bulk, chunk, Settings(data_dir=data_dir)).status == "loaded"
    assert stored_keys(url).equals(expected_keys(truth))
    return truth


def assert_not_retried(result: subprocess.CompletedProcess[str], seconds: float) -> None:
    """No retry as "database busy": Prefect logs each retry ("Retry 1/5 will start"), and
    five retries with backoff would take minutes."""
    assert "will start" not in result.stdout + result.stderr, result.stderr
    assert "busy" not in result.stderr
    assert seconds < 120, f"{seconds:.1f} s"


def load_fails_disk_full(env: dict[str, str]) -> None:
    """`powerwatch load` on a full disk: exit 1 at once with a one-line "disk full" error,
    never retried as a busy database."""
    started = time.monotonic()
    full = run_powerwatch("load", env=env)
    seconds = time.monotonic() - started
    assert full.returncode == 1
    assert "disk full" in _one_line_error(full)
    assert_not_retried(full, seconds)


def _one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("powerwatch:")]
    assert len(lines) == 1, result.stderr
    return lines[0]


# --- kill -9 at every step ------------------------------------------------------------------


@pytest.mark.parametrize("point", LOAD_POINTS)
def test_kill_9_at_each_load_point_then_load_again_gives_ground_truth(
    synced: Database, prefect_api: str, point: str
) -> None:
    landing = synced.data_dir / "landing"
    truth = land(landing, 4)
    chunks = names(landing)

    killed = run_powerwatch("load", env=_env(prefect_api, armed(point, "kill", at=2)))
    assert killed.returncode == -9, killed.stderr
    if point != "load.moved":  # the second chunk's claim is left by the dead loader
        assert [p.name for p in (landing / ".claimed").iterdir()] != []
    assert committed_per_input(synced.url).get("chunk-001.parquet", 0) == (
        1 if point in ("load.committed", "load.moved") else 0
    )

    again = run_powerwatch("load", env=_env(prefect_api))
    assert again.returncode == 0, again.stderr
    assert_all_loaded_once(synced, truth, chunks)


def test_a_claim_of_a_live_loader_is_left_alone_a_dead_ones_recovered(
    synced: Database, prefect_api: str
) -> None:
    landing = synced.data_dir / "landing"
    truth = land(landing, 2)
    # A live process (this test) owns one claim: another loader must not take it.
    mine = landing_zone.claim(landing / "chunk-000.parquet")
    assert mine is not None
    again = run_powerwatch("load", env=_env(prefect_api))
    assert again.returncode == 0, again.stderr
    assert mine.exists()
    assert committed_per_input(synced.url) == {"chunk-001.parquet": 1}
    # Its owner "dies": the claim now names a process that has exited.
    dead = mine.with_name(mine.name.replace(f".{os.getpid()}-", f".{_finished_pid()}-"))
    mine.rename(dead)
    again = run_powerwatch("load", env=_env(prefect_api))
    assert again.returncode == 0, again.stderr
    assert_all_loaded_once(synced, truth, {"chunk-000.parquet", "chunk-001.parquet"})


def _finished_pid() -> int:
    """The pid of a child that has exited (and was reaped): no process has it now."""
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


@pytest.mark.slow
def test_capture_live_load_and_powerwatch_load_race_for_the_same_chunks(
    synced: Database, prefect_api: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A capture's own load (`flows.capture_stations.live_loader`, the object a capture run
    uses) and a `powerwatch load` reach for the same chunks. Made deterministic by fault
    points: the sweep holds chunk-000's claim (paused at `load.claimed`), so the capture's
    load skips it (`taken`); the capture's load of chunk-001 commits and then fails
    (`load.committed` ioerror), so chunk-001 is back in landing/ though stored: the sweep
    must find it in the ledger and store nothing twice. Ground truth at the end."""
    from flows.capture_stations import live_loader
    from powerwatch.core import faults
    from powerwatch.core.settings import get_settings

    landing = synced.data_dir / "landing"
    truth = land(landing, 3)
    chunks = names(landing)
    notify, log = tmp_path / "notify", tmp_path / "sweep.log"
    sweep = spawn_powerwatch(
        "load", env=_env(prefect_api, paused_at("load.claimed", notify)), log=log
    )
    try:
        wait_for_line(notify, "load.claimed", sweep)  # it holds chunk-000, the oldest
        monkeypatch.setenv(faults.ENV, "load.committed=ioerror@2")
        monkeypatch.setattr(faults, "_passes", {})
        loader = live_loader(get_settings(), logging.getLogger(__name__))
        assert loader is not None  # the schema check passed: this is a live-loading run
        for name in ("chunk-000.parquet", "chunk-002.parquet", "chunk-001.parquet"):
            loader.submit(landing / name)
        counts = loader.close(wait=120)
        monkeypatch.delenv(faults.ENV)
        assert (counts.taken, counts.loaded, counts.left) == (1, 1, 1), counts
        assert "Input/output error" in counts.last_error
        # chunk-002 loaded by the capture; chunk-001 committed but back in landing/;
        # chunk-000 untouched (the paused sweep has claimed it, stored nothing yet).
        assert committed_per_input(synced.url) == {"chunk-001.parquet": 1, "chunk-002.parquet": 1}
        assert names(landing) == {"chunk-001.parquet"}
        assert names(synced.data_dir / "loaded") == {"chunk-002.parquet"}
    finally:
        os.killpg(sweep.pid, signal.SIGKILL)  # dies holding chunk-000's claim
        sweep.wait(timeout=30)
    again = run_powerwatch("load", env=_env(prefect_api))
    assert again.returncode == 0, again.stderr
    assert_all_loaded_once(synced, truth, chunks)


# --- full disks -----------------------------------------------------------------------------


def test_disk_full_data_dir_fails_at_once_then_completes_after_space_is_freed(
    synced: Database, prefect_api: str, small_disk: Path
) -> None:
    data = small_disk / "data"
    landing = data / "landing"
    before = preload(synced.url, data, first=100)
    truth = land(landing, 3)
    chunks = names(landing)
    fill(small_disk)
    env = _env(prefect_api, {"POWERWATCH_DATA_DIR": str(data)})

    load_fails_disk_full(env)
    assert stored_keys(synced.url).equals(expected_keys(before))  # nothing lost or changed
    assert committed_per_input(synced.url) == {"chunk-100.parquet": 1}
    assert names(landing) == chunks  # back in landing/, no claim kept
    assert not (landing / ".claimed").exists() or not any((landing / ".claimed").iterdir())

    free(small_disk)
    again = run_powerwatch("load", env=env)
    assert again.returncode == 0, again.stderr
    all_chunks = chunks | {"chunk-100.parquet"}
    assert_all_loaded_once(
        Database(synced.backend, synced.url, data), pl.concat([truth, before]), all_chunks
    )


def small_sqlite(disk: Path, registry_file: Path) -> str:
    """An upgraded SQLite database with the test stations, on `disk`."""
    from db.engine import make_engine
    from db.migrate import upgrade
    from db.stations import sync_stations
    from schemas.registry import load_registry

    url = f"sqlite:///{disk / 'powerwatch.db'}"
    engine = make_engine(url)
    upgrade(engine)
    sync_stations(engine, load_registry(registry_file))
    engine.dispose()
    return url


def test_disk_full_sqlite_database_fails_at_once_then_completes_after_space_is_freed(
    sqlite_database: Database, registry_file: Path, prefect_api: str, small_disk: Path
) -> None:
    url = small_sqlite(small_disk, registry_file)
    landing = sqlite_database.data_dir / "landing"
    before = preload(url, sqlite_database.data_dir, first=100)
    truth = land(landing, 3, seconds=2_000)
    chunks = names(landing)
    fill(small_disk, leave_bytes=64 << 10)
    env = _env(prefect_api, {"POWERWATCH_DATABASE_URL": url})

    load_fails_disk_full(env)
    assert names(landing) == chunks
    free(small_disk)
    assert stored_keys(url).equals(expected_keys(before))  # nothing lost or changed
    assert committed_per_input(url) == {"chunk-100.parquet": 1}

    again = run_powerwatch("load", env=env)
    assert again.returncode == 0, again.stderr
    assert_all_loaded_once(
        Database("sqlite", url, sqlite_database.data_dir),
        pl.concat([before, truth]),
        chunks | {"chunk-100.parquet"},
    )


# --- hostile entries in landing/ ----------------------------------------------------------


@pytest.mark.timeout(90)
def test_directory_fifo_and_device_symlink_are_set_aside_and_the_rest_loads(
    synced: Database, prefect_api: str
) -> None:
    landing = synced.data_dir / "landing"
    truth = land(landing, 2)
    (landing / "a-dir.parquet").mkdir()
    (landing / "a-dir.parquet" / "inside.parquet").write_bytes(b"x")
    os.mkfifo(landing / "b-fifo.parquet")
    (landing / "c-zero.parquet").symlink_to("/dev/zero")
    hostile = {"a-dir.parquet", "b-fifo.parquet", "c-zero.parquet"}

    first = run_powerwatch("load", env=_env(prefect_api), timeout=60)
    assert first.returncode == 1  # unreadable entries set aside: the run says so
    assert "3 unreadable" in first.stderr
    failed = synced.data_dir / "failed"
    for name, kind in zip(sorted(hostile), ["directory", "FIFO", "symbolic link"], strict=True):
        assert (failed / name).is_symlink() or (failed / name).exists()
        assert kind in (failed / f"{name}.reason.txt").read_text()
    assert_all_loaded_once(synced, truth, {"chunk-000.parquet", "chunk-001.parquet"})

    # The next run is not stopped by them (they are gone from landing/), nor by a
    # directory of the same name landing again.
    (landing / "a-dir.parquet").mkdir()
    second = run_powerwatch("load", env=_env(prefect_api), timeout=60)
    assert second.returncode == 1 and "1 unreadable" in second.stderr
    assert (failed / "a-dir.parquet.1").is_dir()
    third = run_powerwatch("load", env=_env(prefect_api), timeout=60)
    assert third.returncode == 0, third.stderr


# --- a damaged database ---------------------------------------------------------------------


def damage(path: Path, where: str) -> bytes:
    """Overwrite the header, or the pages in the middle of the file; the damaged file's bytes."""
    size = path.stat().st_size
    offset, length = (0, 100) if where == "header" else (size // 4, size // 2)
    with open(path, "r+b") as handle:
        handle.seek(offset)
        handle.write(b"\xa5" * length)
    return path.read_bytes()


@pytest.mark.parametrize("where", ["header", "middle"])
def test_damaged_sqlite_database_is_named_in_one_line_and_left_alone(
    sqlite_synced: Database, prefect_api: str, where: str
) -> None:
    landing = sqlite_synced.data_dir / "landing"
    land(landing, 3, seconds=2_000)
    assert run_powerwatch("load", env=_env(prefect_api)).returncode == 0
    land(landing, 2, seconds=2_000, first=3)
    chunks = names(landing)
    db_file = Path(sqlite_synced.url.removeprefix("sqlite:///"))
    assert not db_file.with_name(db_file.name + "-wal").exists()  # all in the main file
    damaged = damage(db_file, where)
    inode = db_file.stat().st_ino

    started = time.monotonic()
    result = run_powerwatch("load", env=_env(prefect_api))
    seconds = time.monotonic() - started
    assert result.returncode == 1
    line = _one_line_error(result)
    assert "damaged" in line
    assert_not_retried(result, seconds)
    assert db_file.stat().st_ino == inode and db_file.read_bytes() == damaged
    assert names(landing) == chunks
    assert not (landing / ".claimed").exists() or not any((landing / ".claimed").iterdir())
