"""Flow `apply-retention`: delete what every folder's retention allows, nothing more."""

from __future__ import annotations

from typing import cast

from prefect import State, flow
from prefect.artifacts import create_table_artifact
from prefect.states import Completed, Failed

from db.engine import make_engine
from db.migrate import require_current
from flows.naming import stamped
from powerwatch.core.settings import get_settings
from powerwatch.retention import prune as retention
from tasks.retention import expire_loaded_task, expire_rejects_task


@flow(name="apply-retention", flow_run_name=stamped("apply-retention"), log_prints=True)
def apply_retention() -> State:
    """Runbook: check the schema; expire quarantine/failed/dead-letter by age; expire the
    loaded chunks a verified backup (and the archive) holds; publish one row per folder.
    A named failure (a storage error) fails the run with its one line."""
    require_current(make_engine(get_settings().database_url))
    rejects = expire_rejects_task(return_state=True)
    if not rejects.is_completed():
        return Failed(message=rejects.message, data=rejects.result(raise_on_failure=False))
    loaded = expire_loaded_task(return_state=True)
    if not loaded.is_completed():
        return Failed(message=loaded.message, data=loaded.result(raise_on_failure=False))
    run = retention.RetentionRun(
        [
            *cast(list[retention.FolderReport], rejects.result()),
            cast(retention.FolderReport, loaded.result()),
        ]
    )
    deleted = sum(f.deleted for f in run.folders)
    freed = sum(f.bytes for f in run.folders)
    create_table_artifact(
        key="apply-retention",
        table=run.rows(),
        description=f"{deleted} file(s) deleted, {freed} bytes freed",
    )
    print(f"retention: {deleted} file(s) deleted, {freed} bytes freed")
    return Completed(message=f"{deleted} file(s) deleted", data=run)
