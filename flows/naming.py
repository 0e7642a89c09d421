"""Flow-run names that tell runs apart in the UI and the CLI (Prefect's default is a
random word pair; a static name makes every row of the runs list look the same)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path


def stamped(flow: str) -> Callable[[], str]:
    """`<flow> 2026-11-25 21:30:00Z`: the run's start, in UTC like every stored time."""

    def name() -> str:
        return f"{flow} {datetime.now(UTC):%Y-%m-%d %H:%M:%S}Z"

    return name


def migration_run_name() -> str:
    """`migrate-logs legacy-logs +2 (force)`: what an operator asked to import."""
    from prefect.runtime import flow_run

    parameters = flow_run.parameters
    paths = [str(p) for p in parameters.get("paths") or []]
    first = Path(paths[0]).name if paths else "(no paths)"
    more = f" +{len(paths) - 1}" if len(paths) > 1 else ""
    return f"migrate-logs {first}{more}{' (force)' if parameters.get('force') else ''}"
