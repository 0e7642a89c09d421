"""Issue a month's energy statement as one Prefect task (retried only while the database
is busy/unreachable: the revision is recorded in one transaction, so a retry is exact)."""

from __future__ import annotations

import polars as pl
from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from db.engine import bulk_connection
from powerwatch.core.settings import get_settings
from powerwatch.rollups.statements import Issued, daily_by_broadcaster, issue_statement
from tasks.retry import retry_when_database_unavailable


@task(
    task_run_name="issue statement {month}",
    retries=5,
    retry_delay_seconds=exponential_backoff(backoff_factor=2),
    retry_jitter_factor=0.5,
    retry_condition_fn=retry_when_database_unavailable,
    cache_policy=NO_CACHE,
)
def issue_statement_task(month: str, tz: str) -> tuple[Issued, pl.DataFrame]:
    """The month's statement (a new revision when it changed) and its daily kWh per
    broadcaster for the chart."""
    settings = get_settings()
    with bulk_connection(settings.database_url) as bulk:
        issued = issue_statement(bulk, month, tz, settings.statements_dir)
        return issued, daily_by_broadcaster(bulk, month, tz)
