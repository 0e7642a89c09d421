"""Refresh the rollups as one Prefect task (it batches internally; never a task per hour)."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from db.engine import bulk_connection
from powerwatch.core.settings import get_settings
from powerwatch.rollups.refresh import RefreshResult, refresh_rollups
from tasks.retry import retry_when_database_unavailable


@task(
    task_run_name="refresh rollups",
    retries=5,
    retry_delay_seconds=exponential_backoff(backoff_factor=2),
    retry_jitter_factor=0.5,
    retry_condition_fn=retry_when_database_unavailable,
    cache_policy=NO_CACHE,
)
def refresh_rollups_task() -> RefreshResult:
    """Recompute every queued station-hour and its day; a busy/unreachable database is
    retried with backoff (each batch commits on its own, so a retry only does what is left)."""
    with bulk_connection(get_settings().database_url) as bulk:
        return refresh_rollups(bulk)
