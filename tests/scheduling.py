"""Which test module a pytest-xdist worker runs next (`make test`: `--dist loadfile`).

xdist's own `loadfile` order is "most tests first", so the five-minute hand-over test
(one test) started last and the suite waited for it alone. Here the longest modules go
first, each to a free worker, and a worker still busy with a long module (it must hold
at least two tests to run one: xdist's worker needs the next item) is topped up with
the shortest module left, so nothing waits long behind it.

A module's weight is its rough wall time in seconds, from `pytest --junitxml` on this
2-core machine (only the order matters, so the table needs no care beyond the big ones);
others count `DEFAULT_SECONDS` per test.
"""

from __future__ import annotations

from typing import Any

from xdist.scheduler import LoadFileScheduling

WEIGHTS = {
    "tests/test_handovers.py": 340.0,
    "tests/test_health.py": 250.0,
    "tests/faults/test_load_concurrency.py": 150.0,
    "tests/faults/test_load.py": 130.0,
    "tests/faults/test_restarts.py": 120.0,
    "tests/test_deployments.py": 105.0,
    "tests/faults/test_database_faults.py": 75.0,
    "tests/faults/test_signals.py": 75.0,
    "tests/faults/test_capture.py": 60.0,
    "tests/test_cli.py": 55.0,
}
DEFAULT_SECONDS = 2.0
# A worker whose modules still hold this much work gets the shortest module left.
BUSY_SECONDS = 30.0


class LongestFirstScheduling(LoadFileScheduling):  # type: ignore[misc]
    def _weight(self, scope: str, unit: dict[str, bool]) -> float:
        whole = WEIGHTS.get(scope, DEFAULT_SECONDS * len(unit))
        return whole * sum(not done for done in unit.values()) / max(len(unit), 1)

    def _assign_work_unit(self, node: Any) -> None:
        busy = sum(self._weight(s, u) for s, u in self.assigned_work.get(node, {}).items())
        ranked = sorted(self.workqueue, key=lambda s: self._weight(s, self.workqueue[s]))
        scope = ranked[0] if busy >= BUSY_SECONDS else ranked[-1]
        self.workqueue.move_to_end(scope, last=False)
        super()._assign_work_unit(node)  # takes the queue's first unit
