"""The automations a self-hosted Prefect server needs and does not create by itself.

A flow run whose worker or machine dies stays "Running" forever on a self-hosted
server: nothing marks it Crashed, so the `capture-stations` deployment's concurrency
slot stays taken and the schedule's replacement run would never start. Flow runs
emit a heartbeat every `PREFECT_FLOWS_HEARTBEAT_FREQUENCY` seconds (set by
`powerwatch.stack`); this automation crashes any run that has been silent for three
heartbeats without reaching a final state.
"""

from __future__ import annotations

from datetime import timedelta

ZOMBIE_AUTOMATION = "powerwatch: crash zombie flow runs"


def ensure_zombie_automation(api_url: str, heartbeat_seconds: int) -> bool:
    """Create the zombie-run automation unless it exists (by name); True if it was created."""
    from prefect.automations import Automation
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import EventTrigger, Posture
    from prefect.events.schemas.events import ResourceSpecification
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api_url}):
        with get_client(sync_client=True) as client:
            if client.read_automations_by_name(ZOMBIE_AUTOMATION):
                return False
        Automation(
            name=ZOMBIE_AUTOMATION,
            description="Marks a flow run Crashed when its heartbeats stop (worker or host died).",
            trigger=EventTrigger(
                after={"prefect.flow-run.heartbeat"},
                expect={
                    "prefect.flow-run.heartbeat",
                    "prefect.flow-run.Completed",
                    "prefect.flow-run.Failed",
                    "prefect.flow-run.Cancelled",
                    "prefect.flow-run.Crashed",
                },
                match=ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
                for_each={"prefect.resource.id"},
                posture=Posture.Proactive,
                threshold=1,
                within=timedelta(seconds=3 * heartbeat_seconds),
            ),
            actions=[
                ChangeFlowRunState(
                    state=StateType.CRASHED,
                    message=f"No heartbeat for {3 * heartbeat_seconds} s: marked as a zombie.",
                )
            ],
        ).create()
    return True
