"""Shared fixtures: a real SQLite file and, when reachable, the real PostgreSQL server.

`database` is parametrised over both backends; PostgreSQL gets a fresh schema
per test (search_path in the URL), so tests never see each other's rows. When
the server is not reachable the PostgreSQL cases are skipped with the reason.
"""

from __future__ import annotations

import itertools
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

PG_BASE = os.environ.get("POWERWATCH_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "samples"
if not SAMPLES.exists():  # CI clones next to shared/; a checkout elsewhere may point at it
    SAMPLES = Path(os.environ.get("POWERWATCH_SAMPLES", "/work/shared/samples"))


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object | None:
    """`--dist loadfile` (make test): longest modules first (tests/scheduling.py)."""
    if config.getvalue("dist") != "loadfile":
        return None
    from tests.scheduling import LongestFirstScheduling

    return LongestFirstScheduling(config, log)


def _postgres_reason() -> str | None:
    import sqlalchemy

    try:
        engine = sqlalchemy.create_engine(PG_BASE, connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("SELECT 1"))
        engine.dispose()
    except Exception as exc:  # any failure means: not reachable here
        return f"PostgreSQL at {PG_BASE} not reachable: {str(exc).splitlines()[0]}"
    return None


_PG_SKIP = _postgres_reason()


@dataclass
class Database:
    backend: str
    url: str
    data_dir: Path


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Database]:
    """An empty, upgraded database of each backend, wired into the settings."""
    from db.engine import make_engine
    from db.migrate import upgrade

    data_dir = tmp_path / "data"
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'powerwatch.db'}"
        schema = None
    else:
        if _PG_SKIP:
            pytest.skip(_PG_SKIP)
        schema = f"t_{uuid.uuid4().hex[:12]}"
        import sqlalchemy

        admin = sqlalchemy.create_engine(PG_BASE)
        with admin.begin() as conn:
            conn.execute(sqlalchemy.text(f"CREATE SCHEMA {schema}"))
        url = f"{PG_BASE}?options=-csearch_path%3D{schema}"
    monkeypatch.setenv("POWERWATCH_DATABASE_URL", url)
    monkeypatch.setenv("POWERWATCH_DATA_DIR", str(data_dir))
    monkeypatch.setenv("POWERWATCH_BUSY_TIMEOUT_MS", "2000")
    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()
    yield Database(request.param, url, data_dir)
    if schema is not None:
        import sqlalchemy

        with admin.begin() as conn:
            conn.execute(sqlalchemy.text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


@pytest.fixture
def sqlite_database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Database:
    from db.engine import make_engine
    from db.migrate import upgrade

    url = f"sqlite:///{tmp_path / 'powerwatch.db'}"
    monkeypatch.setenv("POWERWATCH_DATABASE_URL", url)
    monkeypatch.setenv("POWERWATCH_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("POWERWATCH_BUSY_TIMEOUT_MS", "2000")
    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()
    return Database("sqlite", url, tmp_path / "data")


STATIONS_YAML = """\
stations:
  - name: KhonKaen
    uuid: 237db9a3-0311-4ba5-a431-7182045adce9
    ip_address: 127.0.0.1
    scene: northeast
  - name: ChiangMai
    uuid: a3b4f9db-5a66-4019-aebb-6c47f99e1f95
    ip_address: 127.0.0.1
    scene: north
  - name: Songkhla
    uuid: 01d79e66-46cb-49b9-a8d9-1b110132253f
    ip_address: 127.0.0.1
    scene: south
"""


@pytest.fixture
def registry_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "stations.yaml"
    path.write_text(STATIONS_YAML)
    monkeypatch.setenv("POWERWATCH_STATIONS", str(path))
    return path


@pytest.fixture
def synced(database: Database, registry_file: Path) -> Database:
    """A database with the three test stations registered."""
    from db.engine import make_engine
    from db.stations import sync_stations
    from schemas.registry import load_registry

    engine = make_engine(database.url)
    sync_stations(engine, load_registry(registry_file))
    engine.dispose()
    return database


@pytest.fixture
def sqlite_synced(sqlite_database: Database, registry_file: Path) -> Database:
    """`synced` on SQLite only (file-level behaviour: backups, restore, vacuum)."""
    from db.engine import make_engine
    from db.stations import sync_stations
    from schemas.registry import load_registry

    engine = make_engine(sqlite_database.url)
    sync_stations(engine, load_registry(registry_file))
    engine.dispose()
    return sqlite_database


@pytest.fixture(scope="module")
def prefect_server(prefect_api: str) -> Iterator[None]:
    """Flows run in this process report to the session's one server (`prefect_api`)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: prefect_api}):
        yield


# The shared samples' files and their formats (legacy-logs.md: T, J, C).
SAMPLE_FORMATS = {
    "archive/monitor-2024-03-06.jsonl.gz": "J",
    "exports/export-march.csv": "C",
    "monitor-2024-03-05.jsonl": "J",
    "monitor.log": "T",
    "monitor.log.1": "T",
    "monitor.log.2.gz": "T",
}


def sample_readings() -> int:
    """How many readings the shared samples hold for the stations of their registry, by
    an oracle independent of the code under test: the files read the obvious way, line by
    line (bench/bench_migrate.py's baseline), each (station, timestamp) once."""
    from typing import cast

    from bench.bench_migrate import baseline_rows
    from powerwatch.legacy.formats import Format
    from schemas.registry import load_registry

    ids = {s.name: n for n, s in enumerate(load_registry(SAMPLES / "stations.yaml"))}
    keys = {
        (row["station_id"], row["ts"])
        for name, fmt in SAMPLE_FORMATS.items()
        for row in baseline_rows(SAMPLES / "legacy-logs" / name, cast(Format, fmt), ids)
    }
    return len(keys)


def read_artifact(key: str) -> list[dict[str, object]]:
    """The rows of the newest table artifact with this key, from the Prefect server."""
    import asyncio
    import json

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactCollectionFilter,
        ArtifactCollectionFilterKey,
    )

    async def newest() -> object:
        async with get_client() as client:
            [found] = await client.read_latest_artifacts(
                artifact_filter=ArtifactCollectionFilter(
                    key=ArtifactCollectionFilterKey(any_=[key])
                )
            )
        return found.data

    data = asyncio.run(newest())
    return json.loads(data) if isinstance(data, str) else data  # type: ignore[return-value]


T0 = datetime(2026, 11, 1, tzinfo=UTC)


def make_readings(
    stations: list[str], seconds: int, start: datetime = T0, value: float = 100.0
) -> pl.DataFrame:
    """Contract-shaped readings: every station once per second, deterministic values."""
    from schemas.reading import ACTIVE_CHANNELS, MUX_CHANNELS

    rows = len(stations) * seconds
    frame = pl.DataFrame(
        {
            "station": [s for _ in range(seconds) for s in stations],
            "timestamp": [start + timedelta(seconds=i) for i in range(seconds) for _ in stations],
        }
    ).with_columns(pl.col("timestamp").dt.cast_time_unit("ms").dt.convert_time_zone("UTC"))
    index = pl.int_range(0, rows, eager=True).cast(pl.Float64)
    columns = {c.key: index * 0.5 + value for c in ACTIVE_CHANNELS}
    columns |= {c.key: index * 0.01 + 1000.0 for c in MUX_CHANNELS}
    return frame.with_columns(**columns)


def write_chunk(frame: pl.DataFrame, landing: Path, name: str) -> Path:
    from powerwatch.core.parquet_files import write_parquet_atomically

    return write_parquet_atomically(frame, landing / name)


_chunk_numbers = itertools.count()


def load_frame(db: Database, frame: pl.DataFrame) -> None:
    """`frame` through the real load path: a landing chunk, then `load_chunk` on every
    chunk landed (the code `powerwatch load` runs, in this process)."""
    from db.engine import bulk_connection
    from powerwatch.core.settings import get_settings
    from powerwatch.load import landing
    from powerwatch.load.chunks import load_chunk

    write_chunk(frame, db.data_dir / "landing", f"chunk-{next(_chunk_numbers):06d}.parquet")
    settings = get_settings()
    with bulk_connection() as bulk:
        for chunk in landing.list_chunks(settings.landing_dir):
            load_chunk(bulk, chunk, settings)


@pytest.fixture(scope="session")
def prefect_api(
    tmp_path_factory: pytest.TempPathFactory, prefect_db_template: Path
) -> Iterator[str]:
    """The one real Prefect server of a test session (each xdist worker has its own): the
    API URL that subprocesses get as PREFECT_API_URL and `prefect_server` points this
    process at. Tests that run a whole site (`tests/sites.py`) start their own.

    A `powerwatch` job command without PREFECT_API_URL starts a temporary server of its
    own; tests that run many of them share this one instead. Up to 400 s for the start:
    on shared 2-core hosts a server start took over 120 s under load.
    """
    import socket

    from powerwatch.site.stack import LocalStack
    from tests.prefect_db import seed

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    home = seed(tmp_path_factory.mktemp("prefect-home"), prefect_db_template)
    with LocalStack(home=home, port=port) as stack:
        stack.start_server(timeout=400)
        yield stack.api_url


@pytest.fixture(scope="session")
def prefect_db_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated Prefect server database, built once per run for every xdist worker
    (`tests/prefect_db.py`); test servers start on a copy (`seed`)."""
    from tests.prefect_db import template

    return template(tmp_path_factory.getbasetemp().parent)
