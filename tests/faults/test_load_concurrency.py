"""Fault injection for `powerwatch load`: loaders racing for the same chunks.

Its own module so that the parallel test run (`make test`: pytest-xdist, one module per
worker) can give this long case a worker of its own.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from tests.conftest import Database
from tests.faults.conftest import spawn_powerwatch
from tests.faults.test_load import _env, assert_all_loaded_once, land, names

# --- loaders racing -----------------------------------------------------------------------


ROUNDS = 10


@pytest.mark.slow
@pytest.mark.timeout(900)  # 20-25 powerwatch processes; 5-6 min on a host shared 6 ways
def test_two_and_three_concurrent_loaders_load_every_chunk_once_and_all_exit_0(
    synced: Database, prefect_api: str, tmp_path: Path
) -> None:
    """Ten rounds of 20 fresh chunks, each taken on by two or three `powerwatch load`
    started together (alternating): the claim decides who loads which chunk."""
    landing = synced.data_dir / "landing"
    truths: list[pl.DataFrame] = []
    chunks: set[str] = set()
    for round_ in range(ROUNDS):
        loaders = 2 + round_ % 2
        truths.append(land(landing, 20, seconds=5, first=round_ * 20))
        chunks |= names(landing)
        logs = [tmp_path / f"r{round_}-{n}.log" for n in range(loaders)]
        procs = [spawn_powerwatch("load", env=_env(prefect_api), log=log) for log in logs]
        codes = [proc.wait(timeout=300) for proc in procs]
        assert codes == [0] * loaders, [log.read_text()[-2000:] for log in logs]
        assert names(landing) == set()
    assert_all_loaded_once(synced, pl.concat(truths), chunks)
