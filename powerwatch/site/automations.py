"""The automations a self-hosted Prefect server needs and does not create by itself, and
the clean-up of runs a dead site left behind.

A flow run whose worker or machine dies stays "Running" forever on a self-hosted
server: nothing marks it Crashed, so its deployment's concurrency slot stays taken and
the schedule's replacement runs are all "Cancelled: Deployment concurrency limit
reached". Three guards, one per way a run can be left behind:

- Running, server up: flow runs emit a heartbeat every `PREFECT_FLOWS_HEARTBEAT_FREQUENCY`
  seconds (set by `powerwatch.site.stack`); the zombie automation crashes a run silent for
  three heartbeats. Prefect's core policy (`ReleaseFlowConcurrencySlots`) then releases
  the run's deployment slot (its lease), as for any run leaving Running.
- Pending, server up (the worker died while submitting: no heartbeat ever comes): the
  stuck-pending automation crashes a run still Pending after `PENDING_LIMIT_SECONDS`.
- Anything, server restarted too (Ctrl-C or kill -9 of the demo): Prefect 3.9 keeps
  deployment slot leases in memory (`lease_storage.memory`), so after a restart no
  lease exists for a slot still counted in the database and nothing would ever free
  it. `release_abandoned_runs` runs at stack start, before our worker: every run of
  pool `powerwatch` still Pending/Running/Cancelling is crashed with the reason, and
  the deployments' slot counts are set to what the remaining live runs hold (none).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

ZOMBIE_AUTOMATION = "powerwatch: crash zombie flow runs"
PENDING_AUTOMATION = "powerwatch: crash flow runs stuck in Pending"
# A run's process starts (imports Prefect, polars, the flow) within this, even on a
# loaded 2-core host; past it, no worker is starting it any more.
PENDING_LIMIT_SECONDS = 300
FINAL_EVENTS = {
    "prefect.flow-run.Completed",
    "prefect.flow-run.Failed",
    "prefect.flow-run.Cancelled",
    "prefect.flow-run.Crashed",
}


def ensure_zombie_automation(api_url: str, heartbeat_seconds: int) -> bool:
    """Create the zombie-run and stuck-pending automations unless they exist (by name);
    True if any was created."""
    from prefect.automations import Automation
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import EventTrigger, Posture
    from prefect.events.schemas.events import ResourceSpecification
    from prefect.settings import PREFECT_API_URL, temporary_settings

    wanted = {
        ZOMBIE_AUTOMATION: (
            "Marks a flow run Crashed when its heartbeats stop (worker or host died).",
            "prefect.flow-run.heartbeat",
            {"prefect.flow-run.heartbeat"},
            3 * heartbeat_seconds,
            f"No heartbeat for {3 * heartbeat_seconds} s: marked as a zombie.",
        ),
        PENDING_AUTOMATION: (
            "Marks a flow run Crashed when it stays Pending (its worker died submitting it).",
            "prefect.flow-run.Pending",
            {"prefect.flow-run.Running"},
            PENDING_LIMIT_SECONDS,
            f"Pending for {PENDING_LIMIT_SECONDS} s: no worker is starting it.",
        ),
    }
    created = False
    with temporary_settings({PREFECT_API_URL: api_url}):
        for name, (description, after, expect, seconds, message) in wanted.items():
            with get_client(sync_client=True) as client:
                if client.read_automations_by_name(name):
                    continue
            Automation(
                name=name,
                description=description,
                trigger=EventTrigger(
                    after={after},
                    expect=expect | FINAL_EVENTS,
                    match=ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
                    for_each={"prefect.resource.id"},
                    posture=Posture.Proactive,
                    threshold=1,
                    within=timedelta(seconds=seconds),
                ),
                actions=[ChangeFlowRunState(state=StateType.CRASHED, message=message)],
            ).create()
            created = True
    return created


def release_abandoned_runs(api_url: str, work_pool: str, reason: str) -> list[str]:
    """Crash every Pending/Running/Cancelling run of `work_pool` and free its deployments'
    concurrency slots; the names of the runs crashed.

    Only for a start with no live worker of the pool (LocalStack, before its worker):
    then no process can own those runs."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitUpdate
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
        WorkPoolFilter,
        WorkPoolFilterName,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect.states import Crashed

    pool = WorkPoolFilter(name=WorkPoolFilterName(any_=[work_pool]))
    held = [StateType.PENDING, StateType.RUNNING, StateType.CANCELLING]
    crashed: list[str] = []
    with temporary_settings({PREFECT_API_URL: api_url}), get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=held))
            ),
            work_pool_filter=pool,
            limit=200,
        )
        for run in runs:
            # force: Cancelling -> Crashed and Pending -> Crashed are otherwise refused
            # or delayed; the core policy still releases the run's slot (fallback:
            # the deployment's limit, as the lease died with the old server).
            client.set_flow_run_state(run.id, Crashed(message=reason), force=True)
            crashed.append(run.name)
        deployments = client.read_deployments(work_pool_filter=pool, limit=200)
        for deployment in deployments:
            limit = deployment.global_concurrency_limit
            if limit is None or not limit.active_slots:
                continue
            # Nothing of the pool runs now: every slot still counted is a dead run's.
            client.update_global_concurrency_limit(
                limit.name, GlobalConcurrencyLimitUpdate(active_slots=0)
            )
    return crashed


# --- live health alerts (powerwatch.capture.health emits the events) ----------------------------

ALERT_KINDS = ("station", "pipeline")
ALERT_STATUSES = ("down", "up")


def alert_automation_name(kind: str, status: str) -> str:
    return f"powerwatch: {kind} {status}"


def alert_block_name(kind: str, status: str) -> str:
    return f"powerwatch-alert-{kind}-{status}"


def ensure_alert_automations(api_url: str, webhook_url: str | None) -> dict[str, str]:
    """One automation per kind (station, pipeline) and status (down, up), read by name
    then created or updated, never duplicated; name -> "created" | "updated".

    Each reacts to its event (`powerwatch.<kind>.<status>`, one per state change) and,
    with `webhook_url`, sends it through a Custom Webhook block of its own: the block's
    JSON body names the kind's key (`station` or `pipeline`), the fixed `status`, and
    `since`, filled from the event by the automation's subject and body templates.
    Without a webhook the action does nothing: the firing still shows in the UI
    (Automations, Event Feed).
    """
    from prefect.automations import Automation
    from prefect.blocks.notifications import CustomWebhookNotificationBlock
    from prefect.client.orchestration import get_client
    from prefect.events.actions import ActionTypes, DoNothing, SendNotification
    from prefect.events.schemas.automations import EventTrigger, Posture
    from prefect.events.schemas.events import ResourceSpecification
    from prefect.settings import PREFECT_API_URL, temporary_settings

    done: dict[str, str] = {}
    with temporary_settings({PREFECT_API_URL: api_url}):
        for kind in ALERT_KINDS:
            for status in ALERT_STATUSES:
                action: ActionTypes = DoNothing()
                if webhook_url:
                    block = CustomWebhookNotificationBlock(
                        name=f"powerwatch {kind} {status}",
                        url=webhook_url,
                        json_data={kind: "{{subject}}", "status": status, "since": "{{body}}"},
                    )
                    block_id = block.save(alert_block_name(kind, status), overwrite=True)
                    action = SendNotification(
                        block_document_id=block_id,
                        subject="{{ event.payload." + kind + " }}",
                        body="{{ event.payload.since }}",
                    )
                name = alert_automation_name(kind, status)
                automation = Automation(
                    name=name,
                    description=f"A {kind} {'stopped' if status == 'down' else 'resumed'}: "
                    "sends the alert to POWERWATCH_ALERT_WEBHOOK_URL (when set).",
                    trigger=EventTrigger(
                        expect={f"powerwatch.{kind}.{status}"},
                        match=ResourceSpecification(
                            {"prefect.resource.id": f"powerwatch.{kind}.*"}
                        ),
                        posture=Posture.Reactive,
                        threshold=1,
                        within=timedelta(0),
                    ),
                    actions=[action],
                )
                with get_client(sync_client=True) as client:
                    existing = client.read_automations_by_name(name)
                    for extra in existing[1:]:  # a duplicate from elsewhere: one is enough
                        client.delete_automation(extra.id)
                if existing:
                    automation.id = existing[0].id
                    automation.update()
                    done[name] = "updated"
                else:
                    automation.create()
                    done[name] = "created"
    return done


def prepare_site(request: dict[str, Any]) -> list[str]:
    """What `LocalStack.prepare` needs of this module, in one call (run as
    `python -m powerwatch.site.automations '<json>'` so that the site's parent never imports
    Prefect's client): the automations, then the dead site's runs crashed."""
    ensure_zombie_automation(request["api_url"], request["heartbeat_seconds"])
    ensure_alert_automations(request["api_url"], request["webhook_url"])
    return release_abandoned_runs(request["api_url"], request["work_pool"], request["reason"])


if __name__ == "__main__":
    import json
    import sys

    print(json.dumps(prepare_site(json.loads(sys.argv[1]))))
