"""When a task is worth retrying: the database was busy or unreachable, nothing else."""

from __future__ import annotations

from typing import Any

from prefect import State, Task
from prefect.client.schemas.objects import TaskRun

from powerwatch.core.errors import DatabaseUnavailable


def retry_when_database_unavailable(
    _task: Task[..., Any], _task_run: TaskRun, state: State[Any]
) -> bool:
    try:
        state.result()
    except DatabaseUnavailable:
        return True
    except Exception:
        return False
    return False
