"""Restore = snapshot + replay of the loaded chunks since (powerwatch.backup.replay): the restored
database equals the live one exactly, also when an archive ran in between."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest
import sqlalchemy

from db.engine import bulk_connection
from powerwatch.archive import writer as archive
from powerwatch.backup import replay
from powerwatch.backup import snapshots as backup
from powerwatch.core.errors import BackupError
from powerwatch.core.progress import Update
from powerwatch.core.settings import get_settings
from powerwatch.load.chunks import load_chunk
from tests.conftest import PG_BASE, T0, Database, make_readings, write_chunk

STATIONS = ["KhonKaen", "ChiangMai", "Songkhla"]
OLD = T0 - timedelta(days=200)  # older than the 90-day retention: archived in between

TABLES = {
    "power_readings": "station_id, ts",
    "reading_conflicts": "station_id, ts, batch_id",
    "load_batches": "id",
    "data_sources": "id",
}
LEDGER = "id, input_name, content_hash, status, rows_in, inserted, duplicates, conflicts, "
LEDGER += "rejected, rejected_by_reason"


def _load(name: str, frame: pl.DataFrame) -> None:
    settings = get_settings()
    with bulk_connection() as bulk:
        report = load_chunk(bulk, write_chunk(frame, settings.landing_dir, name), settings)
    assert report.status == "loaded", report


def _content(url: str) -> dict[str, pl.DataFrame]:
    with bulk_connection(url) as bulk:
        return {
            "power_readings": bulk.frame("SELECT * FROM power_readings ORDER BY station_id, ts"),
            "reading_conflicts": bulk.frame(
                "SELECT station_id, ts, batch_id, stored_values, incoming_values "
                "FROM reading_conflicts ORDER BY station_id, ts, batch_id"
            ),
            "load_batches": bulk.frame(f"SELECT {LEDGER} FROM load_batches ORDER BY id"),
        }


@pytest.fixture
def empty_target(database: Database, tmp_path: Path) -> Iterator[str]:
    """An empty database of the same backend to restore into (PostgreSQL: a new database
    on the same server; the dump creates its schema there)."""
    if database.backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'restored.db'}"
        return
    name = f"restore_{uuid.uuid4().hex[:10]}"
    admin = sqlalchemy.create_engine(PG_BASE, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sqlalchemy.text(f"CREATE DATABASE {name}"))
    base = sqlalchemy.make_url(database.url)
    yield base.set(database=name).render_as_string(hide_password=False)
    with admin.connect() as conn:
        conn.execute(sqlalchemy.text(f"DROP DATABASE {name} WITH (FORCE)"))
    admin.dispose()


@pytest.mark.slow
def test_restore_is_the_snapshot_plus_every_chunk_since_minus_the_archive(
    synced: Database, empty_target: str
) -> None:
    settings = get_settings()
    recent = make_readings(STATIONS, 30, T0)
    _load("a-old.parquet", make_readings(STATIONS, 30, OLD))
    _load("b-recent.parquet", recent)
    snapshot, _ = backup.backup_database(synced.url, settings.backups_dir)

    # Since the snapshot: new readings; a late reading of the old day; a re-sent duplicate
    # and a conflicting value (the first stored wins, the conflict is recorded); a row
    # stamped in the future (rejected into quarantine).
    _load("c-new.parquet", make_readings(STATIONS, 20, T0 + timedelta(minutes=5)))
    late = make_readings(["KhonKaen"], 5, OLD + timedelta(hours=3))
    _load("d-late-old.parquet", late)
    with bulk_connection() as bulk:
        done = archive.archive_readings(bulk, settings.archive_dir, settings.retention_days)
    assert [d.day for d in done.days] == [OLD.date().isoformat()] and not done.failed
    conflict = recent.head(2).with_columns(pl.lit(-1.0).alias("activePower1"))
    future = make_readings(["Songkhla"], 1, datetime.now(UTC) + timedelta(days=2))
    _load("e-after-archive.parquet", pl.concat([recent.slice(5, 3), conflict, future]))
    quarantined = sorted(p.name for p in settings.quarantine_dir.iterdir())
    live = _content(synced.url)
    assert live["reading_conflicts"].height == 2
    assert live["power_readings"].height == 3 * 30 + 3 * 20  # the old day is archived

    restored, replayed = replay.restore(snapshot, empty_target, settings)

    assert restored.rows["power_readings"] == 2 * 3 * 30
    assert (replayed.in_snapshot, replayed.replayed, replayed.unreadable) == (2, 3, [])
    assert replayed.archived_dropped == 3 * 30 + 5  # the snapshot's and the late chunk's
    again = _content(empty_target)
    for table, frame in live.items():
        assert again[table].equals(frame), table
    # loaded/ and quarantine/ were only read: the replay's moves happened elsewhere.
    assert sorted(p.name for p in settings.loaded_dir.iterdir()) == [
        "a-old.parquet",
        "b-recent.parquet",
        "c-new.parquet",
        "d-late-old.parquet",
        "e-after-archive.parquet",
    ]
    assert sorted(p.name for p in settings.quarantine_dir.iterdir()) == quarantined
    assert [p.name for p in settings.data_dir.iterdir() if p.name.startswith(".replay")] == []


def test_restore_refuses_a_damaged_snapshot_and_replays_nothing(
    sqlite_synced: Database, tmp_path: Path
) -> None:
    settings = get_settings()
    _load("a.parquet", make_readings(STATIONS, 10, T0))
    snapshot, _ = backup.backup_database(sqlite_synced.url, settings.backups_dir)
    with open(snapshot, "r+b") as handle:
        handle.seek(100)
        handle.write(b"\0" * 16)
    target = tmp_path / "restored.db"

    with pytest.raises(Exception, match="checksum differs"):
        replay.restore(snapshot, f"sqlite:///{target}", settings)

    assert not target.exists()


def test_the_drill_compares_the_restored_last_day_with_the_live_one(synced: Database) -> None:
    """On PostgreSQL the drill restores into a scratch database it creates and drops."""
    settings = get_settings()
    now = T0 + timedelta(hours=1)
    _load("a.parquet", make_readings(STATIONS, 30, T0))
    backup.backup_database(synced.url, settings.backups_dir)
    _load("b.parquet", make_readings(STATIONS, 30, T0 + timedelta(minutes=1)))
    _load("c-outside.parquet", make_readings(STATIONS, 5, now + timedelta(minutes=1)))

    before = _drill_databases() if synced.backend == "postgresql" else set()
    got: list[Update] = []
    result = replay.restore_drill(settings, now, listeners=[got.append])

    assert result.differ == [] and result.replay.replayed == 2  # b, and c (outside the window)
    # a (in the snapshot already), b and c: the readings b and c inserted
    assert (got[-1].files_done, got[-1].files, got[-1].percent) == (3, 3, 100.0)
    assert got[-1].lines == 90 + 15 and got[-1].counted == "readings"
    assert {name: t.readings for name, t in result.stations.items()} == dict.fromkeys(STATIONS, 60)
    assert result.window == ((now - timedelta(days=1)).isoformat(), now.isoformat())

    (settings.loaded_dir / "b.parquet").unlink()  # a chunk since the snapshot is lost

    with pytest.raises(BackupError, match="KhonKaen: live 60 readings, restored 30"):
        replay.restore_drill(settings, now)
    if synced.backend == "postgresql":  # no scratch database left behind, failed or not
        # Other workers' drills use the same server and name pattern: a scratch database
        # of theirs may exist right now, for the seconds their drill lasts. A leak stays.
        deadline = time.monotonic() + 60
        while (left := _drill_databases() - before) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert left == set()


def _drill_databases() -> set[str]:
    """The restore drills' scratch databases on the test server (`<name>_drill_<random>`)."""
    admin = sqlalchemy.create_engine(PG_BASE)
    with admin.connect() as conn:
        rows = conn.execute(
            sqlalchemy.text("SELECT datname FROM pg_database WHERE datname LIKE '%\\_drill\\_%'")
        ).all()
    admin.dispose()
    return {str(name) for (name,) in rows}


def test_the_drill_notices_a_changed_value(sqlite_synced: Database) -> None:
    settings = get_settings()
    now = T0 + timedelta(hours=1)
    _load("a.parquet", make_readings(STATIONS, 30, T0))
    backup.backup_database(sqlite_synced.url, settings.backups_dir)
    with bulk_connection() as bulk:  # the live database changed behind the ledger's back
        bulk.execute(
            "UPDATE power_readings SET active_power1 = 0 "
            "WHERE ts = (SELECT max(ts) FROM power_readings)"
        )

    with pytest.raises(BackupError, match="checksums differ"):
        replay.restore_drill(settings, now)


def test_the_drill_waits_for_a_chunk_committed_but_not_yet_moved(
    sqlite_synced: Database,
) -> None:
    """A loader commits, then moves its chunk out of its claim: a drill starting in
    between must wait for the move, not report the chunk's readings as lost."""
    from powerwatch.load import landing

    settings = get_settings()
    now = T0 + timedelta(hours=1)
    _load("a.parquet", make_readings(STATIONS, 30, T0))
    backup.backup_database(sqlite_synced.url, settings.backups_dir)
    _load("b.parquet", make_readings(STATIONS, 30, T0 + timedelta(minutes=1)))
    # b as a live loader leaves it between commit and move: in its claim, committed.
    back = settings.landing_dir / "b.parquet"
    (settings.loaded_dir / "b.parquet").rename(back)
    in_claim = landing.claim(back)
    assert in_claim is not None
    looks: list[int] = []

    def loader_moves_it() -> None:  # the drill found it in the claim: now the move lands
        looks.append(1)
        if in_claim.exists():
            in_claim.rename(settings.loaded_dir / "b.parquet")

    result = replay.restore_drill(settings, now, waiting=loader_moves_it)

    assert looks, "the drill did not wait for the committed chunk"
    assert result.differ == [] and result.replay.replayed == 1
