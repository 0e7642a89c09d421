"""The `load-chunks` flow on a real (temporary) Prefect server."""

from __future__ import annotations

from typing import cast

import pytest
from prefect.client.orchestration import get_client

from flows.load_chunks import load_chunks
from powerwatch.load.chunks import ChunkReport
from tests.conftest import Database, make_readings, write_chunk


async def _artifact(key: str) -> tuple[list[dict[str, object]], str]:
    """The latest artifact of `key`: its table rows and its description."""
    import json

    from prefect.client.schemas.filters import (
        ArtifactCollectionFilter,
        ArtifactCollectionFilterKey,
    )

    async with get_client() as client:
        [artifact] = await client.read_latest_artifacts(
            artifact_filter=ArtifactCollectionFilter(key=ArtifactCollectionFilterKey(any_=[key]))
        )
    data = artifact.data
    rows = json.loads(data) if isinstance(data, str) else data
    assert isinstance(rows, list)
    return rows, artifact.description or ""


@pytest.mark.slow
def test_flow_loads_chunks_and_publishes_the_table(prefect_server: None, synced: Database) -> None:
    landing = synced.data_dir / "landing"
    write_chunk(make_readings(["KhonKaen", "ChiangMai"], 30), landing, "a.parquet")
    write_chunk(make_readings(["KhonKaen", "ChiangMai"], 40), landing, "b.parquet")

    state = load_chunks(return_state=True)

    assert state.is_completed()
    reports = cast(list[ChunkReport], state.result())
    assert [(r.chunk, r.inserted, r.duplicates) for r in reports] == [
        ("a.parquet", 60, 0),
        ("b.parquet", 20, 60),
    ]
    import asyncio

    rows, description = asyncio.run(_artifact("load-chunks"))
    total = rows[-1]
    assert total["chunk"] == "TOTAL (2 chunks)"
    assert (total["inserted"], total["duplicates"], total["rejected"]) == (80, 60, 0)
    assert "; 140 rows in at " in description and description.endswith(" rows/s")


@pytest.mark.slow
def test_flow_fails_visibly_when_a_chunk_is_unreadable(
    prefect_server: None, synced: Database
) -> None:
    landing = synced.data_dir / "landing"
    landing.mkdir(parents=True)
    (landing / "bad.parquet").write_bytes(b"garbage")
    write_chunk(make_readings(["KhonKaen"], 3), landing, "good.parquet")

    state = load_chunks(return_state=True)

    assert state.is_failed()
    assert "1 unreadable chunk(s) set aside" in (state.message or "")
    assert (synced.data_dir / "loaded" / "good.parquet").exists()
    assert (synced.data_dir / "failed" / "bad.parquet").exists()
