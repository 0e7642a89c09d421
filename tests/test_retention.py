"""Retention of the data folders (powerwatch.retention.prune): what goes, and what must stay."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from db.engine import bulk_connection
from powerwatch.archive import writer as archive
from powerwatch.backup import snapshots as backup
from powerwatch.core.settings import Settings, get_settings
from powerwatch.load.chunks import load_chunk
from powerwatch.retention import prune as retention
from tests.conftest import T0, Database, make_readings, write_chunk

STATIONS = ["KhonKaen", "ChiangMai", "Songkhla"]
NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


def _age(path: Path, days: float) -> None:
    moment = (NOW - timedelta(days=days)).timestamp()
    os.utime(path, (moment, moment), follow_symlinks=False)


def _land_and_load(name: str, start: datetime, seconds: int = 60) -> Path:
    settings = get_settings()
    chunk = write_chunk(make_readings(STATIONS, seconds, start), settings.landing_dir, name)
    with bulk_connection() as bulk:
        report = load_chunk(bulk, chunk, settings)
    assert report.status == "loaded" and report.inserted == seconds * len(STATIONS)
    return settings.loaded_dir / name


def _loaded() -> list[str]:
    return sorted(p.name for p in get_settings().loaded_dir.iterdir())


def _run(settings: Settings) -> retention.RetentionRun:
    with bulk_connection() as bulk:
        return retention.apply_retention(bulk, settings)


def test_rejects_older_than_the_retention_are_deleted_young_ones_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("POWERWATCH_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("POWERWATCH_REJECTS_RETENTION_DAYS", "30")
    settings = get_settings()
    ages = {
        settings.quarantine_dir / "old.parquet": 31,
        settings.quarantine_dir / "young.parquet": 29,
        settings.failed_dir / "bad.parquet": 40,
        settings.failed_dir / "bad.parquet.reason.txt": 40,
        settings.failed_dir / "recent.parquet": 1,
        settings.failed_dir / "recent.parquet.reason.txt": 45,  # goes with its chunk
        settings.dead_letter_dir / "capture-old.jsonl": 30.01,
        settings.dead_letter_dir / "capture-now.jsonl": 0,
    }
    for path, days in ages.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * 10)
        _age(path, days)
    aside = settings.failed_dir / "a-directory.parquet"  # a non-file set aside from landing/
    (aside / "inner").mkdir(parents=True)
    (aside / "inner" / "f").write_bytes(b"y")
    _age(aside, 60)

    reports = {r.folder: r for r in retention.expire_rejects(settings, NOW)}

    left = sorted(str(p.relative_to(settings.data_dir)) for p in settings.data_dir.rglob("*"))
    assert left == [
        "dead-letter",
        "dead-letter/capture-now.jsonl",
        "failed",
        "failed/recent.parquet",
        "failed/recent.parquet.reason.txt",
        "quarantine",
        "quarantine/young.parquet",
    ]
    assert (reports["quarantine"].deleted, reports["quarantine"].kept) == (1, 1)
    assert (reports["failed"].deleted, reports["failed"].kept) == (2, 1)
    assert reports["failed"].bytes == 10 + 10 + 1  # chunk, its reason, the directory's file
    assert (reports["dead-letter"].deleted, reports["dead-letter"].kept) == (1, 1)


def test_a_loaded_chunk_goes_only_once_a_verified_backup_holds_it(synced: Database) -> None:
    settings = get_settings()
    first = _land_and_load("capture-a.parquet", T0)
    _land_and_load("capture-b.parquet", T0 + timedelta(minutes=1))

    nothing = _run(settings)  # no backup at all yet: every chunk is needed
    assert _loaded() == ["capture-a.parquet", "capture-b.parquet"]
    assert nothing.folders[-1].kept_by_reason == {retention.KEEP_NO_BACKUP: 2}

    backup.backup_database(synced.url, settings.backups_dir)
    _land_and_load("capture-c.parquet", T0 + timedelta(minutes=2))  # after the snapshot
    first.with_name("capture-a.parquet.1").write_bytes(b"set aside by hand")

    run = _run(settings)

    assert _loaded() == ["capture-a.parquet.1", "capture-c.parquet"]
    loaded = run.folders[-1]
    assert loaded.folder == "loaded" and loaded.deleted == 2
    assert loaded.kept_by_reason == {
        retention.KEEP_NO_BACKUP: 1,
        "not a chunk (set aside by hand?)": 1,
    }
    with bulk_connection() as bulk:  # the ledger keeps every batch's counts
        assert bulk.scalar("SELECT count(*) FROM load_batches WHERE status = 'committed'") == 3


def test_a_chunk_whose_content_differs_from_the_ledger_stays(sqlite_synced: Database) -> None:
    settings = get_settings()
    chunk = _land_and_load("capture-a.parquet", T0)
    backup.backup_database(sqlite_synced.url, settings.backups_dir)
    write_chunk(make_readings(STATIONS, 5, T0), settings.loaded_dir, chunk.name)  # replaced

    run = _run(settings)

    assert _loaded() == ["capture-a.parquet"]
    assert run.folders[-1].kept_by_reason == {retention.KEEP_NO_LEDGER: 1}


def test_old_readings_stay_in_their_chunk_until_the_archive_has_them(
    sqlite_synced: Database,
) -> None:
    settings = get_settings()
    old = T0 - timedelta(days=200)
    _land_and_load("capture-old.parquet", old)
    _land_and_load("capture-new.parquet", T0)
    backup.backup_database(sqlite_synced.url, settings.backups_dir)

    before = _run(settings)  # in the backup, but older than the cut-off and not archived

    assert _loaded() == ["capture-old.parquet"]
    assert before.folders[-1].kept_by_reason == {retention.KEEP_ARCHIVE: 1}
    with bulk_connection() as bulk:
        done = archive.archive_readings(bulk, settings.archive_dir, settings.retention_days)
    assert [d.day for d in done.days] == [old.date().isoformat()] and not done.failed

    _run(settings)

    assert _loaded() == []


def test_after_a_restore_of_an_older_backup_no_backup_covers_anything(
    sqlite_synced: Database,
) -> None:
    settings = get_settings()
    _land_and_load("capture-a.parquet", T0)
    older, _ = backup.backup_database(
        sqlite_synced.url, settings.backups_dir, NOW - timedelta(hours=2)
    )
    _land_and_load("capture-b.parquet", T0 + timedelta(minutes=1))
    backup.backup_database(sqlite_synced.url, settings.backups_dir, NOW - timedelta(hours=1))
    backup.restore_database(older, sqlite_synced.url, force=True)
    # The restored ledger ends at capture-a; the next batch reuses the id capture-b had.
    _land_and_load("capture-c.parquet", T0 + timedelta(minutes=2))

    run = _run(settings)

    assert _loaded() == ["capture-a.parquet", "capture-b.parquet", "capture-c.parquet"]
    assert run.folders[-1].kept_by_reason == {retention.KEEP_OTHER_HISTORY: 3}


def test_the_started_prefect_server_vacuums_its_history_and_events(
    prefect_api: str, tmp_path: Path
) -> None:
    """The session's server was started by LocalStack with the defaults; its own
    settings (the admin API) say what its db_vacuum service deletes, and when."""
    import httpx

    from powerwatch.site.stack import LocalStack

    served = httpx.get(f"{prefect_api}/admin/settings", timeout=30).json()["server"]
    vacuum = served["services"]["db_vacuum"]
    defaults = Settings()
    assert set(vacuum["enabled"]) == {"events", "flow_runs"}
    assert _days(vacuum["retention_period"]) == defaults.prefect_history_days
    assert _days(served["events"]["retention_period"]) == defaults.prefect_events_days
    heartbeats = vacuum["event_retention_overrides"]["prefect.flow-run.heartbeat"]
    assert _days(heartbeats) == 1
    assert defaults.prefect_history_days >= 2  # yesterday's failed run is still there

    env = LocalStack(tmp_path, history_days=30, events_days=3).environment()
    assert env["PREFECT_SERVER_SERVICES_DB_VACUUM_RETENTION_PERIOD"] == "P30D"
    assert env["PREFECT_SERVER_EVENTS_RETENTION_PERIOD"] == "P3D"


def _days(duration: object) -> float:
    from pydantic import TypeAdapter

    return TypeAdapter(timedelta).validate_python(duration) / timedelta(days=1)
