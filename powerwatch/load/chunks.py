"""Loading one landing chunk: claim, read, validate, store, quarantine, move. No Prefect here.

The order of effects is what makes a crash harmless at any point:
1. the chunk is claimed (renamed into landing/.claimed/, `landing.claim`): one loader
   has it, another that listed it too finds it gone and skips it;
2. quarantine file written (deterministic name: rewriting it is harmless);
3. one database transaction, under the write lock: "committed already?" (the ledger)
   then ledger row + readings + conflicts (the one ingest path, `powerwatch.load.ingest`);
4. chunk moved from its claim into loaded/.
A crash before 3 commits leaves nothing in the database; the claim of a dead loader
is put back into landing/ by the next run (`landing.recover_claims`). A crash between
3 and 4 is recognised on the next run by the ledger (same name, same content hash,
committed), checked under the write lock, so two loaders can never both commit a
chunk: only the move is redone. A job failure (disk full, database damaged or busy)
gives the claim back to landing/ at once.

The fault points (`powerwatch.core.faults`) mark these steps: `load.claimed`,
`load.slice_stored`, `load.committed`, `load.moved`.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import cast

import pandera.errors
import polars as pl
import pyarrow as pa
import pyarrow.ipc
import pyarrow.parquet as pq

from db.bulk import BulkConnection
from powerwatch.core.concurrency import ReadAhead
from powerwatch.core.errors import ChunkError, from_os_error
from powerwatch.core.faults import fault_point
from powerwatch.core.parquet_files import write_parquet_atomically
from powerwatch.core.settings import Settings
from powerwatch.load import landing
from powerwatch.load.ingest import ingest
from powerwatch.load.store import find_committed_batch, prepare, station_ids
from schemas.reading import REASON, split_valid

TAKEN = "taken"  # another loader claimed the chunk first: this one counts nothing


@dataclass
class ChunkReport:
    chunk: str
    status: str  # loaded | already-loaded | unreadable | taken
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


# A chunk is "in time order" when no slice starts more than this before the previous one
# ended: live capture interleaves stations with a little jitter.
ORDER_TOLERANCE_MS = 60_000


def in_time_order(path: Path, rows: int | None = None) -> Iterator[pl.DataFrame]:
    """The chunk's slices (`landing.iter_chunk`), in time order whatever the file's order.

    Why: a slice's rows are inserted in key order, but slices of a chunk in random or
    station order each span the whole time range, so every later slice inserts into the
    middle of what the earlier ones stored (B-tree page splits all over the table; issue
    14; docs/benchmarks.md, "Load by row order"). Such a
    chunk is first split by time range into buckets of about a slice each (written to a
    scratch folder as Parquet, one pass), then loaded bucket by bucket: as a chunk in time
    order is. Memory stays bounded: the timestamps are read alone (8 bytes a row) to
    choose the ranges, and one slice or one bucket is in memory at a time. Rows of one
    (station, timestamp) fall into one bucket in file order, so the first occurrence
    still wins. A chunk already in time order (or of one slice) is streamed as it is.
    """
    size = rows or landing.SLICE_ROWS
    try:
        count = pq.ParquetFile(path).metadata.num_rows
        times = None
        if count > size:
            times = _epoch_ms(pl.from_arrow(pq.read_table(path, columns=["timestamp"])))
    except Exception:  # unreadable or off-contract: iter_chunk names why (ChunkError)
        yield from landing.iter_chunk(path, size)
        return
    if times is None or _ordered(times, size):
        yield from landing.iter_chunk(path, size)
        return
    buckets = -(-count // size)
    # Quantiles of the timestamps: buckets of about `size` rows, however skewed the times.
    bounds = times.sort().gather([k * count // buckets for k in range(1, buckets)]).unique()
    del times
    with tempfile.TemporaryDirectory(prefix="powerwatch-order-") as scratch:
        # Arrow IPC streams, uncompressed: the scratch copy costs a memory copy, not an
        # encode (Parquet with lz4 took 2x as long as reading the chunk).
        writers: dict[int, pa.ipc.RecordBatchStreamWriter] = {}
        try:
            for frame in landing.iter_chunk(path, size):
                keys = frame["timestamp"].dt.epoch("ms").fill_null(0)
                frame = frame.with_columns(bounds.search_sorted(keys, side="right").alias("_b"))
                for (bucket, *_), part in frame.partition_by("_b", as_dict=True).items():
                    table = part.drop("_b").to_arrow()
                    number = int(cast(int, bucket))
                    if number not in writers:
                        writers[number] = pa.ipc.new_stream(
                            Path(scratch) / f"{number:06d}.arrows", table.schema
                        )
                    writers[number].write_table(table)
        finally:
            for writer in writers.values():
                writer.close()
        for number in sorted(writers):
            yield pl.read_ipc_stream(Path(scratch) / f"{number:06d}.arrows")


def _epoch_ms(frame: pl.DataFrame | pl.Series) -> pl.Series | None:
    """The timestamps as epoch ms (any unit or zone), or None if they are no datetimes."""
    assert isinstance(frame, pl.DataFrame)
    column = frame.to_series()
    if not isinstance(column.dtype, pl.Datetime):
        return None
    return column.dt.epoch("ms").fill_null(0)


def _ordered(times: pl.Series, size: int) -> bool:
    """No slice of `size` rows starts more than ORDER_TOLERANCE_MS before the previous one's
    latest timestamp."""
    index = pl.int_range(0, times.len(), eager=True) // size
    spans = (
        pl.DataFrame({"slice": index, "ts": times})
        .group_by("slice")
        .agg(pl.col("ts").min().alias("lo"), pl.col("ts").max().alias("hi"))
        .sort("slice")
    )
    earlier = spans["hi"].cum_max().shift(1)
    return bool(((spans["lo"] - earlier).fill_null(0) >= -ORDER_TOLERANCE_MS).all())


def load_chunk(bulk: BulkConnection, chunk: Path, settings: Settings) -> ChunkReport:
    """Claim one chunk and load it end to end; an unreadable chunk is set aside, never
    raised; a chunk another loader claimed first is skipped (status `taken`).

    A job failure (the database busy, damaged or full, the disk full) raises, after
    giving the claim back to landing/.
    """
    try:
        claimed = landing.claim(chunk)
    except OSError as exc:  # landing/.claimed/ cannot be made (disk full, read-only)
        raise from_os_error(exc, f"load {chunk.name}") from exc
    if claimed is None:
        return ChunkReport(chunk=chunk.name, status=TAKEN)
    try:
        fault_point("load.claimed")
        return _load_claimed(bulk, claimed, chunk.name, settings)
    except OSError as exc:
        _give_back(claimed)
        raise from_os_error(exc, f"load {chunk.name}") from exc
    except BaseException:
        _give_back(claimed)
        raise


def _give_back(claimed: Path) -> None:
    if not claimed.exists() and not claimed.is_symlink():
        return  # moved on already (loaded/ or failed/)
    # If even that fails, the claim stays: the next run recovers it once this process is gone.
    with contextlib.suppress(OSError):
        landing.release(claimed)


def _load_claimed(
    bulk: BulkConnection, claimed: Path, name: str, settings: Settings
) -> ChunkReport:
    """Load a chunk this process has claimed (streamed in slices, bounded memory, all in
    one transaction: the chunk is loaded whole or not at all)."""
    started = time.perf_counter()
    report = ChunkReport(chunk=name, status="loaded")
    why_not = landing.not_a_regular_file(claimed)
    if why_not is not None:  # never opened: a FIFO or a device would block or never end
        return _set_aside(claimed, name, f"{name}: {why_not}", settings)
    content_hash = landing.file_hash(claimed)
    rejected: list[pl.DataFrame] = []
    try:
        with ingest(
            bulk,
            kind=source_kind(claimed.with_name(name)),
            input_name=name,
            reference=name,
            content_hash=content_hash,
            committed=lambda b: find_committed_batch(b, name, content_hash),
        ) as batch:
            if batch is None:
                report.status = "already-loaded"
            else:
                # The next slice is read, validated and prepared while the database stores
                # this one. Station ids read once, under the write lock.
                ids = station_ids(bulk)
                prepared = (
                    (rows_in, prepare(valid, ids), invalid)
                    for rows_in, valid, invalid in _validated(in_time_order(claimed))
                )
                with ReadAhead(prepared) as slices:
                    for rows_in, ready, invalid in slices:
                        batch.rows_in += rows_in
                        stored = batch.store(ready)
                        rejected += [invalid, stored.unknown]
                        fault_point("load.slice_stored")
                quarantined = pl.concat([pl.DataFrame(), *rejected], how="diagonal_relaxed")
                batch.rejected_by_reason = count_reasons(quarantined)
                if not quarantined.is_empty():
                    write_parquet_atomically(
                        quarantined.with_columns(pl.lit(name).alias("chunk")),
                        settings.quarantine_dir / name,
                    )
                report.rows_in, report.rejected_by_reason = batch.rows_in, batch.rejected_by_reason
                # One counting rule in every report (powerwatch/load/ingest.py).
                stored_all = batch.stored
                report.inserted, report.duplicates = stored_all.inserted, stored_all.repeated
                report.conflicts = stored_all.conflicts
    except ChunkError as exc:  # rolled back: nothing of this chunk is stored
        return _set_aside(claimed, name, str(exc).replace(claimed.name, name), settings)
    fault_point("load.committed")
    landing.move(claimed, settings.loaded_dir, name)
    fault_point("load.moved")
    report.seconds = time.perf_counter() - started
    return report


def _set_aside(claimed: Path, name: str, reason: str, settings: Settings) -> ChunkReport:
    landing.set_aside(claimed, settings.failed_dir, reason, name)
    return ChunkReport(chunk=name, status="unreadable", error=reason)
