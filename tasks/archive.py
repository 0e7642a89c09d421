"""Archive tasks: plan the run, one task per UTC day (never per row), give space back."""

from __future__ import annotations

from datetime import date
from typing import Any

from prefect import State, task
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from db.engine import bulk_connection
from powerwatch.archive import writer as archive
from powerwatch.core.settings import get_settings
from tasks.outcome import named_failure_as_state
from tasks.retry import retry_when_database_unavailable


@task(task_run_name="plan archive older than {retention_days} days", cache_policy=NO_CACHE)
def plan_archive_task(retention_days: int) -> tuple[archive.Cutoff, list[date]] | State[Any]:
    """The cut-off (clock witnessed by the data) and the days before it that hold readings;
    first, under the archive lock, what crashed runs left behind is cleaned up."""
    settings = get_settings()

    def plan() -> tuple[archive.Cutoff, list[date]]:
        with bulk_connection(settings.database_url) as bulk:
            return archive.plan_run(bulk, settings.archive_dir, retention_days)

    return named_failure_as_state(plan)


@task(
    task_run_name="archive {day}",
    retries=5,
    retry_delay_seconds=exponential_backoff(backoff_factor=2),
    retry_jitter_factor=0.5,
    retry_condition_fn=retry_when_database_unavailable,
    cache_policy=NO_CACHE,
)
def archive_day_task(day: date) -> archive.DayReport | State[Any]:
    """Write, verify and record one day's file, then delete its rows in one transaction.
    A busy database is retried; the steps are safe to repeat (a re-run merges). A named
    failure (disk full, a day kept) is the Failed state with its one line."""
    settings = get_settings()

    def one_day() -> archive.DayReport:
        with bulk_connection(settings.database_url) as bulk:
            return archive.archive_day(bulk, settings.archive_dir, day)

    return named_failure_as_state(one_day)


@task(
    task_run_name="reclaim space",
    retries=3,
    retry_delay_seconds=exponential_backoff(backoff_factor=2),
    retry_condition_fn=retry_when_database_unavailable,
    cache_policy=NO_CACHE,
)
def reclaim_space_task() -> archive.Reclaimed:
    """Freed pages back in small steps, so loads are never blocked for long."""
    with bulk_connection(get_settings().database_url) as bulk:
        return archive.reclaim_space(bulk)
