"""Backup tasks: take one verified backup, rotate, drill a restore."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import State, task
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from powerwatch.backup import replay
from powerwatch.backup import snapshots as backup
from powerwatch.core.settings import get_settings
from tasks.outcome import named_failure_as_state
from tasks.progress import run_listeners
from tasks.retry import retry_when_database_unavailable


@task(
    task_run_name="backup database",
    retries=3,
    retry_delay_seconds=exponential_backoff(backoff_factor=2),
    retry_condition_fn=retry_when_database_unavailable,
    cache_policy=NO_CACHE,
)
def backup_database_task() -> tuple[Path, backup.Manifest] | State[Any]:
    """One online backup; it counts only once its checks passed and its manifest exists.
    A named failure (disk full) is the Failed state with its one line."""
    settings = get_settings()
    listeners = run_listeners(
        "backup-database-progress",
        "Bytes of the database copied into the snapshot (SQLite; pg_dump tells none)",
        lambda u: f"{u.done_bytes / 1e6:,.1f} of {u.total_bytes / 1e6:,.1f} MB copied",
    )
    return named_failure_as_state(
        lambda: backup.backup_database(
            settings.database_url, settings.backups_dir, listeners=listeners
        )
    )


@task(task_run_name="rotate backups", cache_policy=NO_CACHE)
def rotate_backups_task() -> list[str] | State[Any]:
    settings = get_settings()
    return named_failure_as_state(
        lambda: backup.rotate_backups(
            settings.backups_dir, settings.backup_keep_hourly, settings.backup_keep_daily
        )
    )


@task(task_run_name="restore drill", cache_policy=NO_CACHE)
def restore_drill_task() -> replay.DrillResult:
    """Restore the newest backup beside the data, replay the chunks loaded since, and
    compare the last day's readings per station (count, checksum) with the live database."""
    listeners = run_listeners(
        "restore-drill-progress",
        "Chunks loaded since the backup, replayed into the restored copy",
        lambda u: f"{u.files_done} of {u.files} chunks, {u.lines:,} readings replayed",
    )
    return replay.restore_drill(get_settings(), listeners=listeners)
