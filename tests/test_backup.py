"""Backups (powerwatch.backup.snapshots): consistent while a real loader process writes, verified
before they count, rotated, restored only when safe, drilled."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from db.engine import bulk_connection
from powerwatch.backup import snapshots as backup
from powerwatch.core.errors import BackupError, InputError, RestoreRefused
from powerwatch.core.settings import get_settings
from powerwatch.load.chunks import load_chunk
from tests.conftest import T0, Database, make_readings, write_chunk

STATIONS = ["KhonKaen", "ChiangMai", "Songkhla"]
NOW = datetime(2026, 11, 20, 12, 30, tzinfo=UTC)

# Loads every chunk in landing/ one by one (a real second process, as in production,
# where chunks arrive every few seconds: here every 0.2 s).
LOADER = """
import time
from db.engine import bulk_connection
from powerwatch.load import landing
from powerwatch.load.chunks import load_chunk
from powerwatch.core.settings import get_settings
settings = get_settings()
with bulk_connection() as bulk:
    for chunk in landing.list_chunks(settings.landing_dir):
        load_chunk(bulk, chunk, settings)
        time.sleep(0.2)
"""


def _load(seconds: int, start: datetime = T0) -> None:
    settings = get_settings()
    chunk = write_chunk(make_readings(STATIONS, seconds, start), settings.landing_dir, "x.parquet")
    with bulk_connection() as bulk:
        load_chunk(bulk, chunk, settings)


def _counts(path: Path) -> dict[str, object]:
    with closing(sqlite3.connect(path)) as conn:
        return {
            "readings": conn.execute("SELECT count(*) FROM power_readings").fetchone()[0],
            "ledger": conn.execute(
                "SELECT coalesce(sum(inserted), 0) FROM load_batches WHERE status = 'committed'"
            ).fetchone()[0],
            "integrity": conn.execute("PRAGMA integrity_check").fetchone()[0],
        }


def _db_path(db: Database) -> Path:
    return Path(db.url.removeprefix("sqlite:///"))


@pytest.mark.slow
def test_backup_during_a_concurrent_load_restores_consistent(
    sqlite_synced: Database, tmp_path: Path
) -> None:
    settings = get_settings()
    for i in range(12):
        start = T0 + timedelta(seconds=i * 2_000)
        write_chunk(make_readings(STATIONS, 2_000, start), settings.landing_dir, f"c{i:03}.parquet")
    loader = subprocess.Popen([sys.executable, "-c", LOADER])
    try:
        while not settings.loaded_dir.is_dir() or len(list(settings.loaded_dir.iterdir())) < 3:
            assert loader.poll() is None, "the loader finished before the backup started"
            time.sleep(0.05)
        path, manifest = backup.backup_database(sqlite_synced.url, settings.backups_dir)
        still_loading = loader.poll() is None
    finally:
        assert loader.wait(timeout=120) == 0
    # The backup really was taken in the middle of the loads ...
    assert still_loading
    assert 3 * 2_000 * 3 <= manifest.rows["power_readings"] < 12 * 2_000 * 3

    restored = tmp_path / "restored.db"
    backup.restore_database(path, f"sqlite:///{restored}")

    # ... and is one consistent snapshot: every committed batch's rows, nothing half.
    counts = _counts(restored)
    assert counts["integrity"] == "ok"
    assert counts["readings"] == counts["ledger"] == manifest.rows["power_readings"]
    assert counts["readings"] % (2_000 * 3) == 0


def test_backup_is_compressed_with_a_manifest_and_name_order_is_time_order(
    sqlite_synced: Database,
) -> None:
    _load(2_000)
    folder = get_settings().backups_dir
    first, manifest = backup.backup_database(sqlite_synced.url, folder, now=NOW)
    second, _ = backup.backup_database(sqlite_synced.url, folder, now=NOW + timedelta(minutes=1))

    assert first.name == "powerwatch-20261120T123000000000Z.db.zst"
    assert backup.list_backups(folder) == [second, first]
    assert manifest.integrity_check == "ok" and manifest.rows["power_readings"] == 6_000
    assert manifest.bytes < manifest.raw_bytes
    assert manifest.sha256 == backup.file_sha256(first)
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [first.name, f"{first.name}.json", second.name, f"{second.name}.json"]
    )


def test_backup_tells_its_progress_in_bytes_copied(
    sqlite_synced: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    from powerwatch.core.progress import Update

    _load(20_000)
    monkeypatch.setattr(backup, "COPY_PAGES", 16)  # several steps on a small database
    got: list[Update] = []
    backup.backup_database(sqlite_synced.url, get_settings().backups_dir, listeners=[got.append])

    assert got and got[-1].percent == 100.0 and got[-1].unit == "bytes"
    assert got[-1].done_bytes == got[-1].total_bytes == sqlite_synced_size(sqlite_synced)
    assert [u.done_bytes for u in got] == sorted(u.done_bytes for u in got)


def sqlite_synced_size(db: Database) -> int:
    """The database's pages in bytes (what the snapshot copies)."""
    with closing(sqlite3.connect(db.url.removeprefix("sqlite:///"))) as conn:
        size = conn.execute("PRAGMA page_count").fetchone()[0]
        return int(size) * int(conn.execute("PRAGMA page_size").fetchone()[0])


def test_restore_refuses_a_live_database_unless_forced(sqlite_synced: Database) -> None:
    _load(100)
    path, _ = backup.backup_database(sqlite_synced.url, get_settings().backups_dir, now=NOW)
    _load(50, T0 + timedelta(hours=1))  # the live database moves on
    live = _db_path(sqlite_synced)

    with pytest.raises(RestoreRefused, match="--force"):
        backup.restore_database(path, sqlite_synced.url)
    assert _counts(live)["readings"] == 450
    assert [p.name for p in live.parent.iterdir() if ".restore-" in p.name] == []

    backup.restore_database(path, sqlite_synced.url, force=True)

    assert _counts(live) == {"readings": 300, "ledger": 300, "integrity": "ok"}
    with bulk_connection() as bulk:  # and the engine's connections see the restored data
        assert bulk.scalar("SELECT count(*) FROM power_readings") == 300


def test_a_damaged_or_unrecorded_backup_is_not_restored(
    sqlite_synced: Database, tmp_path: Path
) -> None:
    _load(100)
    folder = get_settings().backups_dir
    path, _ = backup.backup_database(sqlite_synced.url, folder, now=NOW)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    target = tmp_path / "new.db"

    # An operator's file that is not a valid backup is bad input (exit 2), refused.
    with pytest.raises(InputError, match="checksum differs"):
        backup.restore_database(path, f"sqlite:///{target}")
    assert not target.exists()
    with pytest.raises(BackupError, match="checksum differs"):  # the system's own: a failure
        backup.verify_backup(path)

    backup.manifest_of(path).unlink()
    assert backup.list_backups(folder) == []
    with pytest.raises(InputError, match="no manifest"):
        backup.restore_database(path, f"sqlite:///{target}")
    with pytest.raises(InputError, match="no such backup"):
        backup.restore_database(folder / "nope.db.zst", f"sqlite:///{target}")


def test_rotation_keeps_the_newest_per_hour_and_per_day(sqlite_synced: Database) -> None:
    _load(10)
    folder = get_settings().backups_dir
    moments = [NOW - timedelta(minutes=20 * i) for i in range(9)]  # 3 hours, 3 per hour
    moments += [NOW - timedelta(days=d, hours=3) for d in (1, 2, 3, 4)]
    for moment in moments:
        backup.backup_database(sqlite_synced.url, folder, now=moment)

    removed = backup.rotate_backups(folder, keep_hourly=2, keep_daily=3)

    kept = {backup.backup_time(p) for p in backup.list_backups(folder)}
    assert kept == {
        NOW,  # newest of 12:xx (hourly and daily for 11-20)
        NOW - timedelta(minutes=40),  # newest of 11:xx
        NOW - timedelta(days=1, hours=3),  # newest of 11-19
        NOW - timedelta(days=2, hours=3),  # newest of 11-18
    }
    assert len(removed) == len(moments) - 4
    assert {p.name for p in folder.iterdir()} == {
        n for p in backup.list_backups(folder) for n in (p.name, f"{p.name}.json")
    }


def test_restore_drill_restores_the_newest_to_a_temporary_path(sqlite_synced: Database) -> None:
    folder = get_settings().backups_dir
    with pytest.raises(BackupError, match="no verified backup"):
        backup.restore_drill(folder)
    _load(100)
    backup.backup_database(sqlite_synced.url, folder, now=NOW - timedelta(hours=1))
    _load(10, T0 + timedelta(hours=1))
    newest, _ = backup.backup_database(sqlite_synced.url, folder, now=NOW)

    report = backup.restore_drill(folder, now=NOW + timedelta(hours=2))

    assert (report.backup, report.age_hours) == (newest.name, 2.0)
    assert report.rows["power_readings"] == 330
    assert "row counts match" in report.check
    assert _counts(_db_path(sqlite_synced))["readings"] == 330  # the live database untouched


def test_postgresql_backup_is_a_verified_pg_dump(synced: Database) -> None:
    if synced.backend != "postgresql":
        pytest.skip("pg_dump (the SQLite backups are the tests above)")
    _load(100)
    folder = get_settings().backups_dir

    path, manifest = backup.backup_database(synced.url, folder, now=NOW)

    assert path.name.endswith(".pgdump") and manifest.kind == "postgresql"
    assert manifest.rows["power_readings"] == 300
    assert manifest.integrity_check.startswith("pg_restore --list ok")
    assert backup.verify_backup(path).sha256 == manifest.sha256
    assert backup.restore_drill(folder).backup == path.name
    with pytest.raises(RestoreRefused, match=r"holds \d+ table"):
        backup.restore_database(path, synced.url)  # the live schema: refused unless forced
