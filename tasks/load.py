"""Load one landing chunk as one Prefect task (one task per chunk, never per row)."""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from db.engine import bulk_connection
from powerwatch.core.settings import get_settings
from powerwatch.load.chunks import ChunkReport, load_chunk
from tasks.retry import retry_when_database_unavailable


@task(
    task_run_name="load {chunk.name}",
    retries=5,
    retry_delay_seconds=exponential_backoff(backoff_factor=2),
    retry_jitter_factor=0.5,
    retry_condition_fn=retry_when_database_unavailable,
    cache_policy=NO_CACHE,
)
def load_chunk_task(chunk: Path) -> ChunkReport:
    """Claim, validate, store and move one chunk; a locked/unreachable database is retried
    with backoff while the chunk stays in landing/ (the claim is given back, nothing moves
    before the commit). A full disk, a damaged database or an I/O error is not retried:
    it would fail the same way again."""
    settings = get_settings()
    with bulk_connection(settings.database_url) as bulk:
        return load_chunk(bulk, chunk, settings)
