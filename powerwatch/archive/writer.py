"""Moving old readings out of the database into a hive-partitioned Parquet archive.

    $POWERWATCH_DATA_DIR/archive/date=2026-08-01/readings.parquet   one file per UTC day
    $POWERWATCH_DATA_DIR/archive-manifest.json                        beside it, outside the glob

Why one file per day (all stations, sorted by station then time, one row group
per station-day): "all stations over a day" opens one file; "one station over
a month" opens 30 and reads one row group of each (the row groups' statistics
on `station` let polars/DuckDB skip the others). The daily run writes each day
once; only late data rewrites a day. Station names live only *inside* the
files, never in a path, so no name can steer a write outside the archive.

Order of effects per day, so that a crash at any point loses and duplicates
nothing (tested):
1. write `.readings.parquet.<id>.tmp` (hidden, and not `*.parquet`: invisible to
   `archive/**/*.parquet`), station by station straight from the key range;
   if the day already has a file, each station's archived rows are merged in
   (old + new, one copy of each (station, timestamp));
2. one transaction, under the write lock: delete the day's rows station by
   station (each delete must remove exactly as many rows as were archived; a late
   reading that arrived meanwhile makes it differ) while, at the same time, the
   temp file is read back (row count and content checksum must equal those of the
   rows written);
3. only if both passed: write the new manifest under a temp name (the last step
   that needs space: a full disk fails here at the latest, before anything is
   renamed), rename the file over `readings.parquet` (atomic), rename the
   manifest into place, COMMIT. Anything failing before the commit rolls the
   deletes back and removes the temp files: the day stays in the database.
A crash between the rename and the commit leaves rows in both places; the next
run merges them away (they are equal) and deletes them. A crash anywhere leaves
at most hidden temp files, which the next run removes at its start (it holds the
archive lock, so no live archiver owns them). Fault points `archive.*`
(powerwatch.core.faults) mark each step; docs/design.md says what recovery
guarantees after each.

No Prefect here: plain functions over a `BulkConnection`, testable alone.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from db.bulk import BulkConnection
from db.queries import epoch_ms
from db.tables import READING_VALUE_COLUMNS, power_readings, stations
from powerwatch.archive.plan import ARCHIVE_FILE as ARCHIVE_FILE
from powerwatch.archive.plan import MANIFEST_FILE as MANIFEST_FILE
from powerwatch.archive.plan import ArchiveRun as ArchiveRun
from powerwatch.archive.plan import Cutoff as Cutoff
from powerwatch.archive.plan import DayReport as DayReport
from powerwatch.archive.plan import Reclaimed as Reclaimed
from powerwatch.archive.plan import _ms, leftovers
from powerwatch.archive.plan import days_to_archive as days_to_archive
from powerwatch.archive.plan import retention_cutoff as retention_cutoff
from powerwatch.archive.plan import summary_rows as summary_rows
from powerwatch.core.concurrency import map_ahead
from powerwatch.core.errors import ArchiveError
from powerwatch.core.faults import fault_point
from powerwatch.core.files import fsync_file
from powerwatch.core.storage import storage_failure
from powerwatch.rollups import refresh as rollups
from schemas.channels import CHANNELS, DAY_MS, LANDING_COLUMNS

LOCK_FILE = ".archive.lock"
ARCHIVE_SCHEMA: dict[str, pl.DataType] = dict(LANDING_COLUMNS)
_ARROW_SCHEMA = pl.DataFrame(schema=ARCHIVE_SCHEMA).to_arrow().schema
_SELECT_DAY = (
    f"SELECT ts, {', '.join(READING_VALUE_COLUMNS)} FROM {power_readings.name} "
    "WHERE station_id = :station AND ts >= :start AND ts < :end ORDER BY ts"
)


# --- the cut-off ------------------------------------------------------------------------


# --- paths and the manifest ---------------------------------------------------------------


def partition_dir(archive_root: Path, day: date) -> Path:
    """`archive/date=YYYY-MM-DD`; refuses anything that would resolve outside the archive."""
    root = archive_root.resolve()
    target = (root / f"date={day.isoformat()}").resolve()
    if target.parent != root:
        raise ArchiveError(f"archive partition {target} would be outside {root}")
    return target


def manifest_path(archive_root: Path) -> Path:
    return archive_root.parent / MANIFEST_FILE


_ENTRY_KEYS = {"file", "rows", "checksum"}


def read_manifest(archive_root: Path) -> dict[str, dict[str, Any]]:
    """Partition name (`date=…`) -> its entry; empty when nothing was archived yet.

    The archive writes the manifest itself, so a damaged one is a failed job
    (ArchiveError, exit 1, one line) and nothing is archived until an operator looks."""
    path = manifest_path(archive_root)
    if not path.exists():
        return {}
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))["partitions"]
        if not isinstance(entries, dict) or not all(
            isinstance(e, dict) and e.keys() >= _ENTRY_KEYS for e in entries.values()
        ):
            raise ValueError("an entry lacks file, rows or checksum")
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise ArchiveError(
            f"{path} is damaged ({type(exc).__name__}: {str(exc).splitlines()[0][:120]}); "
            "nothing archived: rebuild or restore it"
        ) from None
    return entries


def _prepare_manifest(archive_root: Path, entry: PartitionEntry) -> Path:
    """The manifest with `entry` recorded, written and synced under a hidden temp name
    (renamed into place by the caller once the day's file is in place)."""
    entries = read_manifest(archive_root)
    entries[entry.partition] = asdict(entry)
    body = {
        "about": "powerwatch archive: one entry per partition (archive/<partition>/"
        f"{ARCHIVE_FILE}); checksum as powerwatch.archive.writer.content_checksum",
        "partitions": dict(sorted(entries.items())),
    }
    path = manifest_path(archive_root)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        tmp.write_text(json.dumps(body, indent=1) + "\n", encoding="utf-8")
        fsync_file(tmp)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def remove_leftovers(archive_root: Path) -> list[Path]:
    """Remove the temp files of archivers that died (kill -9, power loss): day files
    being written and manifests being replaced. Call only under `_exclusive`: the
    lock is held by every live archiver while it has a temp file, so whatever is
    found while holding it belongs to a dead process."""
    found = leftovers(archive_root)
    for path in found:
        path.unlink(missing_ok=True)
    return found


def start_run(archive_root: Path) -> list[Path]:
    """What every run does first, under the archive lock: remove dead archivers' temp
    files and check the manifest can be read (a damaged one stops the run here)."""
    try:
        with _exclusive(archive_root):
            removed = remove_leftovers(archive_root)
            read_manifest(archive_root)
    except OSError as exc:
        raise storage_failure(exc, "archive") from exc
    return removed


# --- the content checksum -----------------------------------------------------------------


class ContentChecksum:
    """sha256 over the archive's content, fed one station-day (one row group) at a time.

    Stable across library versions (no polars/arrow hash): per group the station
    name and row count, then per column the values as little-endian 64-bit
    numbers and, for channels, a bitmap of which are null.
    """

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self.rows = 0

    def update(self, group: pl.DataFrame) -> None:
        names = group["station"].unique()
        if names.len() != 1:
            raise ArchiveError(f"a row group must hold one station, found {names.len()}")
        self._hash.update(f"{names[0]}\0{group.height}\0".encode())
        self._hash.update(_le_bytes(group["timestamp"].dt.epoch("ms"), "<i8"))
        no_nulls = bytes((group.height + 7) // 8)  # what packbits gives for all-False
        for channel in CHANNELS:
            column = group[channel.key]
            if column.null_count():
                self._hash.update(np.packbits(column.is_null().to_numpy()).tobytes())
                column = column.fill_null(0.0)
            else:  # the usual case: no copies, the column's own buffer is hashed
                self._hash.update(no_nulls)
            self._hash.update(_le_bytes(column, "<f8"))
        self.rows += group.height

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


def _le_bytes(column: pl.Series, dtype: str) -> memoryview:
    """The column's values as little-endian 64-bit numbers, without a copy where they
    already are (x86, ARM); hashlib reads the buffer directly."""
    values = np.ascontiguousarray(column.to_numpy()).astype(dtype, copy=False)
    return values.data.cast("B")


def content_checksum(path: Path) -> tuple[int, str]:
    """(rows, checksum) of an archive file, read back one row group at a time."""
    checksum = ContentChecksum()
    parquet = pq.ParquetFile(path)
    for i in range(parquet.num_row_groups):
        checksum.update(_to_frame(parquet.read_row_group(i)))
    return checksum.rows, checksum.hexdigest()


def _to_frame(table: pa.Table) -> pl.DataFrame:
    frame = pl.from_arrow(table)
    assert isinstance(frame, pl.DataFrame)
    return frame.cast(ARCHIVE_SCHEMA)  # type: ignore[arg-type]


# --- archiving one day --------------------------------------------------------------------


@dataclass(frozen=True)
class PartitionEntry:
    """One manifest entry: what `archive/<partition>/readings.parquet` holds."""

    partition: str
    file: str
    rows: int
    stations: int
    checksum: str
    first: str  # ISO-8601 UTC, earliest reading
    last: str
    archived_at: str


def _station_rows(bulk: BulkConnection, station_id: int, name: str, day: date) -> pl.DataFrame:
    start = _ms(datetime(day.year, day.month, day.day, tzinfo=UTC))
    batches = list(
        bulk.batches(_SELECT_DAY, {"station": station_id, "start": start, "end": start + DAY_MS})
    )
    if not batches:
        return pl.DataFrame(schema=ARCHIVE_SCHEMA)
    frame = pl.from_arrow(pa.Table.from_batches(batches))
    assert isinstance(frame, pl.DataFrame)
    return frame.select(
        pl.lit(name, pl.String).alias("station"),
        epoch_ms("ts").alias("timestamp"),
        *(pl.col(c.column).cast(pl.Float64).alias(c.key) for c in CHANNELS),
    )


# Connections reading stations' rows at once: reading through ADBC is the slowest part of
# writing a day; with two, the main thread encodes meanwhile (docs/benchmarks.md, "Tuning
# decisions").
READERS = 2


def _stored_rows(
    bulk: BulkConnection, ids: dict[str, int], names: list[str], day: date
) -> Iterator[tuple[str, pl.DataFrame]]:
    """Each station's stored rows of the day, in `names` order (empty for a station only
    in the archive file), read by READERS connections ahead of the caller."""
    with bulk.readers(READERS) as readers:

        def read(name: str) -> tuple[str, pl.DataFrame]:
            if name not in ids:
                return name, pl.DataFrame(schema=ARCHIVE_SCHEMA)
            reader = readers.get()
            try:
                return name, _station_rows(reader, int(ids[name]), name, day)
            finally:
                readers.put(reader)

        yield from map_ahead(read, names, READERS)


def _archived_groups(path: Path) -> dict[str, list[int]]:
    """Station name -> row groups of an existing day file."""
    if not path.exists():
        return {}
    parquet = pq.ParquetFile(path)
    column = parquet.schema_arrow.get_field_index("station")
    groups: dict[str, list[int]] = {}
    for i in range(parquet.num_row_groups):
        stats = parquet.metadata.row_group(i).column(column).statistics
        if stats is None or not stats.has_min_max or stats.min != stats.max:
            names = _to_frame(parquet.read_row_group(i))["station"].unique().to_list()
        else:
            names = [stats.min]
        for name in names:
            groups.setdefault(str(name), []).append(i)
    return groups


def _merge(archived: pl.DataFrame, stored: pl.DataFrame, day: date) -> tuple[pl.DataFrame, int]:
    """old + new, one row per timestamp; returns it and how many stored rows were archived
    already. A stored row that differs from its archived twin stops the day (nothing lost)."""
    if archived.is_empty():
        return stored, 0
    twins = stored.join(archived, on="timestamp", how="inner", suffix="_archived")
    if twins.height:
        differ = twins.filter(
            ~pl.all_horizontal(
                pl.col(c.key).eq_missing(pl.col(f"{c.key}_archived")) for c in CHANNELS
            )
        )
        if differ.height:
            raise ArchiveError(
                f"{day}: {differ.height} reading(s) of {differ['station'][0]} differ from their "
                "archived copy; the day stays in the database for an operator to look at"
            )
    merged = pl.concat([archived, stored.join(archived, on="timestamp", how="anti")])
    return merged.sort("timestamp"), twins.height


@contextmanager
def _exclusive(archive_root: Path) -> Iterator[None]:
    """One archiver at a time (a scheduled run and `powerwatch archive` by hand): the
    manifest is read-modify-written and a day's file rewritten; the second one waits."""
    archive_root.mkdir(parents=True, exist_ok=True)
    with open(archive_root.parent / LOCK_FILE, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def archive_day(bulk: BulkConnection, archive_root: Path, day: date) -> DayReport:
    """Archive one UTC day: write (merging an existing file), verify, rename, record, delete.

    A full disk or another I/O failure of the archive's file system is a failed job
    (DiskFull / StorageError, never retried as "busy"); the day stays in the database."""
    try:
        with _exclusive(archive_root):
            return _archive_day(bulk, archive_root, day)
    except OSError as exc:
        raise storage_failure(exc, f"archive {day}") from exc


def _archive_day(bulk: BulkConnection, archive_root: Path, day: date) -> DayReport:
    started = time.perf_counter()
    report = DayReport(day=day.isoformat())
    folder = partition_dir(archive_root, day)
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob(f".{ARCHIVE_FILE}.*.tmp"):  # a crashed run's; we hold the lock
        stale.unlink(missing_ok=True)
    final = folder / ARCHIVE_FILE
    tmp = folder / f".{ARCHIVE_FILE}.{uuid.uuid4().hex[:8]}.tmp"
    start = _ms(datetime(day.year, day.month, day.day, tzinfo=UTC))
    ids = dict(
        bulk.rows(
            f"SELECT name, id FROM {stations.name} s WHERE EXISTS (SELECT 1 FROM "
            f"{power_readings.name} p WHERE p.station_id = s.id AND p.ts >= :start "
            "AND p.ts < :end)",
            {"start": start, "end": start + DAY_MS},
        )
    )
    old_groups = _archived_groups(final)
    if not ids and not old_groups:
        return report  # nothing stored that day (any more): no empty file
    report.merged = bool(old_groups)
    expected: dict[int, int] = {}  # station id -> rows to delete
    written = ContentChecksum()
    bounds: list[datetime] = []
    manifest_tmp: Path | None = None
    try:
        old = pq.ParquetFile(final) if old_groups else None
        with pq.ParquetWriter(
            tmp, _ARROW_SCHEMA, compression="zstd", use_dictionary=["station"]
        ) as writer:
            names = sorted(set(ids) | set(old_groups))
            # The next stations' rows come out of the database (in threads) while this
            # one's are merged, encoded and hashed: the two halves overlap on two cores.
            for name, stored in _stored_rows(bulk, ids, names, day):
                if name in ids:
                    expected[int(ids[name])] = stored.height
                archived = (
                    pl.concat([_to_frame(old.read_row_group(i)) for i in old_groups[name]])
                    if old is not None and name in old_groups
                    else pl.DataFrame(schema=ARCHIVE_SCHEMA)
                )
                group, twins = _merge(archived.filter(pl.col("station") == name), stored, day)
                report.already_archived += twins
                if group.is_empty():
                    continue
                writer.write_table(
                    group.to_arrow().cast(_ARROW_SCHEMA), row_group_size=group.height
                )
                written.update(group)
                bounds += [group["timestamp"][0], group["timestamp"][-1]]  # sorted by time
        fsync_file(tmp)
        fault_point("archive.written")

        def verify() -> None:
            rows, checksum = content_checksum(tmp)
            if (rows, checksum) != (written.rows, written.hexdigest()):
                raise ArchiveError(
                    f"{day}: the written file reads back as {rows} rows / {checksum[:12]}…, "
                    f"expected {written.rows} / {written.hexdigest()[:12]}…; nothing deleted"
                )
            fault_point("archive.verified")

        def publish() -> None:
            nonlocal manifest_tmp
            manifest_tmp = _prepare_manifest(
                archive_root,
                PartitionEntry(
                    partition=folder.name,
                    file=f"{folder.name}/{ARCHIVE_FILE}",
                    rows=written.rows,
                    stations=len(set(ids) | set(old_groups)),
                    checksum=written.hexdigest(),
                    first=min(bounds).isoformat() if bounds else "",
                    last=max(bounds).isoformat() if bounds else "",
                    archived_at=datetime.now(UTC).isoformat(timespec="seconds"),
                ),
            )
            tmp.replace(final)
            fault_point("archive.renamed")
            manifest_tmp.replace(manifest_path(archive_root))
            fault_point("archive.manifest_written")

        deleting = time.perf_counter()
        report.archived = _delete_day(bulk, start, expected, day, verify=verify, publish=publish)
        report.delete_seconds = time.perf_counter() - deleting
    finally:
        tmp.unlink(missing_ok=True)
        if manifest_tmp is not None:
            manifest_tmp.unlink(missing_ok=True)
    report.file_rows, report.checksum = written.rows, written.hexdigest()
    report.seconds = time.perf_counter() - started
    return report


def _delete_day(
    bulk: BulkConnection,
    start: int,
    expected: dict[int, int],
    day: date,
    *,
    verify: Callable[[], None] = lambda: None,
    publish: Callable[[], None] = lambda: None,
) -> int:
    """One transaction that deletes the day's archived rows and commits only once the
    file is verified and in place: the rows are deleted (in a thread) while `verify`
    reads the file back here, then `publish` renames it and records it, then COMMIT.

    Why at once: the delete (one core, SQLite) and the read-back (the other core) were
    the two steps in a row after writing. Nobody sees the deletes before the commit, and
    if the check fails, or anything raises, the transaction rolls back: no reading
    leaves the database unless its file verified. A crash after `publish` but before the
    commit leaves the rows in both places; the next run merges them away (twins).

    Readings are only ever added (loads and migrations insert, nothing updates, and
    archivers are serialised), so a station-day holding exactly as many rows as were
    archived holds exactly those rows: the count the DELETE reports is the check. A
    late reading that arrived meanwhile makes it differ and rolls the day's delete back.
    """
    with bulk.transaction(lock_tables=rollups.LOCK_TABLES, check_foreign_keys=False):
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="delete") as pool:
            deleted = pool.submit(_delete_rows, bulk, start, expected, day)
            verify()  # if it raises, leaving the pool waits for the deletes, then rollback
            deleted.result()
        publish()
    fault_point("archive.deleted")
    return sum(expected.values())


def _delete_rows(bulk: BulkConnection, start: int, expected: dict[int, int], day: date) -> None:
    where = f"FROM {power_readings.name} WHERE station_id = :station AND ts >= :start AND ts < :end"
    # Queued rollup hours take their readings before these go (design.md: Rollups).
    rollups.refresh_pending(bulk)
    for station_id, rows in expected.items():
        deleted = bulk.delete(where, {"station": station_id, "start": start, "end": start + DAY_MS})
        if deleted != rows:
            raise ArchiveError(
                f"{day}: readings of station id {station_id} changed while archiving "
                f"({rows} archived, {deleted} now); kept, the next run merges them"
            )


# --- giving the space back ----------------------------------------------------------------


def reclaim_space(
    bulk: BulkConnection, *, step_pages: int = 2_048, pause: float = 0.01
) -> Reclaimed:
    """Give freed pages back after a delete without holding the write lock for long.

    SQLite with `auto_vacuum=INCREMENTAL` (new databases; see db/engine.py):
    `PRAGMA incremental_vacuum(N)` in steps of `step_pages` (8 MiB), each its own
    short write transaction, with a pause between so a loader gets the lock; then
    the WAL is truncated. A database created before that keeps its freed pages on
    the freelist, where new readings reuse them (a one-off offline `VACUUM` converts it).
    PostgreSQL: plain `VACUUM` (never blocks writers) makes the space reusable.
    """
    started = time.perf_counter()
    if not bulk.sqlite:
        bulk.conn.commit()
        bulk.conn.adbc_connection.set_autocommit(True)
        try:
            bulk.execute(f"VACUUM {power_readings.name}")
        finally:
            bulk.conn.adbc_connection.set_autocommit(False)
        return Reclaimed("postgresql vacuum", 0, time.perf_counter() - started)
    if int(bulk.scalar("PRAGMA auto_vacuum")) != 2:
        return Reclaimed("sqlite freelist (reused by new rows)", 0, time.perf_counter() - started)
    pages = 0
    while (free := int(bulk.scalar("PRAGMA freelist_count"))) > 0:
        bulk.rows(f"PRAGMA incremental_vacuum({min(step_pages, free)})")
        pages += free - int(bulk.scalar("PRAGMA freelist_count"))
        time.sleep(pause)
    bulk.rows("PRAGMA wal_checkpoint(TRUNCATE)")
    return Reclaimed("sqlite incremental vacuum", pages, time.perf_counter() - started)


def verify_archive(archive_root: Path) -> list[str]:
    """Problems found comparing every archived file with its manifest entry (empty: all good)."""
    problems = []
    entries = read_manifest(archive_root)
    for name, entry in entries.items():
        path = archive_root / entry["file"]
        if not path.exists():
            problems.append(f"{name}: {entry['file']} is missing")
            continue
        rows, checksum = content_checksum(path)
        if (rows, checksum) != (entry["rows"], entry["checksum"]):
            problems.append(
                f"{name}: {rows} rows / {checksum[:12]}… on disk, manifest says "
                f"{entry['rows']} / {entry['checksum'][:12]}…"
            )
    for path in archive_root.glob(f"*/{ARCHIVE_FILE}"):
        if path.parent.name not in entries:
            problems.append(f"{path.parent.name}: not in the manifest")
    return problems


# --- a whole run ---------------------------------------------------------------------------


def plan_run(
    bulk: BulkConnection, archive_root: Path, retention_days: int, now: datetime | None = None
) -> tuple[Cutoff, list[date]]:
    """A run's plan: the cut-off (the clock witnessed by the data), what crashed runs left
    settled (`start_run`: a damaged manifest stops the run here), and the days before the
    cut-off that still hold readings."""
    cutoff = retention_cutoff(bulk, retention_days, now)
    start_run(archive_root)
    return cutoff, list(days_to_archive(bulk, cutoff.before))


def archive_readings(
    bulk: BulkConnection, archive_root: Path, retention_days: int, now: datetime | None = None
) -> ArchiveRun:
    """Archive every whole day before the retention cut-off, then give the space back:
    in one process, the steps the `archive-readings` flow runs as tasks (`plan_run`,
    `archive_day` per day, `reclaim_space`), with the flow's rule for failures: a day
    that cannot be archived safely (ArchiveError) is reported and kept, the others go
    on; a full disk or a storage error ends the run (raised here, a Failed run there).
    For benchmarks and tests of the archive's own rules without a Prefect server.
    """
    cutoff, days = plan_run(bulk, archive_root, retention_days, now)
    reports: list[DayReport] = []
    failed: list[str] = []
    for day in days:
        try:
            reports.append(archive_day(bulk, archive_root, day))
        except ArchiveError as exc:
            failed.append(str(exc))
    reclaimed = reclaim_space(bulk) if reports else None
    return ArchiveRun(cutoff, reports, failed, reclaimed)
