"""Prefect cancellation of a deployed capture run, as a site does it: `prefect server start`,
`prefect deploy --all`, a process worker; the run is cancelled from the API, the worker
sends SIGTERM, and the capture flushes before the run ends Cancelled."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest

from powerwatch.devtools.simulator import read_record, spawn
from powerwatch.site.stack import LocalStack
from tests.prefect_db import seed
from tests.sites import UUID_PATTERN, Site, free_port, site_environment

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]  # a site start under load: minutes

CAPTURE = "capture-stations/overlapping-windows"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, prefect_db_template: Path) -> Iterator[Site]:
    """A site with three simulated stations; the capture's own schedule cleared, so the only
    capture run is the test's."""
    root = tmp_path_factory.mktemp("capture-site")
    registry, record = root / "stations.yaml", root / "record.ndjson"
    simulator = spawn(3, 20, registry, record_path=record)
    try:
        url = f"sqlite:///{root / 'powerwatch.db'}"
        env = site_environment(root, url, registry)
        home = seed(root / "prefect", prefect_db_template)
        stack = LocalStack(home=home, port=free_port(), env=env)
        with stack:
            stack.start_server()
            stack.prepare()
            stack.run_prefect("deployment", "schedule", "clear", CAPTURE, "--accept-yes")
            stack.start_worker()
            yield Site(stack, url, root / "data")
    finally:
        simulator.terminate()
        simulator.communicate(timeout=20)


def test_cancelling_a_deployed_capture_flushes_then_ends_cancelled(
    site: Site,
) -> None:
    from prefect.states import Cancelling

    out = site.stack.run_prefect(
        "deployment", "run", CAPTURE, "--param", "duration=900", "--param", "flush_seconds=900"
    )
    run_id = uuid.UUID(UUID_PATTERN.findall(out)[-1])
    record = site.data_dir.parent / "record.ndjson"
    with site.client() as client:
        deadline = time.monotonic() + 180
        while read_record(record).filter(pl.col("event").is_null()).height < 100:
            assert time.monotonic() < deadline, "the deployed capture never received frames"
            run = client.read_flow_run(run_id)
            assert not run.state.is_final(), run.state
            time.sleep(1)
        landing = site.data_dir / "landing"
        assert not list(landing.glob("capture-*.parquet"))  # nothing flushed yet (900 s)
        client.set_flow_run_state(run_id, Cancelling())
        deadline = time.monotonic() + 120
        while not (run := client.read_flow_run(run_id)).state.is_final():
            assert time.monotonic() < deadline, run.state
            time.sleep(1)
    assert run.state.is_cancelled(), run.state
    # The flush on the way out; the site's scheduled load may have moved it on already.
    chunks = [*landing.glob("capture-*.parquet"), *site.data_dir.glob("loaded/capture-*.parquet")]
    assert len(chunks) == 1
    assert pl.read_parquet(chunks[0]).height >= 100
