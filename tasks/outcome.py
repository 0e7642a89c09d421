"""A task's named failure as a Failed state instead of a raised exception.

Prefect logs every exception a task raises with its traceback (task_engine: "Task run
failed with exception", `exc_info=True`), and operators read that log on the job
command's stderr. A failure the code has already named (disk full, a damaged manifest,
bad input: `PowerwatchError`) is returned instead as `Failed(message=<its one line>,
data=<the error>)`: the run is still red in the UI with the reason, the flow reads the
error back with `state.result(raise_on_failure=False)`, and no traceback is printed.
`DatabaseUnavailable` is still raised: it is the one failure the tasks retry.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from prefect import State
from prefect.states import Failed

from powerwatch.core.errors import DatabaseUnavailable, PowerwatchError

T = TypeVar("T")


def named_failure_as_state(work: Callable[[], T]) -> T | State[Any]:
    """`work()`, or a Failed state carrying the PowerwatchError it raised."""
    try:
        return work()
    except DatabaseUnavailable:
        raise  # retried by the task's retry condition
    except PowerwatchError as exc:
        return Failed(message=str(exc), data=exc)
