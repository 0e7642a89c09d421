"""A site for end-to-end tests: the real Prefect server, pool, deployments and worker
(`powerwatch.site.stack.LocalStack`), with the helpers tests use to drive and watch it."""

from __future__ import annotations

import re
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy

from powerwatch.site.stack import LocalStack

UUID_PATTERN = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


@dataclass
class Site:
    stack: LocalStack
    database_url: str
    data_dir: Path

    def run_deployment(self, name: str, *params: str) -> str:
        """`prefect deployment run NAME --param k=v ...`; the new flow run's id."""
        args = ["deployment", "run", name]
        for param in params:
            args += ["--param", param]
        out = self.stack.run_prefect(*args)
        found = UUID_PATTERN.findall(out)
        assert found, out
        return str(found[-1])

    def wait(self, flow_run_id: str, timeout: float = 240) -> Any:
        """The flow run once it reached a final state (a `prefect.client.schemas.FlowRun`)."""
        with self.client() as client:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                run = client.read_flow_run(uuid.UUID(flow_run_id))
                if run.state is not None and run.state.is_final():
                    return run
                time.sleep(2)
        raise AssertionError(f"flow run {flow_run_id} not final within {timeout} s")

    @contextmanager
    def client(self) -> Iterator[Any]:
        """A Prefect client of this site's server (the test process has no PREFECT_API_URL)."""
        from prefect.client.orchestration import get_client
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with (
            temporary_settings({PREFECT_API_URL: self.stack.api_url}),
            get_client(sync_client=True) as client,
        ):
            yield client

    def readings(self) -> int:
        from db.engine import make_engine

        engine = make_engine(self.database_url)
        with engine.connect() as conn:
            count = conn.execute(sqlalchemy.text("SELECT count(*) FROM power_readings")).scalar()
        engine.dispose()
        return int(count or 0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def site_environment(root: Path, database_url: str, registry: Path) -> dict[str, str]:
    """Upgrade the database and sync the registry into it; the POWERWATCH_* settings a
    site's worker runs its flows with."""
    from db.engine import make_engine
    from db.migrate import upgrade
    from db.stations import sync_stations
    from schemas.registry import load_registry

    engine = make_engine(database_url)
    upgrade(engine)
    sync_stations(engine, load_registry(registry))
    engine.dispose()
    return {
        "POWERWATCH_DATABASE_URL": database_url,
        "POWERWATCH_DATA_DIR": str(root / "data"),
        "POWERWATCH_STATIONS": str(registry),
    }
