"""Flow `migrate-logs`: legacy log files and folders into the database, one task per file.

A file that is no log fails alone; a failure of the whole job (disk full, a damaged
database, an I/O error) ends the run with that one line: every later file would fail
the same way, and nothing of the failing file was stored.

Outcome (docs/design.md, "Log migration"): the final message leads with the inserted
and rejected counts. A run that inserted nothing while it rejected readings (say every
reading of an unknown station) ends Failed with that message, although every file
committed: nothing it was asked to bring in arrived, and green would say it had. A run
that rejected nothing and inserted nothing (all duplicates, all skipped) is Completed.

Progress: the run's progress artifact (`migrate-logs-progress`, percent of the files'
bytes read) is updated at most once a second, and the CLI's terminal bar, when it has
one, hears the same updates (`powerwatch.core.progress`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import State, flow, get_run_logger
from prefect.artifacts import (
    create_markdown_artifact,
    create_table_artifact,
)
from prefect.states import Completed, Failed

from flows.naming import migration_run_name
from powerwatch.core.errors import DatabaseUnavailable, JobError, PowerwatchError
from powerwatch.core.faults import fault_point
from powerwatch.core.progress import JobProgress, Listener
from powerwatch.core.settings import get_settings
from powerwatch.legacy.migration import discover, failed_report
from powerwatch.legacy.parsers import DEFAULT_TZ, check_time_zone
from powerwatch.legacy.report import FileReport, MigrationReport
from powerwatch.load.store import require_schema
from tasks.migrate import ATTEMPTS, import_file_task
from tasks.progress import run_listeners


@flow(name="migrate-logs", flow_run_name=migration_run_name, log_prints=True)
def migrate_logs(paths: list[str], tz: str = DEFAULT_TZ, force: bool = False) -> State:
    """Runbook: check the schema and the zone, find the files, import each in turn (a
    failing file never stops the others), publish the report, fail if any file failed."""
    settings = get_settings()
    try:
        require_schema(settings.database_url, "migrate-logs")
    except PowerwatchError as exc:
        return Failed(message=str(exc), data=exc)
    check_time_zone(tz)
    files = discover(Path(p) for p in paths)
    sizes = [_size(path) for path in files]
    job = JobProgress(sizes, _listeners())
    report = MigrationReport()
    for path, size in zip(files, sizes, strict=True):
        # One file at a time: each import holds the database's write lock, and its
        # parsing already keeps both cores busy.
        state = import_file_task(path, tz, force, job, return_state=True)
        if not state.is_completed():
            error = state.result(raise_on_failure=False)
            if isinstance(error, JobError) and not isinstance(error, DatabaseUnavailable):
                publish(report)
                return Failed(message=str(error), data=error)
        report.files.append(state.result() if state.is_completed() else _failed(path, state))
        job.finish_file(size, report.files[-1].lines)
        fault_point("migrate.recorded")
    publish(report)
    logger = get_run_logger()
    for f in report.failed:
        logger.error("failed: %s", f.error)
    for f in report.rejecting:
        logger.warning("%s: %s", f.verdict, f.warning)
    summary = report.summary()
    if report.failed or report.nothing_inserted_but_rejected:
        # Failed, but still carrying the report: the CLI prints it, the UI shows red.
        return Failed(message=summary, data=report)
    return Completed(message=summary, data=report)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _listeners() -> list[Listener]:
    """The run's progress artifact, and this process's terminal bar if the CLI has one."""
    return run_listeners(
        "migrate-logs-progress",
        "Bytes of the legacy log files read",
        lambda u: f"{u.files_done} of {u.files} files, {u.lines:,} lines read",
    )


def publish(report: MigrationReport) -> None:
    """The report as the run's artifacts: the table of files and the markdown summary."""
    create_table_artifact(
        key="migrate-logs",
        table=report.artifact_rows(),
        description="Per file: lines = non-data + inserted + duplicates + rejected "
        "(non-data, formats, time ranges and errors: migrate-logs-details)",
    )
    create_table_artifact(
        key="migrate-logs-details",
        table=report.detail_rows(),
        description="Per file: format, non-data lines, readings, time range, error",
    )
    create_markdown_artifact(
        key="migrate-logs-summary",
        markdown=report.markdown(),
        description="Totals, failures, unknown stations, first rejected lines quoted",
    )


def _failed(path: Path, state: State[Any]) -> FileReport:
    error = state.result(raise_on_failure=False)
    if isinstance(error, BaseException):
        return failed_report(path, str(error), attempts=getattr(error, ATTEMPTS, 1))
    return failed_report(path, state.message or "failed")
