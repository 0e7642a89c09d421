"""The WAL checkpoint after a load or archive run (db/wal.py)."""

from __future__ import annotations

from typing import Any

from prefect import State, task
from prefect.cache_policies import NO_CACHE

from db import wal
from db.engine import bulk_connection
from powerwatch.core.settings import get_settings
from tasks.outcome import named_failure_as_state


@task(task_run_name="checkpoint the WAL", cache_policy=NO_CACHE)
def checkpoint_wal_task() -> wal.Checkpoint | State[Any] | None:
    """Copy the -wal file back and reset it when no reader holds an old snapshot; never
    waits long (the next run tries again). Nothing on PostgreSQL."""
    settings = get_settings()

    def run() -> wal.Checkpoint | None:
        with bulk_connection(settings.database_url) as bulk:
            return wal.checkpoint(bulk, settings.busy_timeout_ms)

    return named_failure_as_state(run)
