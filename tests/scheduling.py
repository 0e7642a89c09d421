"""Which test module a pytest-xdist worker runs next (`make test`: `--dist loadfile`).

xdist's own `loadfile` order is "most tests first", so the five-minute hand-over test
(one test) started last and the suite waited for it alone. Here the longest units go
first, each to a free worker, and a worker still busy with a long unit (it must hold at
least two tests to run one: xdist's worker needs the next item) is topped up with the
shortest unit left, so nothing waits long behind it. A unit is a module (its
module-scoped servers start once), or a single case for the long cases in `SPLIT` and
every case of the modules in `SPLIT_EVERY_CASE`.

A module's weight is its rough wall time in seconds, from `pytest --junitxml` of a whole
`make test` run on this 2-core machine (2026-12-01: each case's time under the run's own
load; only the order matters, so the table needs no care beyond the big ones); others
count `DEFAULT_SECONDS` per test.
"""

from __future__ import annotations

from typing import Any

from xdist.scheduler import LoadFileScheduling

WEIGHTS = {
    "tests/test_deployments.py": 700.0,
    "tests/test_capture_deployment.py": 400.0,
    "tests/test_handovers.py": 400.0,
    "tests/faults/test_database_faults.py": 320.0,
    "tests/faults/test_migrate.py": 250.0,
    "tests/test_cli.py": 230.0,
    "tests/faults/test_capture.py": 160.0,
    "tests/faults/test_backup.py": 140.0,
    "tests/faults/test_archive.py": 130.0,
    "tests/faults/test_cli_contract.py": 105.0,
    "tests/test_instant.py": 85.0,
}
# Long tests of modules with no module-scoped fixture: each case is a unit of its own, so
# that two long cases of one module run side by side (seconds per case, parameters alike).
SPLIT = {
    "tests/test_health.py::test_serve_alerts_a_station_off_air_and_resolves_it_on_return": 150.0,
    "tests/test_health.py::test_outage_never_seen_and_stall_alert_and_handovers_do_not": 200.0,
    "tests/faults/test_load_concurrency.py::"
    "test_two_and_three_concurrent_loaders_load_every_chunk_once_and_all_exit_0": 400.0,
    "tests/faults/test_restarts.py::"
    "test_demo_stopped_while_submitting_resumes_after_a_restart": 320.0,
}
# Modules of many process-heavy cases sharing nothing costly: every case is a unit of its
# own (seconds per case). faults/test_load.py as one unit was 1,340 s of one worker's time
# on a loaded host, the suite's critical path.
SPLIT_EVERY_CASE = {
    "tests/faults/test_load.py": 70.0,
    "tests/faults/test_signals.py": 40.0,
}
SPLIT_MODULES = {test.split("::")[0] for test in SPLIT} | set(SPLIT_EVERY_CASE)
DEFAULT_SECONDS = 2.0
# A worker whose units still hold this much work gets the shortest unit left.
BUSY_SECONDS = 30.0


class LongestFirstScheduling(LoadFileScheduling):  # type: ignore[misc]
    def _split_scope(self, nodeid: str) -> str:
        if nodeid.split("::")[0] in SPLIT_MODULES:
            return nodeid
        scope: str = super()._split_scope(nodeid)
        return scope

    def _weight(self, scope: str, unit: dict[str, bool]) -> float:
        module = scope.split("::")[0]
        if module in SPLIT_MODULES:
            whole = SPLIT.get(scope.split("[")[0], SPLIT_EVERY_CASE.get(module, DEFAULT_SECONDS))
        else:
            whole = WEIGHTS.get(scope, DEFAULT_SECONDS * len(unit))
        return whole * sum(not done for done in unit.values()) / max(len(unit), 1)

    def _assign_work_unit(self, node: Any) -> None:
        busy = sum(self._weight(s, u) for s, u in self.assigned_work.get(node, {}).items())
        ranked = sorted(self.workqueue, key=lambda s: self._weight(s, self.workqueue[s]))
        scope = ranked[0] if busy >= BUSY_SECONDS else ranked[-1]
        self.workqueue.move_to_end(scope, last=False)
        super()._assign_work_unit(node)  # takes the queue's first unit
