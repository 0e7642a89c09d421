"""Flow `load-chunks`: every complete chunk in landing/, oldest first, into the database.

Claims left by a loader that died are put back into landing/ first (`landing.recover_claims`).
A failure of the whole job (disk full, a damaged database, an I/O error) ends the run
at that chunk with that one line: every later chunk would fail the same way; so does a
database still busy or unreachable after its retries (POWERWATCH_LOAD_RETRIES): the
chunks wait in landing/ for the next run. An unreadable chunk fails only itself.
"""

from __future__ import annotations

from prefect import State, flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.states import Completed, Failed

from flows.naming import stamped
from powerwatch.core.diskguard import low_space
from powerwatch.core.errors import DatabaseUnavailable, JobError, PowerwatchError, from_os_error
from powerwatch.core.settings import get_settings
from powerwatch.load import landing
from powerwatch.load.chunks import TAKEN, ChunkReport
from powerwatch.load.reports import load_details, load_rate, load_summary_rows
from powerwatch.load.store import require_schema
from tasks.load import load_chunk_task
from tasks.wal import checkpoint_wal_task


@flow(name="load-chunks", flow_run_name=stamped("load-chunks"), log_prints=True)
def load_chunks() -> State:
    """Runbook: check the schema, recover dead loaders' claims, load each chunk in turn
    (skipping those another loader took), publish the table, fail if any did."""
    settings = get_settings()
    logger = get_run_logger()
    if (low := low_space(settings, "load")) is not None:
        return Failed(message=str(low), data=low)  # the chunks wait in landing/
    try:
        require_schema(settings.database_url, "load")
        recovered = landing.recover_claims(settings.landing_dir)
    except PowerwatchError as exc:
        return Failed(message=str(exc), data=exc)
    except OSError as exc:
        failure = from_os_error(exc, "load: recovering claims")
        return Failed(message=str(failure), data=failure)
    for chunk in recovered:
        logger.warning("%s: claimed by a loader that died; put back into landing/", chunk.name)
    reports: list[ChunkReport] = []
    failed: list[str] = []
    fatal: JobError | None = None
    # Retries (of a busy/unreachable database only) from POWERWATCH_LOAD_RETRIES.
    load = load_chunk_task.with_options(retries=settings.load_retries)
    unavailable: DatabaseUnavailable | None = None
    for chunk in landing.list_chunks(settings.landing_dir):
        state = load(chunk, return_state=True)
        if state.is_completed():
            report: ChunkReport = state.result()
            if report.status != TAKEN:
                reports.append(report)
            continue
        error = state.result(raise_on_failure=False)
        if isinstance(error, JobError) and not isinstance(error, DatabaseUnavailable):
            fatal = error
            break
        failed.append(f"{chunk.name}: {state.message or 'failed'}")
        if isinstance(error, DatabaseUnavailable):
            # Every later chunk would wait out the same retries: stop, they wait in landing/.
            unavailable = error
            break
    if any(r.status == "loaded" for r in reports):
        checkpoint_wal_task()  # the -wal file stays bounded (db/wal.py); never fails the run
    create_table_artifact(
        key="load-chunks",
        table=load_summary_rows(reports),
        description=f"{len(reports)} chunk(s) loaded, {len(failed)} failed after retries; "
        f"{load_rate(reports)}",
    )
    details = load_details(reports) + [f"- {line}" for line in failed]
    if details:  # reasons and errors are long: a list, beside the table
        create_markdown_artifact(
            key="load-chunks-details",
            markdown="Rejections and errors per chunk:\n\n" + "\n".join(details),
            description="rejected rows by reason (in quarantine/), errors",
        )
    for line in failed:
        logger.error(line)
    if fatal is not None:
        # The chunk is back in landing/ (its claim given back); nothing stored is lost.
        return Failed(message=str(fatal), data=reports)
    unreadable = [r for r in reports if r.status == "unreadable"]
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
