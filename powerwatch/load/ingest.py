"""The one ingest path: every input (a landing chunk, capture's own loads, a legacy log
file) goes into the database as one batch, the same way.

1. The caller has claimed the input (a chunk renamed into `.claimed/`; a log file is
   read in place) and hashed its content.
2. `ingest` opens one write transaction holding the write lock, and *under that lock*
   asks the ledger whether this input is committed already: two processes can never
   both commit one input (if it is, nothing is written and `ingest` yields None).
3. It opens the batch (`begin_batch`: provenance and ledger rows).
4. The caller stores its slices through `Batch.store` (`powerwatch.load.store.store_prepared`: the
   first stored reading of a key wins; later ones are duplicates, equal or not).
5. On leaving the block the batch is recorded as committed with its counts
   (`finish_batch`), in the same transaction: the input is in whole or not at all.

Counting, the same in every report: `rows = inserted + duplicates + rejected`, where
`duplicates` are the readings whose key was stored already (the station protocol's
rule: first one wins) and `conflicts` says how many of them carried different values.
The ledger (`load_batches`) keeps equal duplicates and conflicts apart.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from db.bulk import BulkConnection
from db.tables import load_batches, power_readings, reading_conflicts
from powerwatch.load.store import (
    BatchKeys,
    Prepared,
    StoreResult,
    begin_batch,
    finish_batch,
    store_prepared,
)

# What an ingest writes: locked against other writers for the whole batch (PostgreSQL;
# SQLite's BEGIN IMMEDIATE takes its single write lock).
WRITE_TABLES = (load_batches.name, power_readings.name, reading_conflicts.name)


@dataclass
class Batch:
    """One input's batch while it is being stored (inside `ingest`)."""

    bulk: BulkConnection
    id: int
    rows_in: int = 0  # what the input held (lines of a log, rows of a chunk)
    rejected_by_reason: dict[str, int] = field(default_factory=dict)
    stored: StoreResult = field(default_factory=StoreResult)
    # A slice's rows that an earlier slice stored are told apart in memory: an input in
    # any row order loads at the speed of one in time order (`powerwatch.load.store.BatchKeys`).
    keys: BatchKeys = field(default_factory=BatchKeys)

    def store(self, prepared: Prepared) -> StoreResult:
        """Store one prepared slice (`powerwatch.load.store.prepare`) under this batch."""
        result = store_prepared(self.bulk, prepared, self.id, self.keys)
        self.stored += result
        return result


@contextmanager
def ingest(
    bulk: BulkConnection,
    *,
    kind: str,
    input_name: str,
    reference: str,
    content_hash: str,
    committed: Callable[[BulkConnection], int | None],
) -> Iterator[Batch | None]:
    """One input as one batch (module docstring). `committed(bulk)`: the input's committed
    batch, if any, asked under the write lock; then the block gets None and writes
    nothing. An exception inside the block rolls the whole batch back."""
    with bulk.transaction(lock_tables=WRITE_TABLES):
        if committed(bulk) is not None:
            yield None
            return
        batch = Batch(
            bulk,
            begin_batch(
                bulk,
                kind=kind,
                reference=reference,
                input_name=input_name,
                content_hash=content_hash,
            ),
        )
        yield batch
        finish_batch(
            bulk,
            batch.id,
            status="committed",
            rows_in=batch.rows_in,
            result=batch.stored,
            rejected_by_reason=batch.rejected_by_reason,
        )


def committed_batches(bulk: BulkConnection, names: list[str]) -> dict[tuple[str, str], int]:
    """(input name, content hash) -> newest committed batch id, for these names."""
    found: dict[tuple[str, str], int] = {}
    for start in range(0, len(names), 500):
        part = names[start : start + 500]
        params = {f"n{i}": name for i, name in enumerate(part)}
        marks = ", ".join(f":{key}" for key in params)
        for name, digest, batch in bulk.rows(
            f"SELECT input_name, content_hash, max(id) FROM {load_batches.name} "
            f"WHERE status = 'committed' AND input_name IN ({marks}) "
            "GROUP BY input_name, content_hash",
            params,
        ):
            found[(str(name), str(digest))] = int(batch)
    return found
