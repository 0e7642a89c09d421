"""End to end, as a site runs it: `prefect server start`, `prefect deploy --all` from
prefect.yaml, a process worker, and operators' `prefect deployment run ...` commands.

The stack is `powerwatch.site.stack.LocalStack`, the same code `powerwatch demo` runs. One
site on the embedded defaults (SQLite for powerwatch and for the Prefect server), one
on PostgreSQL for both (the scale-out layout of docs/operations.md).
"""

from __future__ import annotations

import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from powerwatch.site.stack import LocalStack
from tests.conftest import (
    _PG_SKIP,
    PG_BASE,
    SAMPLES,
    make_readings,
    sample_readings,
    write_chunk,
)
from tests.prefect_db import seed
from tests.sites import Site, free_port, site_environment

# Generous: the module's site (server, deploy, worker) starts in the first test's setup, and
# on a loaded 2-core host a start and a flow run each took minutes.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

MIGRATE = "migrate-logs/by-hand"
LOAD = "load-chunks/every-4-minutes"


def _site(
    root: Path, database_url: str, migrated: Path, server_database_url: str | None = None
) -> Iterator[Site]:
    registry = root / "stations.yaml"
    shutil.copy(SAMPLES / "stations.yaml", registry)
    env = site_environment(root, database_url, registry)
    home = root / "prefect"
    if server_database_url is None:  # SQLite: start on the run's migrated copy
        seed(home, migrated)
    stack = LocalStack(
        home=home,
        port=free_port(),
        env=env,
        server_database_url=server_database_url,
        scheduler_loop_seconds=5,
    )
    with stack:
        stack.start_server()
        stack.prepare()
        stack.start_worker()
        yield Site(stack, database_url, root / "data")


@pytest.fixture(scope="module")
def sqlite_site(
    tmp_path_factory: pytest.TempPathFactory, prefect_db_template: Path
) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("site")
    yield from _site(root, f"sqlite:///{root / 'powerwatch.db'}", prefect_db_template)


@pytest.fixture(scope="module")
def postgres_site(
    tmp_path_factory: pytest.TempPathFactory, prefect_db_template: Path
) -> Iterator[Site]:
    if _PG_SKIP:
        pytest.skip(_PG_SKIP)
    import psycopg

    suffix = uuid.uuid4().hex[:10]
    schema, prefect_db = f"e2e_{suffix}", f"prefect_{suffix}"
    admin_url = PG_BASE.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
        conn.execute(f"CREATE DATABASE {prefect_db}")
    server_url = admin_url.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
    try:
        yield from _site(
            tmp_path_factory.mktemp("pg-site"),
            f"{admin_url}?options=-csearch_path%3D{schema}",
            prefect_db_template,
            f"{server_url}/{prefect_db}",
        )
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")
            conn.execute(f"DROP DATABASE IF EXISTS {prefect_db} WITH (FORCE)")


def _migrate_samples(site: Site) -> Any:
    run_id = site.run_deployment(MIGRATE, f'paths=["{SAMPLES / "legacy-logs"}"]')
    run = site.wait(run_id)
    assert run.state.is_completed(), run.state.message
    return run


def _artifacts(site: Site, flow_run_id: uuid.UUID) -> list[Any]:
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with site.client() as client:
        found: list[Any] = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    return found


def test_operator_runs_migrate_logs_on_the_samples(sqlite_site: Site) -> None:
    run = _migrate_samples(sqlite_site)
    assert run.name == "migrate-logs legacy-logs"  # what was asked, not a random word pair
    assert sqlite_site.readings() == sample_readings()  # every reading, none twice
    kinds = {a.type for a in _artifacts(sqlite_site, run.id)}
    assert {"table", "markdown"} <= kinds, kinds
    # A second run of the same files: everything is skipped, nothing changes.
    before = sqlite_site.readings()
    _migrate_samples(sqlite_site)
    assert sqlite_site.readings() == before


def test_a_failing_file_fails_the_migration_run(sqlite_site: Site, tmp_path: Path) -> None:
    folder = tmp_path / "logs"
    folder.mkdir()
    (folder / "core.bin").write_bytes(bytes(range(256)) * 64)
    run_id = sqlite_site.run_deployment(MIGRATE, f'paths=["{folder}"]')
    run = sqlite_site.wait(run_id)
    assert run.state.is_failed(), run.state


def test_the_scheduled_load_picks_up_a_landed_chunk(sqlite_site: Site) -> None:
    # The sweep's schedule at 60 s instead of prefect.yaml's 240 s, through Prefect's own CLI
    # (as `bench/bench_soak.py` accelerates a site): the same deployment, worker and
    # scheduler, a tick the test does not wait minutes for.
    sqlite_site.stack.run_prefect(
        "deployment", "schedule", "create", LOAD, "--interval", "60", "--replace", "--accept-yes"
    )
    landing = sqlite_site.data_dir / "landing"
    chunk = write_chunk(make_readings(["KhonKaen", "Phuket"], 30), landing, "e2e-manual.parquet")
    before = sqlite_site.readings()
    loaded = sqlite_site.data_dir / "loaded" / chunk.name
    deadline = time.monotonic() + 200  # one 60 s schedule tick, scheduler and worker polls
    # Not "gone from landing/": a loader claims the chunk (a rename) before it loads it.
    while not loaded.exists() and time.monotonic() < deadline:
        time.sleep(1)
    assert not chunk.exists(), "no scheduled load-chunks run took the chunk"
    assert loaded.exists(), sorted(p.name for p in sqlite_site.data_dir.rglob("*.parquet"))
    assert sqlite_site.readings() == before + 60
    # The run goes on after the move (the WAL checkpoint): its Completed state follows.
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName

    completed = False
    while not completed and time.monotonic() < deadline + 60:
        with sqlite_site.client() as client:
            runs = client.read_flow_runs(
                deployment_filter=DeploymentFilter(
                    name=DeploymentFilterName(any_=[LOAD.split("/")[1]])
                )
            )
        completed = any(r.state is not None and r.state.is_completed() for r in runs)
        time.sleep(0 if completed else 1)
    assert completed, [r.state.name if r.state else None for r in runs]


def test_the_ui_renders_a_completed_migration_run(sqlite_site: Site, tmp_path: Path) -> None:
    """The run page renders (its DOM names the run) and a screenshot of it is taken, into
    tmp: docs/ui-migrate-logs-run.png is a copy made by hand (tests never write the tree)."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("no chromium here (Debian package `chromium`; `make test` installs it as root)")
    run = _migrate_samples(sqlite_site)
    url = f"{sqlite_site.stack.ui_url}/runs/flow-run/{run.id}"
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1440,1000",
        "--virtual-time-budget=15000",
        f"--user-data-dir={sqlite_site.stack.home / 'chromium'}",
    ]
    dom = subprocess.run(
        [chromium, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=120
    )
    assert run.name in dom.stdout, "the run page did not render the run's name"
    screenshot = tmp_path / "ui-migrate-logs-run.png"
    shot = subprocess.run(
        [chromium, *flags, f"--screenshot={screenshot}", url],
        capture_output=True,
        timeout=120,
    )
    assert shot.returncode == 0 and screenshot.stat().st_size > 20_000


@pytest.mark.postgres
def test_scale_out_layout_on_postgresql(postgres_site: Site) -> None:
    """Prefect server and powerwatch both on the PostgreSQL server: the operator's path works."""
    run = _migrate_samples(postgres_site)
    assert postgres_site.readings() == sample_readings()
    assert _artifacts(postgres_site, run.id)
