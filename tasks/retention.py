"""Retention tasks: expire the rejects' folders, and the loaded chunks nothing needs."""

from __future__ import annotations

from typing import Any

from prefect import State, task
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from db.engine import bulk_connection
from powerwatch.core.settings import get_settings
from powerwatch.retention import prune as retention
from tasks.outcome import named_failure_as_state
from tasks.retry import retry_when_database_unavailable


@task(task_run_name="expire quarantine, failed, dead-letter", cache_policy=NO_CACHE)
def expire_rejects_task() -> list[retention.FolderReport] | State[Any]:
    """Files older than `rejects_retention_days` go; their counts stay in the ledger."""
    return named_failure_as_state(lambda: retention.expire_rejects(get_settings()))


@task(
    task_run_name="expire loaded chunks",
    retries=3,
    retry_delay_seconds=exponential_backoff(backoff_factor=2),
    retry_condition_fn=retry_when_database_unavailable,
    cache_policy=NO_CACHE,
)
def expire_loaded_task() -> retention.FolderReport | State[Any]:
    """Loaded chunks the newest verified backup (and, for old readings, the archive)
    holds go; the others stay, counted by reason. Safe to repeat."""
    settings = get_settings()

    def expire() -> retention.FolderReport:
        with bulk_connection(settings.database_url) as bulk:
            return retention.expire_loaded(bulk, settings)

    return named_failure_as_state(expire)
