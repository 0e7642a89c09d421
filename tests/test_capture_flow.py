"""The `capture-stations` flow on a real Prefect server, against the simulator in its own
process; SIGTERM to a real `powerwatch capture` process; the shipped deployment."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest
import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactCollectionFilter, ArtifactCollectionFilterKey
from prefect.settings import PREFECT_API_URL

from db.engine import bulk_connection, make_engine
from db.queries import readings
from db.stations import sync_stations
from flows.capture_stations import capture_stations
from flows.load_chunks import load_chunks
from powerwatch.devtools.simulator import expected_readings, read_record, spawn
from schemas.registry import load_registry
from tests.conftest import Database

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.timeout(240, func_only=True)  # the server start is setup


@pytest.fixture
def simulator(
    sqlite_database: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Path]:
    """Three simulated stations in their own process, registered; yields the record path."""
    registry, record = tmp_path / "stations.yaml", tmp_path / "record.ndjson"
    monkeypatch.setenv("POWERWATCH_STATIONS", str(registry))
    process = spawn(3, 20, registry, record_path=record)
    try:
        engine = make_engine(sqlite_database.url)
        sync_stations(engine, load_registry(registry))
        engine.dispose()
        yield record
    finally:
        process.terminate()
        process.communicate(timeout=10)


def stop_simulator_and_read(record: Path) -> pl.DataFrame:
    """What the simulator delivered (its record is complete once it has stopped)."""
    return expected_readings(record)


def stored(db: Database) -> pl.DataFrame:
    with bulk_connection(db.url) as bulk:
        return readings(bulk)


async def _markdown_artifact(key: str) -> str:
    async with get_client() as client:
        [artifact] = await client.read_latest_artifacts(
            artifact_filter=ArtifactCollectionFilter(key=ArtifactCollectionFilterKey(any_=[key]))
        )
    assert isinstance(artifact.data, str)
    return artifact.data


def wait_for_frames(record: Path, count: int, timeout: float = 120) -> None:
    """Polls the record; the deadline allows for a capture process starting on a loaded host
    (its imports alone took 40 s at a load average of 11 on 2 cores)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if read_record(record).filter(pl.col("event").is_null()).height >= count:
            return
        time.sleep(0.2)
    raise AssertionError(f"the simulator did not deliver {count} frames in {timeout} s")


@pytest.mark.slow
def test_flow_captures_a_window_then_load_chunks_stores_all_of_it(
    prefect_server: None, sqlite_database: Database, simulator: Path
) -> None:
    state = capture_stations(duration=2.5, flush_seconds=0.5, return_state=True)
    assert state.is_completed()
    report = state.result()
    assert report.ended_by == "duration"
    assert report.chunks and report.readings > 100

    markdown = asyncio.run(_markdown_artifact("capture-stations"))
    for name in ("SIM-0001", "SIM-0002", "SIM-0003", *report.chunks):
        assert name in markdown
    assert f"{report.readings} readings" in markdown

    assert load_chunks(return_state=True).is_completed()
    got = stored(sqlite_database)
    truth = stop_simulator_and_read(simulator)
    # the capture closed its connections itself: the record is final for them
    assert got.height == truth.height == report.readings
    assert got.equals(truth)


@pytest.mark.slow
def test_sigterm_mid_window_stores_everything_received(
    prefect_server: None, sqlite_database: Database, simulator: Path
) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "PREFECT_API_URL": str(PREFECT_API_URL.value()),
    }
    capture = subprocess.Popen(
        [sys.executable, "-m", "powerwatch.cli", "capture", "--flush-seconds", "600"],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for_frames(simulator, 60)  # connected and receiving: nothing flushed yet
        capture.send_signal(signal.SIGTERM)
        code = capture.wait(timeout=30)
    finally:
        capture.kill()
    assert capture.stderr is not None
    errors = capture.stderr.read()
    assert code == 128 + signal.SIGTERM, errors  # 143, after flushing (powerwatch.site.jobs)
    landing = sqlite_database.data_dir / "landing"
    # the one final flush: loaded by the run itself, or (its 1 s after a signal up) left
    # in landing/ for load-chunks
    final = [*landing.glob("capture-*.parquet"), *(landing.parent / "loaded").glob("capture-*")]
    assert len(final) == 1, final
    assert [p.name for p in landing.glob(".*")] in ([], [".claimed"])  # no partial file

    assert load_chunks(return_state=True).is_completed()
    got = stored(sqlite_database)
    truth = stop_simulator_and_read(simulator)
    assert got.height >= 60
    assert got.equals(truth)


def test_shipped_deployment_overlaps_consecutive_runs() -> None:
    document = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    [deployment] = [
        d for d in document["deployments"] if d["entrypoint"].startswith("flows/capture_stations")
    ]
    [schedule] = deployment["schedules"]
    overlap = deployment["parameters"]["duration"] - schedule["interval"]
    assert overlap >= 10  # a new run is connected before the old one lets go
    assert deployment["concurrency_limit"] == {"limit": 2, "collision_strategy": "CANCEL_NEW"}
    assert capture_stations.name == "capture-stations"
    assert deployment["parameters"]["flush_seconds"] < schedule["interval"]
