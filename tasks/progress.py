"""A flow run's progress, shown where the operator looks: the run's Prefect progress
artifact (the UI) and, when the CLI runs the flow on a terminal, its bar.

`powerwatch.core.progress.JobProgress` counts and bounds the update rate; this only builds
its listeners, once per run and job (migrate-logs, archive-readings, restore-drill).
"""

from __future__ import annotations

from collections.abc import Callable
from uuid import UUID

from prefect.artifacts import create_progress_artifact, update_progress_artifact

from powerwatch.core.progress import Listener, Update, terminal_listener


def run_listeners(key: str, description: str, describe: Callable[[Update], str]) -> list[Listener]:
    """The run's progress artifact `key` (starting at 0 %, described by `describe` at each
    update), and this process's terminal bar if the CLI has one."""
    created = create_progress_artifact(progress=0.0, key=key, description=description)
    assert isinstance(created, UUID)  # the sync call in a sync flow (async_dispatch)
    artifact = created

    def to_artifact(update: Update) -> None:
        update_progress_artifact(
            artifact, progress=round(update.percent, 1), description=describe(update)
        )

    listeners: list[Listener] = [to_artifact]
    if (bar := terminal_listener()) is not None:
        listeners.append(bar)
    return listeners
