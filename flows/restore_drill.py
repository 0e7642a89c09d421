"""Flow `restore-drill`: prove the newest backup restores, on a schedule."""

from __future__ import annotations

from prefect import State, flow
from prefect.artifacts import create_table_artifact
from prefect.states import Completed, Failed

from flows.naming import stamped
from tasks.backup import restore_drill_task


@flow(name="restore-drill", flow_run_name=stamped("restore-drill"), log_prints=True)
def restore_drill() -> State:
    """Runbook: restore the newest backup beside the data, replay the chunks since, compare
    the last day per station with the live database, publish the result; a failed drill
    (a check, or any station differing) fails the run (red in the UI) with the reason."""
    state = restore_drill_task(return_state=True)
    if not state.is_completed():
        create_table_artifact(
            key="restore-drill",
            table=[{"result": "FAILED", "reason": state.message or ""}],
            description="restore drill failed",
        )
        return Failed(message=f"restore drill failed: {state.message}")
    result = state.result()
    report = result.drill
    start, end = result.window
    create_table_artifact(
        key="restore-drill",
        table=[
            {
                "result": "ok",
                "backup": report.backup,
                "age (h)": report.age_hours,
                "readings": report.rows.get("power_readings"),
                "replayed chunks": result.replay.replayed,
                "replayed readings": result.replay.inserted,
                "archived left out": result.replay.archived_dropped,
                "stations compared": len(result.stations),
                "check": report.check,
                "seconds": report.seconds,
            }
        ],
        description=f"restore drill ok: {report.backup}",
    )
    if result.stations:
        create_table_artifact(
            key="restore-drill-stations",
            table=result.rows(),
            description=f"restored = live, readings stamped {start} .. {end} (batches up to "
            f"{result.ledger_mark})",
        )
    return Completed(message=f"restore drill ok: {report.backup}", data=result)
