"""Flow `migrate-logs`: legacy log files and folders into the database, one task per file.

A file that is no log fails alone; a failure of the whole job (disk full, a damaged
database, an I/O error) ends the run with that one line: every later file would fail
the same way, and nothing of the failing file was stored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import State, flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.states import Completed, Failed

from db.load import require_schema
from flows.naming import migration_run_name
from powerwatch.errors import DatabaseUnavailable, JobError, PowerwatchError
from powerwatch.faults import fault_point
from powerwatch.legacy import DEFAULT_TZ, check_time_zone
from powerwatch.migration import discover, failed_report
from powerwatch.migration_report import FileReport, MigrationReport
from powerwatch.settings import get_settings
from tasks.migrate import ATTEMPTS, import_file_task


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
    report = MigrationReport()
    for path in files:
        # One file at a time: each import holds the database's write lock, and its
        # parsing already keeps both cores busy.
        state = import_file_task(path, tz, force, return_state=True)
        if not state.is_completed():
            error = state.result(raise_on_failure=False)
            if isinstance(error, JobError) and not isinstance(error, DatabaseUnavailable):
                publish(report)
                return Failed(message=str(error), data=error)
        report.files.append(state.result() if state.is_completed() else _failed(path, state))
        fault_point("migrate.recorded")
    publish(report)
    for f in report.failed:
        get_run_logger().error("failed: %s", f.error)
    summary = (
        f"{len(files)} file(s): {len(files) - len(report.failed)} imported or skipped, "
        f"{len(report.failed)} failed"
    )
    if report.failed:
        # Failed, but still carrying the report: the CLI prints it, the UI shows red.
        return Failed(message=summary, data=report)
    return Completed(message=summary, data=report)


def publish(report: MigrationReport) -> None:
    """The report as the run's artifacts: the table of files and the markdown summary."""
    create_table_artifact(
        key="migrate-logs",
        table=report.rows(),
        description="Per file: lines = non-data + inserted + duplicates + rejected",
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
