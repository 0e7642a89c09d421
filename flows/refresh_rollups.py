"""Flow `refresh-rollups`: bring the hourly and daily rollups up to date with the readings."""

from __future__ import annotations

from dataclasses import asdict

from prefect import State, flow
from prefect.artifacts import create_table_artifact
from prefect.states import Failed

from db.engine import make_engine
from db.migrate import require_current
from flows.naming import stamped
from powerwatch.core.diskguard import low_space
from powerwatch.core.settings import get_settings
from powerwatch.rollups.refresh import RefreshResult
from tasks.rollups import refresh_rollups_task


@flow(name="refresh-rollups", flow_run_name=stamped("refresh-rollups"), log_prints=True)
def refresh_rollups() -> RefreshResult | State:
    """Runbook: check the schema, refresh what loads have queued, publish what changed.
    On a nearly full disk it refuses to start (the disk guard), in one line."""
    settings = get_settings()
    if (low := low_space(settings, "refresh-rollups")) is not None:
        return Failed(message=str(low), data=low)  # the queued hours wait
    require_current(make_engine(settings.database_url))
    result = refresh_rollups_task()
    create_table_artifact(
        key="refresh-rollups",
        table=[asdict(result)],
        description=f"{result.marks} queued station-hour(s) refreshed",
    )
    print(
        f"{result.marks} queued station-hour(s): {result.recomputed} recomputed, "
        f"{result.merged} merged into archived hours, {result.days} day(s) rebuilt"
    )
    return result
