"""The WAL checkpoint after load and archive runs (db/wal.py): a real SQLite file, a real
second connection holding a snapshot, the loader writing."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from datetime import timedelta
from pathlib import Path

import pytest

from db import wal
from db.engine import bulk_connection
from powerwatch.core.errors import DatabaseUnavailable
from powerwatch.core.settings import get_settings
from powerwatch.load.chunks import load_chunk
from tests.conftest import T0, Database, make_readings, write_chunk

STATIONS = ["KhonKaen", "ChiangMai", "Songkhla"]


def _load(count: int, first: int = 0) -> None:
    settings = get_settings()
    with bulk_connection() as bulk:
        for i in range(first, first + count):
            start = T0 + timedelta(minutes=10 * i)
            chunk = write_chunk(
                make_readings(STATIONS, 600, start), settings.landing_dir, f"{i}.pq"
            )
            chunk = chunk.rename(chunk.with_suffix(".parquet"))
            assert load_chunk(bulk, chunk, settings).status == "loaded"


@contextmanager
def _process(script: str, path: Path) -> Iterator[subprocess.Popen[str]]:
    """`script` run on the database in a process of its own, talked to by stdin/stdout;
    killed if the test leaves it running."""
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdin is not None
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _say(proc: subprocess.Popen[str], line: str) -> None:
    assert proc.stdin is not None
    proc.stdin.write(f"{line}\n")
    proc.stdin.flush()


def _hear(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    return proc.stdout.readline().strip()


# A reader in its own process (as an analyst's session is: two SQLite libraries in one
# process, ADBC's and Python's, would not see each other's POSIX locks). It holds a
# snapshot until told, then reads on, each read on a new snapshot.
READER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN")
print(conn.execute("SELECT count(*) FROM power_readings").fetchone()[0], flush=True)
sys.stdin.readline()
conn.execute("COMMIT")
print(conn.execute("SELECT count(*) FROM power_readings").fetchone()[0], flush=True)
sys.stdin.readline()
"""


def test_the_wal_is_reset_once_no_reader_holds_an_old_snapshot(sqlite_synced: Database) -> None:
    path = Path(sqlite_synced.url.removeprefix("sqlite:///"))
    wal_file = Path(f"{path}-wal")
    settings = get_settings()
    with _process(READER, path) as reader:
        assert _hear(reader) == "0"  # its snapshot: before the loads
        _load(4)
        with bulk_connection() as bulk:
            held = wal.checkpoint(bulk, settings.busy_timeout_ms)
        assert held is not None and not held.truncated and held.copied < held.frames
        assert wal_file.stat().st_size > 0

        _say(reader, "go")
        assert _hear(reader) == str(4 * 1800)  # let go; still connected
        with bulk_connection() as bulk:
            done = wal.checkpoint(bulk, settings.busy_timeout_ms)
        assert wal_file.stat().st_size == 0  # reset while the reader is still connected
        _say(reader, "end")
        assert reader.wait(timeout=30) == 0

    assert done is not None and done.truncated and done.copied == done.frames
    with closing(sqlite3.connect(path)) as check:
        assert check.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert check.execute("SELECT count(*) FROM power_readings").fetchone() == (4 * 1800,)


# Another process that holds the database whole (a writer in exclusive locking mode)
# until told to let go.
LOCKER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("PRAGMA locking_mode=EXCLUSIVE")
conn.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.readline()
conn.execute("COMMIT")
"""


def test_connecting_to_a_locked_database_waits_the_busy_timeout(
    sqlite_synced: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every statement of a connect waits for a lock, the first one too: two loaders
    ending together failed their runs when one's connect met the other's checkpoint."""
    monkeypatch.setenv("POWERWATCH_BUSY_TIMEOUT_MS", "600")
    path = Path(sqlite_synced.url.removeprefix("sqlite:///"))
    with _process(LOCKER, path) as locker:
        assert _hear(locker) == "locked"
        started = time.monotonic()
        with pytest.raises(DatabaseUnavailable), bulk_connection():
            pass
        waited = time.monotonic() - started
        _say(locker, "go")
        assert locker.wait(timeout=30) == 0
    assert waited >= 0.5  # the busy timeout, not an immediate "database is locked"
    with bulk_connection() as bulk:  # the lock gone: connects at once
        assert bulk.scalar("SELECT count(*) FROM stations") > 0
