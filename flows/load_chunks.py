"""Flow `load-chunks`: every complete chunk in landing/, oldest first, into the database."""

from __future__ import annotations

from prefect import State, flow, get_run_logger
from prefect.artifacts import create_table_artifact
from prefect.states import Completed, Failed

from db.engine import make_engine
from db.migrate import require_current
from flows.naming import stamped
from powerwatch import landing
from powerwatch.errors import DatabaseCorrupt, DatabaseUnavailable
from powerwatch.loader import ChunkReport
from powerwatch.reports import load_summary_rows
from powerwatch.settings import get_settings
from tasks.load import load_chunk_task


@flow(name="load-chunks", flow_run_name=stamped("load-chunks"), log_prints=True)
def load_chunks() -> State:
    """Runbook: check the schema, load each chunk in turn, publish the table, fail if any did."""
    settings = get_settings()
    require_current(make_engine(settings.database_url, create=False))
    # Retries (of a busy/unreachable database only) from POWERWATCH_LOAD_RETRIES.
    load = load_chunk_task.with_options(retries=settings.load_retries)
    reports: list[ChunkReport] = []
    failed: list[str] = []
    unavailable: DatabaseUnavailable | None = None
    damaged: DatabaseCorrupt | None = None
    for chunk in landing.list_chunks(settings.landing_dir):
        state = load(chunk, return_state=True)
        if state.is_completed():
            reports.append(state.result())
            continue
        failed.append(f"{chunk.name}: {state.message or 'failed'}")
        error = state.result(raise_on_failure=False)
        # Every later chunk would fail the same way (after the same retries): stop, they
        # all wait in landing/.
        if isinstance(error, DatabaseUnavailable):
            unavailable = error
            break
        if isinstance(error, DatabaseCorrupt):
            damaged = error
            break
    create_table_artifact(
        key="load-chunks",
        table=load_summary_rows(reports),
        description=f"{len(reports)} chunk(s) loaded, {len(failed)} failed after retries",
    )
    logger = get_run_logger()
    for line in failed:
        logger.error(line)
    unreadable = [r for r in reports if r.status == "unreadable"]
    if damaged is not None:
        return Failed(message=str(damaged), data=reports)
    if unavailable is not None:
        return Failed(
            message=f"database busy or unreachable after {settings.load_retries + 1} "
            f"attempts: {unavailable}; the chunks wait in {settings.landing_dir}",
            data=reports,
        )
    if failed or unreadable:
        # Failed, but still carrying the reports: the CLI prints them, the UI shows red.
        return Failed(
            message=f"{len(failed)} chunk(s) failed and {len(unreadable)} unreadable chunk(s) "
            "set aside",
            data=reports,
        )
    return Completed(message=f"{len(reports)} chunk(s) loaded", data=reports)
