"""Flow `archive-readings`: readings older than the retention into the Parquet archive."""

from __future__ import annotations

from prefect import State, flow, get_run_logger
from prefect.artifacts import create_table_artifact
from prefect.states import Completed, Failed

from db.engine import make_engine
from db.migrate import require_current
from flows.naming import stamped
from powerwatch import archive
from powerwatch.settings import get_settings
from tasks.archive import archive_day_task, plan_archive_task, reclaim_space_task


@flow(name="archive-readings", flow_run_name=stamped("archive-readings"), log_prints=True)
def archive_readings(older_than_days: int | None = None) -> State:
    """Runbook: check the schema, find the cut-off, archive day by day, give the space
    back, publish the table; fail (visibly) if any day stayed in the database."""
    settings = get_settings()
    require_current(make_engine(settings.database_url))
    days_kept = settings.retention_days if older_than_days is None else older_than_days
    cutoff, days = plan_archive_task(days_kept)
    reports: list[archive.DayReport] = []
    failed: list[str] = []
    for day in days:
        state = archive_day_task(day, return_state=True)
        if state.is_completed():
            reports.append(state.result())
        else:
            failed.append(f"{day}: {state.message or 'failed'}")
    reclaimed = reclaim_space_task() if reports else None
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
        return Failed(message=f"{len(failed)} day(s) could not be archived", data=run)
    return Completed(message=f"{len(reports)} day(s) archived", data=run)
