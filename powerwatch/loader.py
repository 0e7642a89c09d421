"""Loading one landing chunk: read, validate, store, quarantine, move. No Prefect here.

The order of effects is what makes a crash harmless at any point:
1. quarantine file written (deterministic name: rewriting it is harmless);
2. one database transaction: ledger row + readings + conflicts;
3. chunk moved out of landing/.
A crash before 2 commits leaves nothing in the database; a crash between 2
and 3 is recognised on the next run by the ledger (same name, same content
hash, committed) and only the move is redone.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandera.errors
import polars as pl

from db.bulk import BulkConnection
from db.load import StoreResult, begin_batch, find_committed_batch, finish_batch, store_readings
from db.tables import load_batches, power_readings, reading_conflicts
from powerwatch import landing
from powerwatch.concurrency import ReadAhead
from powerwatch.errors import ChunkError
from powerwatch.faults import fault_point
from powerwatch.settings import Settings
from schemas.reading import REASON, split_valid

WRITE_TABLES = (load_batches.name, power_readings.name, reading_conflicts.name)


@dataclass
class ChunkReport:
    chunk: str
    status: str  # loaded | already-loaded | unreadable
    rows_in: int = 0
    inserted: int = 0
    duplicates: int = 0
    conflicts: int = 0
    rejected_by_reason: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    error: str | None = None

    @property
    def rejected(self) -> int:
        return sum(self.rejected_by_reason.values())

    def as_row(self) -> dict[str, object]:
        return asdict(self) | {"rejected": self.rejected}


def source_kind(chunk: Path) -> str:
    """Chunks written by our capture are 'websocket'; anything else dropped in is 'manual'."""
    return "websocket" if chunk.name.startswith("capture-") else "manual"


def validate(frame: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Split into valid readings and rejected rows with reasons (whole-frame validation)."""
    try:
        return split_valid(frame)
    except pandera.errors.SchemaErrors as exc:
        raise ChunkError(f"does not match the reading schema: {_schema_reason(exc)}") from exc


def _schema_reason(exc: pandera.errors.SchemaErrors) -> str:
    cases = exc.failure_cases.filter(pl.col("index").is_null())
    parts = [f"{row['column']} {row['check']}" for row in cases.head(3).iter_rows(named=True)]
    return "; ".join(parts) or "schema error"


def count_reasons(rejected: pl.DataFrame) -> dict[str, int]:
    if rejected.is_empty():
        return {}
    counts = rejected.group_by(REASON).len()
    return dict(Counter(dict(zip(counts[REASON], counts["len"], strict=True))))


def _validated(frames: Iterator[pl.DataFrame]) -> Iterator[tuple[int, pl.DataFrame, pl.DataFrame]]:
    """(rows in, valid readings, rejected rows) per slice."""
    for frame in frames:
        yield frame.height, *validate(frame)


def load_chunk(bulk: BulkConnection, chunk: Path, settings: Settings) -> ChunkReport:
    """Load one chunk end to end; an unreadable chunk is set aside, never raised.

    The chunk is streamed in slices (bounded memory whatever its size), all in
    one transaction: the chunk is loaded whole or not at all.
    """
    started = time.perf_counter()
    report = ChunkReport(chunk=chunk.name, status="loaded")
    content_hash = landing.file_hash(chunk)
    if find_committed_batch(bulk, chunk.name, content_hash) is not None:
        landing.move(chunk, settings.loaded_dir)
        report.status = "already-loaded"
        return report
    result = StoreResult()
    rejected: list[pl.DataFrame] = []
    try:
        with bulk.transaction(lock_tables=WRITE_TABLES):
            batch_id = begin_batch(
                bulk,
                kind=source_kind(chunk),
                reference=chunk.name,
                input_name=chunk.name,
                content_hash=content_hash,
            )
            # The next slice is read and validated while the database stores this one.
            with ReadAhead(_validated(landing.iter_chunk(chunk))) as slices:
                for rows_in, valid, invalid in slices:
                    report.rows_in += rows_in
                    stored = store_readings(bulk, valid, batch_id)
                    fault_point("load.slice_stored")
                    rejected += [invalid, stored.unknown]
                    result += stored
            quarantined = pl.concat([pl.DataFrame(), *rejected], how="diagonal_relaxed")
            report.rejected_by_reason = count_reasons(quarantined)
            if not quarantined.is_empty():
                landing.write_atomically(
                    quarantined.with_columns(pl.lit(chunk.name).alias("chunk")),
                    settings.quarantine_dir / chunk.name,
                )
            finish_batch(
                bulk,
                batch_id,
                status="committed",
                rows_in=report.rows_in,
                result=result,
                rejected_by_reason=report.rejected_by_reason,
            )
    except ChunkError as exc:  # rolled back: nothing of this chunk is stored
        landing.set_aside(chunk, settings.failed_dir, str(exc))
        return ChunkReport(chunk=chunk.name, status="unreadable", error=str(exc))
    landing.move(chunk, settings.loaded_dir)
    report.inserted, report.duplicates = result.inserted, result.duplicates
    report.conflicts = result.conflicts
    report.seconds = time.perf_counter() - started
    return report
