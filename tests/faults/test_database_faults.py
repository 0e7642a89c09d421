"""A damaged SQLite file, a PostgreSQL table lock held elsewhere, an unreachable server:
every command says so in one line and exits non-zero; nothing replaces or changes the
database; chunks wait in landing/; a busy database is retried a bounded number of
times, with bounded waits, and a damaged one never. Real processes, real files, the
real PostgreSQL server.
"""

from __future__ import annotations

import hashlib
import shutil
import socket
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import polars as pl
import pytest

from tests.conftest import STATIONS_YAML, Database, make_readings, write_chunk
from tests.faults.conftest import (
    expected_keys,
    powerwatch_env,
    run_powerwatch,
    stored_keys,
    visible_files,
)

STATIONS = ["KhonKaen", "ChiangMai", "Songkhla"]
SECONDS = 20_000  # 60,000 readings, ~6 MB: the middle third of the file is readings pages
DAMAGED = "the database is damaged"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def healthy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite database at the newest schema, three stations, 60,000 readings loaded,
    checkpointed into the main file (no -wal): the template every case copies."""
    from db.engine import bulk_connection, make_engine
    from db.migrate import upgrade
    from db.stations import sync_stations
    from powerwatch.core.settings import Settings
    from powerwatch.load.chunks import load_chunk
    from schemas.registry import load_registry

    root = tmp_path_factory.mktemp("healthy")
    url = f"sqlite:///{root / 'powerwatch.db'}"
    (root / "stations.yaml").write_text(STATIONS_YAML)
    engine = make_engine(url)
    upgrade(engine)
    sync_stations(engine, load_registry(root / "stations.yaml"))
    engine.dispose()
    settings = Settings(database_url=url, data_dir=root / "data")
    chunk = write_chunk(make_readings(STATIONS, SECONDS), settings.landing_dir, "a.parquet")
    with bulk_connection(url) as bulk:
        assert load_chunk(bulk, chunk, settings).inserted == len(STATIONS) * SECONDS
        bulk.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    assert not Path(f"{root / 'powerwatch.db'}-wal").exists() or (
        Path(f"{root / 'powerwatch.db'}-wal").stat().st_size == 0
    )
    return root / "powerwatch.db"


def _damage(path: Path, variant: str) -> None:
    """`header`: the first 100 bytes (SQLite's file header) overwritten; `middle`: the
    middle third of the pages overwritten (readings' B-tree pages of the middle station,
    its newest included)."""
    size = path.stat().st_size
    with open(path, "r+b") as handle:
        if variant == "header":
            handle.write(b"\xa5" * 100)
        else:
            page = 4096
            pages = size // page
            handle.seek(pages // 3 * page)
            handle.write(b"\xa5" * (pages // 3 * page))


@pytest.fixture(params=["header", "middle"])
def damaged(
    request: pytest.FixtureRequest, healthy: Path, tmp_path: Path, prefect_api: str
) -> Iterator[tuple[str, dict[str, str], Path]]:
    """A copy of the template, damaged; the environment of a command using it."""
    db = tmp_path / "powerwatch.db"
    shutil.copy(healthy, db)
    _damage(db, request.param)
    (tmp_path / "stations.yaml").write_text(STATIONS_YAML)
    logs = tmp_path / "logs"
    logs.mkdir()
    # Format C (legacy-logs.md) lines of the middle station on the damaged days.
    frame = make_readings(["ChiangMai"], 5, value=7.0)
    from powerwatch.site.output import CSV_TIME_FORMAT

    frame.with_columns(pl.col("timestamp").dt.strftime(CSV_TIME_FORMAT)).select(
        "timestamp", "station", pl.exclude("timestamp", "station")
    ).write_csv(logs / "export.csv")
    env = powerwatch_env(
        {
            "POWERWATCH_DATABASE_URL": f"sqlite:///{db}",
            "POWERWATCH_DATA_DIR": str(tmp_path / "data"),
            "POWERWATCH_STATIONS": str(tmp_path / "stations.yaml"),
            "POWERWATCH_BUSY_TIMEOUT_MS": "2000",
            "POWERWATCH_LOAD_RETRIES": "3",
            "PREFECT_API_URL": prefect_api,
        }
    )
    yield request.param, env, db


# Every command, with what it needs to reach the database. `load` gets a chunk of the
# middle station (its keys are looked up in the damaged pages).
COMMANDS = [
    ["latest"],
    ["stations", "list"],
    ["readings", "--format", "csv"],
    ["completeness", "--station", "ChiangMai", "--day", "2026-11-01"],
    ["db", "upgrade"],
    ["load"],
    ["backup"],
    ["archive", "--older-than", "1"],
    ["migrate-logs", "{tmp}/logs"],
    ["stations", "sync"],
    ["rollups"],
    ["refresh-rollups"],
]
# What a damaged page the command never reads cannot tell it: these answer from other
# pages (stations, rollups tables) and are right to (docs/design.md).
JOBS = {"load", "backup", "archive", "migrate-logs", "refresh-rollups"}
UNTOUCHED_BY_MIDDLE = {("stations", "sync"), ("rollups",), ("refresh-rollups",)}


@pytest.mark.parametrize("args", COMMANDS, ids=lambda a: "-".join(a[:2]))
def test_damaged_database_one_line_nonzero_file_unchanged(
    damaged: tuple[str, dict[str, str], Path], tmp_path: Path, args: list[str]
) -> None:
    variant, env, db = damaged
    landing = tmp_path / "data" / "landing"
    chunk = write_chunk(make_readings(["ChiangMai"], 5, value=9.0), landing, "new.parquet")
    before = _sha256(db)
    started = time.monotonic()
    done = run_powerwatch(*(a.replace("{tmp}", str(tmp_path)) for a in args), env=env)
    seconds = time.monotonic() - started
    assert _sha256(db) == before  # never replaced, never "repaired" with an empty one
    assert not Path(f"{db}-journal").exists()
    if variant == "middle" and tuple(args) in UNTOUCHED_BY_MIDDLE:
        # Reads no damaged page: answers as if healthy, or (refresh-rollups, reading the
        # pending hours' readings) reports the damage; never anything else.
        if done.returncode != 0:
            assert done.returncode == 1 and DAMAGED in _own_lines(done.stderr)[-1]
        return
    assert done.returncode == 1, done.stdout + done.stderr
    if args[0] not in JOBS:  # a job's stderr also carries its Prefect run log (see report)
        assert "Traceback" not in done.stderr, done.stderr
    mine = _own_lines(done.stderr)
    assert len(mine) == 1 and DAMAGED in mine[0], done.stderr
    assert "(README: Recovering)" in mine[0]
    if args == ["load"]:
        assert visible_files(landing) == [chunk]  # waits for the restore, untouched
    assert "AwaitingRetry" not in done.stderr  # never retried as "busy"
    assert seconds < 300


def _own_lines(stderr: str) -> list[str]:
    """The command's own lines (Prefect's log lines, `HH:MM:SS.mmm | LEVEL | ...`, aside)."""
    return [line for line in stderr.splitlines() if line.startswith("powerwatch:")]


# --- busy, locked, unreachable ---------------------------------------------------------


@contextmanager
def lock_held(database: Database) -> Iterator[None]:
    """Another connection holds the write lock: SQLite `BEGIN IMMEDIATE`; PostgreSQL
    `LOCK TABLE power_readings IN ACCESS EXCLUSIVE MODE`, in a transaction kept open."""
    if database.backend == "sqlite":
        lite = sqlite3.connect(database.url.removeprefix("sqlite:///"), isolation_level=None)
        lite.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            lite.execute("ROLLBACK")
            lite.close()
        return
    import sqlalchemy

    engine = sqlalchemy.create_engine(database.url)
    try:
        with engine.connect() as held:
            held.execute(sqlalchemy.text("LOCK TABLE power_readings IN ACCESS EXCLUSIVE MODE"))
            try:
                yield
            finally:
                held.rollback()
    finally:
        engine.dispose()


def test_lock_held_elsewhere_bounded_wait_then_exact_load(
    synced: Database, prefect_api: str
) -> None:
    """A writer waits at most the busy timeout (PostgreSQL: lock_timeout before LOCK
    TABLE), is retried POWERWATCH_LOAD_RETRIES times with backoff, then ends with one
    line, exit 1, the chunk still in landing/; once the lock is gone, the same command
    stores every reading exactly once."""
    landing = synced.data_dir / "landing"
    frame = make_readings(STATIONS, 200)
    chunk = write_chunk(frame, landing, "a.parquet")
    env = powerwatch_env(
        {
            "POWERWATCH_BUSY_TIMEOUT_MS": "500",
            "POWERWATCH_LOAD_RETRIES": "1",
            "PREFECT_API_URL": prefect_api,
        }
    )
    with lock_held(synced):
        started = time.monotonic()
        blocked = run_powerwatch("load", env=env, timeout=300)
        seconds = time.monotonic() - started
    assert blocked.returncode == 1, blocked.stdout + blocked.stderr
    mine = _own_lines(blocked.stderr)
    assert len(mine) == 1, blocked.stderr
    assert "database busy or unreachable after 2 attempts" in mine[0], mine[0]
    assert visible_files(landing) == [chunk]
    assert seconds < 300  # 2 waits of 0.5 s and one backoff (2 s +- 50 %), plus start-up
    assert stored_keys(synced.url).is_empty()

    again = run_powerwatch("load", env=env, timeout=300)
    assert again.returncode == 0, again.stderr
    assert stored_keys(synced.url).equals(expected_keys(frame))
    assert visible_files(landing) == []


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again on leaving: nothing listens there


def test_postgres_unreachable_one_line_exit_1_bounded(tmp_path: Path, prefect_api: str) -> None:
    """Nothing listens at the URL's port: `load` and a query say so in one line, exit 1,
    within a bounded time; the chunk waits in landing/."""
    landing = tmp_path / "data" / "landing"
    chunk = write_chunk(make_readings(STATIONS, 10), landing, "a.parquet")
    env = powerwatch_env(
        {
            "POWERWATCH_DATABASE_URL": f"postgresql://postgres@127.0.0.1:{_closed_port()}/test",
            "POWERWATCH_DATA_DIR": str(tmp_path / "data"),
            "POWERWATCH_BUSY_TIMEOUT_MS": "500",
            "POWERWATCH_LOAD_RETRIES": "1",
            "PREFECT_API_URL": prefect_api,
        }
    )
    for args in (["load"], ["latest"]):
        started = time.monotonic()
        done = run_powerwatch(*args, env=env, timeout=300)
        seconds = time.monotonic() - started
        assert done.returncode == 1, done.stdout + done.stderr
        mine = _own_lines(done.stderr)
        assert len(mine) == 1 and "busy or unreachable" in mine[0], done.stderr
        if args != ["load"]:  # a job's stderr also carries its Prefect run log
            assert "Traceback" not in done.stderr
        assert seconds < 300
    assert visible_files(landing) == [chunk]
