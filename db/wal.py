"""Keeping SQLite's `-wal` file bounded: a checkpoint after every load and archive run.

SQLite's automatic checkpoint (PASSIVE, every 1000 pages) copies pages back into the
database but never shrinks the `-wal` file: it is reused from its start only when a
writer finds every frame copied back and no reader on an older snapshot. A reader that
keeps a snapshot open (an analyst's session, a long export) stops that, and the file
grows by everything written meanwhile, and stays that large afterwards.

So after each load and archive run, `checkpoint`:
1. PASSIVE: copies back what it can without waiting for anyone (never blocks a writer);
2. if that copied every frame (no reader holds an older snapshot any more), TRUNCATE:
   resets the file to 0 bytes, waiting at most `TRUNCATE_WAIT_MS` for readers that are
   between transactions (it holds off writers while it waits, so the wait is short).
A reader still holding an old snapshot leaves the file as it is (step 2 is skipped),
and the next run truncates it once that reader is done. `journal_size_limit`
(db/engine.py) also truncates the file whenever SQLite itself resets it.
PostgreSQL manages its own WAL: nothing to do.
"""

from __future__ import annotations

from dataclasses import dataclass

from db.bulk import BulkConnection

TRUNCATE_WAIT_MS = 200


@dataclass
class Checkpoint:
    busy: bool  # a reader or writer kept the checkpoint from finishing
    frames: int  # in the -wal file before
    copied: int  # copied back into the database
    truncated: bool  # the -wal file was reset to 0 bytes


def checkpoint(bulk: BulkConnection, busy_timeout_ms: int) -> Checkpoint | None:
    """PASSIVE, then TRUNCATE if nothing holds an old snapshot (module docstring); None
    on PostgreSQL. `busy_timeout_ms`: the connection's own, restored afterwards."""
    if not bulk.sqlite:
        return None
    busy, frames, copied = (int(v) for v in bulk.rows("PRAGMA wal_checkpoint(PASSIVE)")[0])
    if busy or frames < 0 or copied < frames:
        return Checkpoint(bool(busy), frames, copied, False)
    bulk.rows(f"PRAGMA busy_timeout={TRUNCATE_WAIT_MS}")
    try:
        done = bulk.rows("PRAGMA wal_checkpoint(TRUNCATE)")[0]
    finally:
        bulk.rows(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
    return Checkpoint(bool(done[0]), frames, copied, not done[0])
