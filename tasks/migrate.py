"""Import one legacy log file as one Prefect task (one task per file, never per line)."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime.task_run import get_run_count
from prefect.tasks import exponential_backoff

from db.engine import bulk_connection
from powerwatch.core.progress import JobProgress
from powerwatch.core.settings import get_settings
from powerwatch.legacy.migration import import_file
from powerwatch.legacy.report import FileReport
from tasks.retry import retry_when_database_unavailable

PROGRESS_EVERY_LINES = 5_000_000
ATTEMPTS = "powerwatch_attempts"  # attribute of a failed import's exception


@task(
    task_run_name="import {path.name}",
    retries=4,
    retry_delay_seconds=exponential_backoff(backoff_factor=2),
    retry_jitter_factor=0.5,
    retry_condition_fn=retry_when_database_unavailable,
    cache_policy=NO_CACHE,
)
def import_file_task(
    path: Path, tz: str, force: bool, job: JobProgress | None = None
) -> FileReport:
    """Import one file in one transaction. Only a busy or unreachable database is retried
    (with backoff and jitter; nothing of the file is stored before the commit); a file
    that is not a log fails at once with its reason. `job` hears how far the file is."""
    logger = get_run_logger()
    logged = 0
    if job is not None:
        job.start_file(path.name)

    def progress(report: FileReport, bytes_read: int) -> None:
        nonlocal logged
        if job is not None:
            job.advance(bytes_read, report.lines)
        if report.lines - logged >= PROGRESS_EVERY_LINES:
            logged = report.lines
            logger.info(
                "%s: %s lines read, %s inserted",
                path.name,
                f"{report.lines:,}",
                f"{report.inserted:,}",
            )

    try:
        with bulk_connection(get_settings().database_url) as bulk:
            report = import_file(bulk, path, tz=tz, force=force, progress=progress)
    except Exception as exc:
        # The flow reports a failed file's attempts; the server records task runs
        # asynchronously, so the count travels with the exception.
        setattr(exc, ATTEMPTS, get_run_count())
        raise
    report.attempts = get_run_count()
    logger.info(
        "%s: %s inserted, %s rejected, %s duplicates (%s lines): %s",
        path.name,
        f"{report.inserted:,}",
        f"{report.rejected:,}",
        f"{report.duplicates:,}",
        f"{report.lines:,}",
        report.verdict,
    )
    return report
