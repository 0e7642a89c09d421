"""A busy database and a kill -9 at any point never lose or change anything (SQLite)."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import polars as pl
import pytest

from db.engine import bulk_connection
from powerwatch.core.errors import DatabaseUnavailable
from powerwatch.core.faults import ENV as FAULT_ENV
from powerwatch.core.settings import get_settings
from powerwatch.load.chunks import load_chunk
from tests.conftest import T0, Database, make_readings, write_chunk

LOAD_ALL = (
    "from db.engine import bulk_connection\n"
    "from powerwatch.load import landing\n"
    "from powerwatch.load.chunks import load_chunk\n"
    "from powerwatch.core.settings import get_settings\n"
    "s = get_settings()\n"
    "landing.recover_claims(s.landing_dir)\n"  # the claims of killed runs
    "with bulk_connection() as b:\n"
    "    for c in landing.list_chunks(s.landing_dir):\n"
    "        load_chunk(b, c, s)\n"
)
HOLD_LOCK = (
    "import sqlite3, sys, time\n"
    "c = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
    "c.execute('BEGIN IMMEDIATE')\n"
    "print('locked', flush=True)\n"
    "time.sleep(float(sys.argv[2]))\n"
    "c.execute('ROLLBACK')\n"
)


def _db_file(db: Database) -> str:
    return db.url.removeprefix("sqlite:///")


def _hold_lock(db: Database, seconds: float) -> subprocess.Popen[str]:
    # Another *process*: within one process ADBC's SQLite cannot see sqlite3's locks.
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, _db_file(db), str(seconds)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
    return holder


def test_locked_database_fails_retryably_and_keeps_the_chunk(synced: Database) -> None:
    if synced.backend != "sqlite":
        pytest.skip("SQLite's file lock")
    chunk = write_chunk(make_readings(["KhonKaen"], 5), synced.data_dir / "landing", "a.parquet")
    holder = _hold_lock(synced, 5)
    try:
        with bulk_connection() as bulk, pytest.raises(DatabaseUnavailable, match="locked"):
            load_chunk(bulk, chunk, get_settings())
    finally:
        holder.kill()
        holder.wait()
    assert chunk.exists()
    assert not (synced.data_dir / "quarantine").exists() or not any(
        (synced.data_dir / "quarantine").iterdir()
    )
    with bulk_connection() as bulk:
        assert bulk.scalar("SELECT count(*) FROM load_batches") == 0
        report = load_chunk(bulk, chunk, get_settings())  # lock gone: loads normally
    assert report.inserted == 5


@pytest.mark.slow  # a lock holder process and a busy timeout: ~10 s on a loaded host
def test_live_load_leaves_chunks_to_the_sweep_while_the_database_is_locked(
    synced: Database,
) -> None:
    """A capture's live load (`LiveLoader` over the sweep's per-chunk load) against a locked
    database: the first chunk fails after the busy timeout, its claim given back; the next
    one, landed during the pause that follows, is not even tried. Both wait in landing/,
    nothing is stored; once the lock is gone the sweep loads them, each once."""
    if synced.backend != "sqlite":
        pytest.skip("SQLite's file lock")
    from powerwatch.capture.live_load import LiveLoader
    from powerwatch.load import landing
    from tasks.load import load_chunk_task

    landing_dir = synced.data_dir / "landing"
    chunks = [
        write_chunk(make_readings(["KhonKaen"], 5, start=T0 + timedelta(seconds=10 * i)),
                    landing_dir, f"capture-{i}.parquet")
        for i in range(2)
    ]  # fmt: skip
    holder = _hold_lock(synced, 600)
    try:
        loader = LiveLoader(load_chunk_task.fn, pause_seconds=600)
        for chunk in chunks:
            loader.submit(chunk)
        counts = loader.close(wait=60)  # busy timeout 2 s (the fixture's)
    finally:
        holder.kill()
        holder.wait()
    assert (counts.loaded, counts.left) == (0, 2), counts
    assert "locked" in counts.last_error
    assert sorted(landing.list_chunks(landing_dir)) == chunks
    assert not any((landing_dir / ".claimed").glob("*"))
    with bulk_connection() as bulk:
        assert bulk.scalar("SELECT count(*) FROM load_batches") == 0
        reports = [load_chunk(bulk, c, get_settings()) for c in landing.list_chunks(landing_dir)]
        assert [r.inserted for r in reports] == [5, 5]
        assert bulk.scalar("SELECT count(*) FROM power_readings") == 10


def _snapshot(path: str) -> tuple[list[tuple[object, ...]], ...]:
    con = sqlite3.connect(path)
    try:
        return (
            con.execute("SELECT * FROM power_readings ORDER BY station_id, ts").fetchall(),
            con.execute(
                "SELECT id, source_id, input_name, content_hash, status, rows_in, inserted, "
                "duplicates, conflicts, rejected, rejected_by_reason FROM load_batches ORDER BY id"
            ).fetchall(),
            con.execute("SELECT id, kind, reference FROM data_sources ORDER BY id").fetchall(),
            con.execute("SELECT * FROM reading_conflicts ORDER BY id").fetchall(),
        )
    finally:
        con.close()


def _chunks(landing_dir: Path) -> None:
    stations = ["KhonKaen", "ChiangMai", "Songkhla"]
    for i in range(4):
        frame = make_readings(stations, 40_000).with_columns(
            pl.col("timestamp").dt.offset_by(f"{i * 20_000}s")  # half of each overlaps the last
        )
        if i == 2:
            frame = frame.with_columns(pl.col("activePower1") + 1)  # conflicts
        write_chunk(frame, landing_dir, f"chunk-{i}.parquet")
        os.utime(landing_dir / f"chunk-{i}.parquet", ns=(i * 10**9, i * 10**9))


@pytest.mark.slow
def test_kill_9_at_load_points_in_turn_then_rerun_gives_the_same_database_ids_too(
    synced: Database, tmp_path: Path
) -> None:
    """Four chunks (overlaps, conflicts) loaded by runs killed in turn at the load's fault
    points (mid-transaction, after commit before the move, after a claim, after a move),
    then a run that finishes: the database equals that of one uninterrupted run, batch
    ids and conflict rows included. Each kill lands where its point says, never after a
    guessed delay (`powerwatch.core.faults`)."""
    if synced.backend != "sqlite":
        pytest.skip("ids are compared exactly; PostgreSQL sequences do not roll back")
    landing_dir = synced.data_dir / "landing"
    _chunks(landing_dir)
    pristine = tmp_path / "pristine.db"
    subprocess.run(
        [
            sys.executable,
            "-c",
            f"import sqlite3; sqlite3.connect({_db_file(synced)!r})"
            f".backup(sqlite3.connect({str(pristine)!r}))",
        ],
        check=True,
    )
    reference_landing = tmp_path / "reference"
    subprocess.run(["cp", "-a", str(landing_dir), str(reference_landing)], check=True)

    # Uninterrupted run on a copy.
    env = dict(os.environ)
    ref_db = tmp_path / "reference.db"
    subprocess.run(["cp", str(pristine), str(ref_db)], check=True)
    ref_env = env | {
        "POWERWATCH_DATABASE_URL": f"sqlite:///{ref_db}",
        "POWERWATCH_DATA_DIR": str(tmp_path / "refdata"),
    }
    (tmp_path / "refdata").mkdir()
    subprocess.run(
        ["cp", "-a", str(reference_landing), str(tmp_path / "refdata" / "landing")], check=True
    )
    subprocess.run([sys.executable, "-c", LOAD_ALL], env=ref_env, check=True)
    expected = _snapshot(str(ref_db))

    # Interrupted runs, each killed (SIGKILL, by itself) at a named point, then one that ends.
    kills = [
        "load.slice_stored=kill@2",  # mid-transaction: nothing of that chunk committed
        "load.committed=kill",  # committed, still claimed: the next run must not redo it
        "load.claimed=kill@2",  # a claim left behind by a dead loader
        "load.moved=kill",
    ]
    for fault in kills:
        killed = subprocess.run(
            [sys.executable, "-c", LOAD_ALL], env=env | {FAULT_ENV: fault}, timeout=300
        )
        assert killed.returncode == -signal.SIGKILL, fault
    assert subprocess.run([sys.executable, "-c", LOAD_ALL], env=env, timeout=300).returncode == 0
    assert _snapshot(_db_file(synced)) == expected
    assert list(landing_dir.glob("*.parquet")) == []
    assert list((landing_dir / ".claimed").glob("*")) == []
