"""Flow `archive-readings`: readings older than the retention into the Parquet archive."""

from __future__ import annotations

from datetime import date
from typing import cast

from prefect import State, flow, get_run_logger
from prefect.artifacts import create_table_artifact
from prefect.states import Completed, Failed

from db.engine import make_engine
from db.migrate import require_current
from flows.naming import stamped
from powerwatch.archive import writer as archive
from powerwatch.core.diskguard import low_space
from powerwatch.core.errors import DiskFull, InputError, StorageError
from powerwatch.core.progress import JobProgress
from powerwatch.core.settings import get_settings
from tasks.archive import archive_day_task, plan_archive_task, reclaim_space_task
from tasks.progress import run_listeners
from tasks.wal import checkpoint_wal_task


@flow(name="archive-readings", flow_run_name=stamped("archive-readings"), log_prints=True)
def archive_readings(older_than_days: int | None = None) -> State:
    """Runbook: check the schema, find the cut-off, archive day by day, give the space
    back, publish the table; fail (visibly) if any day stayed in the database.

    A full disk or a storage error stops the run at once with its one line (every
    further day would meet it too); a day that could not be archived safely is kept
    and the run goes on."""
    settings = get_settings()
    if (low := low_space(settings, "archive")) is not None:
        return Failed(message=str(low), data=low)
    days_kept = settings.retention_days if older_than_days is None else older_than_days
    if days_kept < 0:
        bad = InputError(f"archive retention must not be negative (got {days_kept} days)")
        return Failed(message=str(bad), data=bad)
    require_current(make_engine(settings.database_url))
    planned = plan_archive_task(days_kept, return_state=True)
    if not planned.is_completed():
        return Failed(message=planned.message, data=planned.result(raise_on_failure=False))
    cutoff, days = cast(tuple[archive.Cutoff, list[date]], planned.result())
    reports: list[archive.DayReport] = []
    failed: list[str] = []
    progress = JobProgress(
        [1] * len(days),
        run_listeners(
            "archive-readings-progress",
            "Days archived before the cut-off",
            lambda u: f"{u.files_done} of {u.files} days, {u.lines:,} readings archived",
        ),
        unit="days",
        counted="readings",
    )
    for day in days:
        progress.start_file(str(day))
        state = archive_day_task(day, return_state=True)
        if state.is_completed():
            reports.append(cast(archive.DayReport, state.result()))
            progress.finish_file(1, reports[-1].archived)
            continue
        progress.finish_file(1, 0)
        error = state.result(raise_on_failure=False)
        if isinstance(error, DiskFull | StorageError):  # every further day would meet it
            return Failed(message=str(error), data=error)
        line = str(error) if isinstance(error, Exception) else "failed"
        failed.append(line if line.startswith(str(day)) else f"{day}: {line}")
    progress.finish()
    reclaimed = reclaim_space_task() if reports else None
    checkpoint_wal_task()  # also when nothing was archived: a load's WAL left behind
    run = archive.ArchiveRun(cutoff, reports, failed, reclaimed)
    create_table_artifact(
        key="archive-readings",
        table=archive.summary_rows(run),
        description=f"cut-off {cutoff.before:%Y-%m-%d} (reference "
        f"{cutoff.reference:%Y-%m-%d %H:%M} UTC): {len(reports)} day(s) archived, "
        f"{len(failed)} kept",
    )
    logger = get_run_logger()
    for line in failed:
        logger.error(line)
    if failed:
        return Failed(
            message=f"{len(failed)} day(s) could not be archived; first: {failed[0]}", data=run
        )
    return Completed(message=f"{len(reports)} day(s) archived", data=run)
