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
stored through the one ingest path (`powerwatch.load.ingest`, as chunk loads), so memory stays
bounded whatever the file's size.

`powerwatch.load.ingest` asks "imported already?" of the ledger under the write lock, in the
transaction that then imports, so two migrations of one file (or a re-run after a
crash) import it once; readings are counted by the same rule as every load (a
duplicate is any reading whose key was stored, `conflicts` of them differed).
Fault points: `migrate.parsed` (a part parsed and validated, not stored),
`migrate.committed` (the file's transaction committed) and, in the flow,
`migrate.recorded`.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from itertools import islice
from pathlib import Path
from typing import Any, Final

import polars as pl

from db.bulk import BulkConnection
from db.tables import data_sources, load_batches
from powerwatch.core.concurrency import ReadAhead, map_ahead
from powerwatch.core.errors import InputError
from powerwatch.core.faults import fault_point
from powerwatch.legacy.formats import Format, LegacyLogError, detect_format, why_not_detected
from powerwatch.legacy.lines import ReadPosition
from powerwatch.legacy.parsers import DEFAULT_TZ, ParsedBatch, iter_block_jobs
from powerwatch.legacy.report import QUOTED_LINES, FileReport, add_reasons
from powerwatch.load.chunks import validate
from powerwatch.load.ingest import ingest
from powerwatch.load.landing import file_hash
from powerwatch.load.store import UNKNOWN_STATION, StoreResult, prepare, station_ids
from schemas.channels import REASON
from schemas.jsonlines import LINE

KIND: Final = "log_migration"
# Lines parsed at once, and lines per part (validated and stored at once): one block per
# part. Parsing's cost is mostly per call (building polars expressions, small columns), so
# bigger blocks cut its CPU per line, for a little more peak memory; parts stay small
# enough that the parts in flight stay small (docs/benchmarks.md, "Tuning decisions").
PARSE_LINES: Final = 20_000
STORE_ROWS: Final = 20_000
# Parts parsed at once, in threads, while the caller's thread stores the part before.
# Two were slower and heavier than one on 2 cores: the store and the parse already fill
# both, and polars parallelises each parse (docs/benchmarks.md, "Tuning decisions").
PARSE_WORKERS: Final = 1

# After each stored part: the file's report so far, and the bytes of the file read.
Progress = Callable[[FileReport, int], None]


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
        "ON s.id = b.source_id WHERE b.content_hash = :hash "
        "AND b.status = 'committed' AND s.kind = :kind ORDER BY b.id DESC LIMIT 1",
        {"hash": content_hash, "kind": KIND},
    )
    return None if found is None else int(found)


def import_file(
    bulk: BulkConnection,
    path: Path,
    *,
    tz: str = DEFAULT_TZ,
    force: bool = False,
    parse_lines: int = PARSE_LINES,
    store_rows: int = STORE_ROWS,
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
    report = FileReport(path=str(path), format=fmt)

    def parts(known: pl.Series) -> ReadAhead[_Part]:
        return ReadAhead(_parse(path, fmt, tz, known, parse_lines, store_rows))

    # Parsing starts while the file is hashed (hashlib releases the GIL); if the
    # file turns out to be imported already, only a part or two was parsed for nothing.
    with bulk.transaction():  # a short read: a busy or lost database is DatabaseUnavailable
        known = station_ids(bulk)["station"]
    ahead = parts(known)
    try:
        content_hash = report.content_hash = file_hash(path)
        with ingest(
            bulk,
            kind=KIND,
            input_name=str(path),
            reference=str(path),
            content_hash=content_hash,
            committed=lambda b: None if force else find_imported(b, content_hash),
        ) as batch:
            # Under the write lock: two migrations of one file cannot both import it.
            if batch is None:
                report.status = "skipped"
                report.seconds = time.perf_counter() - started
                return report
            ids = station_ids(bulk)
            if not ids["station"].sort().equals(known.sort()):  # a station was added meanwhile
                ahead.close()
                ahead = parts(ids["station"])
            for part in ahead:
                fault_point("migrate.parsed")
                stored = batch.store(prepare(part.valid, ids))
                part.add_to(report, stored)
                if progress is not None:
                    progress(report, part.bytes_read)
            batch.rows_in, batch.rejected_by_reason = report.lines, report.rejected_by_reason
        fault_point("migrate.committed")
    finally:
        ahead.close()
    report.seconds = time.perf_counter() - started
    return report


def failed_report(path: Path, error: str, attempts: int = 1) -> FileReport:
    """The report of a file that could not be imported (nothing of it was stored)."""
    fmt = detect_format(path) if path.is_file() else None
    return FileReport(
        path=str(path.resolve()), format=fmt, status="failed", attempts=attempts, error=error
    )


@dataclass
class _Part:
    """Some consecutive blocks of a file, parsed and validated: their counts, their
    rejections (reasons, the first few quoted) and the readings left to store."""

    valid: pl.DataFrame
    lines: int = 0
    non_data: int = 0
    readings: int = 0
    rejected: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    unknown: Counter[str] = field(default_factory=Counter)
    quotes: list[dict[str, Any]] = field(default_factory=list)
    first: datetime | None = None
    last: datetime | None = None
    bytes_read: int = 0  # of the file as stored, when this part was parsed

    def add_to(self, report: FileReport, stored: StoreResult) -> None:
        """Count this part, and what storing its readings gave, into the file's report."""
        if "line" in stored.unknown.columns and stored.unknown.height:
            # Screened out while parsing; only a station removed since then lands here.
            self._reject_unknown(stored.unknown)
        r = report
        r.lines += self.lines
        r.non_data += self.non_data
        r.readings += self.readings
        r.inserted += stored.inserted
        r.duplicates += (
            stored.repeated
        )  # one counting rule in every report (powerwatch/load/ingest.py)
        r.conflicts += stored.conflicts
        r.rejected += self.rejected
        reasons = Counter(r.rejected_by_reason)
        add_reasons(reasons, dict(self.reasons))
        r.rejected_by_reason = dict(reasons)
        r.unknown_stations = dict(sorted((Counter(r.unknown_stations) + self.unknown).items()))
        r.first_rejected += self.quotes[: QUOTED_LINES - len(r.first_rejected)]
        if self.first is not None and self.last is not None:
            low, high = _iso(self.first), _iso(self.last)
            r.first_timestamp = min(r.first_timestamp or low, low)
            r.last_timestamp = max(r.last_timestamp or high, high)

    def _reject_unknown(self, unknown: pl.DataFrame) -> None:
        self.rejected += unknown.height
        self.reasons[UNKNOWN_STATION] += unknown.height
        self.unknown.update(unknown["station"].to_list())


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _parse(
    path: Path, fmt: Format, tz: str, known: pl.Series, parse_lines: int, store_rows: int
) -> Iterator[_Part]:
    """The file as `_Part`s of `store_rows` lines (rounded up to whole blocks of
    `parse_lines`), parsed and validated by `PARSE_WORKERS` threads, yielded in order.

    Reading lines is sequential and cheap (this thread); parsing and validating a
    part is independent of the other parts and releases the GIL inside polars, so
    it runs in worker threads while the caller stores the part before: the work of
    both cores overlaps (`powerwatch.core.concurrency.map_ahead`, at most
    `PARSE_WORKERS` parts in flight). Small blocks keep parsing's intermediate columns
    small (memory); a part is validated and stored whole, so validation's per-call
    cost (pandera's, ~15 ms) and a store's fixed costs are paid once per part. A part
    keeps its blocks' text until it is validated, so that any rejected line can be
    quoted.
    """
    position = ReadPosition()
    per_part = max(1, -(-store_rows // parse_lines))

    def groups() -> Iterator[tuple[list[Callable[[], ParsedBatch]], int]]:
        jobs = iter_block_jobs(path, fmt, tz=tz, batch_lines=parse_lines, position=position)
        while group := list(islice(jobs, per_part)):
            yield group, position.value

    def work(group: tuple[list[Callable[[], ParsedBatch]], int]) -> _Part:
        jobs, bytes_read = group
        part = _validated([job() for job in jobs], known, QUOTED_LINES)
        part.bytes_read = bytes_read
        return part

    if PARSE_WORKERS > 1:
        yield from map_ahead(work, groups(), PARSE_WORKERS)
    else:  # in this thread (the caller's read-ahead): no part more in flight than needed
        yield from map(work, groups())


def _validated(batches: list[ParsedBatch], known: pl.Series, quotes: int) -> _Part:
    """Validate the readings of consecutive blocks at once and account for every line.

    The registry check is the join `store_readings` does too: done here, readings
    of unknown stations can be quoted like any rejected line.
    """
    readings = pl.concat([b.readings for b in batches])
    good, invalid = validate(readings)
    registered = good.select(pl.col("station").is_in(known.implode())).to_series()
    unknown = good.filter(~registered)
    good = good.filter(registered)
    rejected = pl.concat(
        [
            *(b.rejected.select(LINE, REASON) for b in batches),
            invalid.select(LINE, REASON),
            unknown.select(LINE, pl.lit(UNKNOWN_STATION).alias(REASON)),
        ]
    )
    part = _Part(
        valid=good.drop(LINE),
        lines=sum(b.lines for b in batches),
        non_data=sum(b.non_data for b in batches),
        readings=readings.height,
        rejected=rejected.height,
    )
    if rejected.height:
        counts = rejected.group_by(REASON).len()
        add_reasons(part.reasons, dict(zip(counts[REASON], counts["len"], strict=True)))
        part.unknown.update(unknown["station"].to_list())
    if rejected.height and quotes > 0:
        for line, reason in rejected.sort(LINE).head(quotes).iter_rows():
            [batch] = [b for b in batches if b.first_line <= line < b.first_line + b.lines]
            text = batch.raw_lines(pl.Series([line]))[0]
            part.quotes.append({"line": line, "reason": reason, "text": text})
    if good.height:
        ts = pl.col("timestamp")
        part.first, part.last = good.select(ts.min().alias("low"), ts.max().alias("high")).row(0)
    return part
