"""The automations a self-hosted Prefect server needs and does not create by itself, and
the clean-up of runs a dead site left behind.

A flow run whose worker or machine dies stays "Running" forever on a self-hosted
server: nothing marks it Crashed, so its deployment's concurrency slot stays taken and
the schedule's replacement runs are all "Cancelled: Deployment concurrency limit
reached". Three guards, one per way a run can be left behind:

- Running, server up: flow runs emit a heartbeat every `PREFECT_FLOWS_HEARTBEAT_FREQUENCY`
  seconds (set by `powerwatch.stack`); the zombie automation crashes a run silent for
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
