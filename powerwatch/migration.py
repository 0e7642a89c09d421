"""Importing legacy log files (spec/legacy-logs.md) into the database. No Prefect here.

One file = one database transaction: ledger row + readings + conflicts commit
together or not at all. A migration killed in the middle of a file therefore
leaves nothing of that file, and the next run imports it whole: the result is
the database an uninterrupted run gives. The ledger is `load_batches` (kind
`log_migration`, the file's resolved path, the SHA-256 of its bytes): a file
whose content was imported before (under any name: rotation renames files) is
skipped unless forced.

The file streams through in blocks of lines (`powerwatch.legacy`), each block
parsed with polars, validated by the one pandera model (`split_valid`) and
stored through the one idempotent insert path (`db.load.store_readings`), so
memory stays bounded whatever the file's size.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Final, TypeVar

import polars as pl

from db.bulk import BulkConnection
from db.load import StoreResult, begin_batch, finish_batch, store_readings
from db.tables import data_sources, load_batches
from powerwatch.errors import InputError
from powerwatch.landing import file_hash
from powerwatch.legacy import (
    DEFAULT_TZ,
    LegacyLogError,
    ParsedBatch,
    detect_format,
    iter_batches,
    why_not_detected,
)
from powerwatch.loader import WRITE_TABLES, validate
from powerwatch.migration_report import QUOTED_LINES, FileReport, add_reasons
from schemas.channels import REASON

KIND: Final = "log_migration"
# Lines per block: ~40 MB of text, which with its parsed columns keeps a migration
# well under 400 MB, and is large enough that per-block costs (validation, the
# database round trips) stay small.
BATCH_LINES: Final = 200_000
_ISO_MS: Final = "%Y-%m-%dT%H:%M:%S%.3fZ"

Progress = Callable[[FileReport], None]
T = TypeVar("T")


def discover(paths: Iterable[Path]) -> list[Path]:
    """The files under `paths` (folders recursively), each once, in a stable order.

    Nothing is filtered by name: the format is told by content, and a file that
    is no log fails on its own with its reason. A path that does not exist is
    bad input (before anything is imported).
    """
    found: list[Path] = []
    seen: set[Path] = set()
    for path in paths:
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file())
        elif path.is_file():
            files = [path]
        else:
            raise InputError(f"no such file or folder: {path}")
        for file in files:
            resolved = file.resolve()
            if resolved not in seen:
                seen.add(resolved)
                found.append(resolved)
    return found


def find_imported(bulk: BulkConnection, content_hash: str) -> int | None:
    """The committed migration batch of a file with this content, if any."""
    found = bulk.scalar(
        f"SELECT b.id FROM {load_batches.name} b JOIN {data_sources.name} s "
        "ON s.id = b.source_id WHERE b.content_hash = ? AND b.status = 'committed' "
        "AND s.kind = ? ORDER BY b.id DESC LIMIT 1",
        [content_hash, KIND],
    )
    return None if found is None else int(found)


def import_file(
    bulk: BulkConnection,
    path: Path,
    *,
    tz: str = DEFAULT_TZ,
    force: bool = False,
    batch_lines: int = BATCH_LINES,
    progress: Progress | None = None,
) -> FileReport:
    """Import one legacy log file whole, or skip it if its content was imported before.

    Raises `LegacyLogError` (bad input: retrying cannot help) for a file that is
    not a log of format T, J or C, a damaged gzip stream or a CSV without its
    header, and `DatabaseUnavailable` (worth a retry) for a busy or unreachable
    database; in both cases nothing of the file is stored.
    """
    started = time.perf_counter()
    path = path.resolve()
    fmt = detect_format(path)
    if fmt is None:
        raise LegacyLogError(f"{path}: {why_not_detected(path)}")
    report = FileReport(path=str(path), format=fmt, content_hash=file_hash(path))
    tally = _Tally(report)
    with bulk.transaction(lock_tables=WRITE_TABLES):
        # Looked up under the write lock: two migrations of one file cannot both import it.
        if not force and find_imported(bulk, report.content_hash or "") is not None:
            report.status = "skipped"
            report.seconds = time.perf_counter() - started
            return report
        batch_id = begin_batch(
            bulk,
            kind=KIND,
            reference=str(path),
            input_name=str(path),
            content_hash=report.content_hash or "",
        )
        parsed = (
            (batch, *validate(batch.readings))
            for batch in iter_batches(path, fmt, tz=tz, batch_lines=batch_lines)
        )
        for batch, valid, invalid in read_ahead(parsed):
            stored = store_readings(bulk, valid, batch_id)
            tally.add(batch, valid, invalid, stored)
            if progress is not None:
                progress(report)
        finish_batch(
            bulk,
            batch_id,
            status="committed",
            rows_in=report.lines,
            result=tally.stored,
            rejected_by_reason=report.rejected_by_reason,
        )
    report.seconds = time.perf_counter() - started
    return report


def read_ahead(items: Iterator[T], depth: int = 1) -> Iterator[T]:
    """`items`, produced in a background thread up to `depth` ahead of the consumer.

    The database stores one block (its driver releases the GIL) while polars
    parses and validates the next: the two halves of an import overlap on two
    cores. An exception of the producer is raised in the consumer at the point
    it occurred; a consumer that stops early stops the producer.
    """
    handoff: queue.Queue[tuple[bool, object]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def offer(item: tuple[bool, object]) -> bool:
        while not stop.is_set():
            try:
                handoff.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not offer((False, item)):
                    return
        except BaseException as exc:  # handed to the consumer, raised there
            offer((True, exc))
            return
        offer((True, None))

    worker = threading.Thread(target=produce, name="read-ahead", daemon=True)
    worker.start()
    try:
        while True:
            done, value = handoff.get()
            if done:
                if isinstance(value, BaseException):
                    raise value
                return
            yield value  # type: ignore[misc]
    finally:
        stop.set()
        worker.join()


def failed_report(path: Path, error: str, attempts: int = 1) -> FileReport:
    """The report of a file that could not be imported (nothing of it was stored)."""
    fmt = detect_format(path) if path.is_file() else None
    return FileReport(
        path=str(path.resolve()), format=fmt, status="failed", attempts=attempts, error=error
    )


class _Tally:
    """Adds one parsed, validated and stored block to the file's report."""

    def __init__(self, report: FileReport) -> None:
        self.report = report
        self.stored = StoreResult()  # as the ledger counts: duplicates and conflicts apart
        self.reasons: Counter[str] = Counter()
        self.unknown: Counter[str] = Counter()
        self.first: datetime | None = None
        self.last: datetime | None = None

    def add(
        self,
        batch: ParsedBatch,
        valid: pl.DataFrame,
        invalid: pl.DataFrame,
        stored: StoreResult,
    ) -> None:
        r = self.report
        unknown = stored.unknown if "line" in stored.unknown.columns else None
        r.lines += batch.lines
        r.non_data += batch.non_data
        r.readings += batch.readings.height
        r.inserted += stored.inserted
        # The protocol's rule: the first stored reading wins, a later one is a duplicate
        # whether or not its values differ; `conflicts` says how many of them differed.
        r.duplicates += stored.duplicates + stored.conflicts
        r.conflicts += stored.conflicts
        self.stored.inserted += stored.inserted
        self.stored.duplicates += stored.duplicates
        self.stored.conflicts += stored.conflicts

        rejected = pl.concat(
            [
                batch.rejected.select("line", REASON),
                invalid.select("line", REASON),
                *([unknown.select("line", REASON)] if unknown is not None else []),
            ]
        )
        r.rejected += rejected.height
        if rejected.height:
            counts = rejected.group_by(REASON).len()
            add_reasons(self.reasons, dict(zip(counts[REASON], counts["len"], strict=True)))
            r.rejected_by_reason = dict(self.reasons)
            self._quote(batch, rejected)
        if unknown is not None and unknown.height:
            names = unknown.group_by("station").len()
            self.unknown.update(dict(zip(names["station"], names["len"], strict=True)))
            r.unknown_stations = dict(sorted(self.unknown.items()))
            valid = valid.join(unknown.select("line"), on="line", how="anti")
        self._time_range(valid)

    def _quote(self, batch: ParsedBatch, rejected: pl.DataFrame) -> None:
        wanted = QUOTED_LINES - len(self.report.first_rejected)
        if wanted <= 0:
            return
        first = rejected.sort("line").head(wanted)
        texts = batch.raw_lines(first["line"])
        self.report.first_rejected += [
            {"line": line, "reason": reason, "text": text}
            for (line, reason), text in zip(first.iter_rows(), texts, strict=True)
        ]

    def _time_range(self, valid: pl.DataFrame) -> None:
        if valid.is_empty():
            return
        ts = pl.col("timestamp")
        low, high = valid.select(ts.min().alias("low"), ts.max().alias("high")).row(0)
        self.first = low if self.first is None else min(self.first, low)
        self.last = high if self.last is None else max(self.last, high)
        stamps = pl.Series([self.first, self.last]).dt.strftime(_ISO_MS)
        self.report.first_timestamp, self.report.last_timestamp = stamps.to_list()
