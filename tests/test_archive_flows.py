"""The archive and backup flows on a real (temporary) Prefect server, and their CLI."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import cast

import polars as pl
import pytest

from db.engine import bulk_connection
from flows.archive_readings import archive_readings
from flows.backup_database import backup_database
from flows.restore_drill import restore_drill
from powerwatch.archive import writer as archive
from powerwatch.backup import snapshots as backup
from powerwatch.cli import main
from powerwatch.core.settings import get_settings
from powerwatch.load.chunks import load_chunk
from tests.conftest import T0, Database, make_readings, read_artifact, write_chunk

STATIONS = ["KhonKaen", "ChiangMai"]


def _load_days(days: int) -> pl.DataFrame:
    settings = get_settings()
    frame = pl.concat(make_readings(STATIONS, 20, T0 + timedelta(days=k)) for k in range(days))
    with bulk_connection() as bulk:
        load_chunk(bulk, write_chunk(frame, settings.landing_dir, "days.parquet"), settings)
    return frame


@pytest.mark.slow
def test_archive_flow_archives_day_by_day_and_publishes_the_table(
    prefect_server: None, synced: Database
) -> None:
    _load_days(3)

    state = archive_readings(older_than_days=1, return_state=True)

    assert state.is_completed(), state.message
    run = state.result()
    assert isinstance(run, archive.ArchiveRun)
    assert [d.day for d in run.days] == ["2026-11-01"] and run.days[0].archived == 40
    rows = read_artifact("archive-readings")
    assert rows[0]["day"] == "2026-11-01" and rows[-1]["archived"] == 40
    assert _progress("archive-readings-progress") == 100.0
    assert archive.verify_archive(get_settings().archive_dir) == []


def _progress(key: str) -> object:
    """The newest progress artifact's value (a percentage) with this key."""
    return cast(object, read_artifact(key))


@pytest.mark.slow
def test_cli_archive_backup_drill_and_guarded_restore(
    prefect_server: None, synced: Database, capsys: pytest.CaptureFixture[str]
) -> None:
    _load_days(3)
    assert main(["archive", "--older-than", "1"]) == 0
    assert "2026-11-01" in capsys.readouterr().out
    if synced.backend == "postgresql":
        assert main(["backup"]) == 0
        assert restore_drill(return_state=True).is_completed()
        return

    assert main(["backup"]) == 0
    [made] = backup.list_backups(get_settings().backups_dir)
    assert str(made) in capsys.readouterr().out
    assert read_artifact("backup-database")[0]["file"] == made.name
    assert _progress("backup-database-progress") == 100.0

    drill = restore_drill(return_state=True)
    assert drill.is_completed(), drill.message
    assert read_artifact("restore-drill")[0]["result"] == "ok"
    assert _progress("restore-drill-progress") == 100.0

    assert main(["restore", str(made)]) == 2  # the live database is there
    assert "--force" in capsys.readouterr().err
    assert main(["restore", str(made), "--force"]) == 0
    with bulk_connection() as bulk:
        assert bulk.scalar("SELECT count(*) FROM power_readings") == 80  # 2 of 3 days


@pytest.mark.slow
def test_drill_without_any_backup_fails_visibly(
    prefect_server: None, sqlite_database: Database
) -> None:
    state = restore_drill(return_state=True)

    assert state.is_failed() and "no verified backup" in (state.message or "")
    assert read_artifact("restore-drill")[0]["result"] == "FAILED"


@pytest.mark.slow
def test_backup_flow_rotates(
    prefect_server: None, sqlite_database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("POWERWATCH_BACKUP_KEEP_HOURLY", "1")
    monkeypatch.setenv("POWERWATCH_BACKUP_KEEP_DAILY", "1")
    folder: Path = get_settings().backups_dir
    backup.backup_database(sqlite_database.url, folder, now=T0)  # an old one

    manifest = cast(backup.Manifest, backup_database())  # the Completed state's data

    assert [p.name for p in backup.list_backups(folder)] == [manifest.file]


@pytest.mark.slow
def test_retention_flow_deletes_what_the_backup_holds_and_publishes_per_folder(
    prefect_server: None, sqlite_synced: Database
) -> None:
    from flows.apply_retention import apply_retention

    _load_days(1)
    settings = get_settings()
    assert backup_database(return_state=True).is_completed()
    later = make_readings(STATIONS, 5, T0 + timedelta(days=2))
    with bulk_connection() as bulk:
        load_chunk(bulk, write_chunk(later, settings.landing_dir, "later.parquet"), settings)

    state = apply_retention(return_state=True)

    assert state.is_completed(), state.message
    assert sorted(p.name for p in settings.loaded_dir.iterdir()) == ["later.parquet"]
    rows = {str(r["folder"]): r for r in read_artifact("apply-retention")}
    assert rows.keys() == {"quarantine", "failed", "dead-letter", "loaded"}
    assert rows["loaded"]["deleted"] == 1 and rows["loaded"]["kept"] == 1
    assert rows["loaded"]["kept because"] == "1 not in a backup yet"
