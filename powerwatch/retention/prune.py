"""Retention of the data folders: what may be deleted, and only when nothing needs it.

    quarantine/, failed/, dead-letter/   kept `rejects_retention_days` (30) after they were
                                         written, then deleted; their counts stay in the
                                         ledger (`load_batches.rejected_by_reason`) and in
                                         the runs' artifacts
    loaded/                              a chunk is the system's write-ahead log: deleted
                                         only once the database can be rebuilt without it

A loaded chunk is deleted when all of these hold:
1. the ledger holds its committed batch (same name and content hash);
2. the newest verified backup holds that batch: its manifest's ledger mark (the newest
   batch in the snapshot) is at or after it, and the mark names the same row of this
   database's ledger (a database restored from an older backup reuses batch ids: then
   no backup covers anything until the next one is taken);
3. none of its readings stamped before the archive's cut-off are still waiting to be
   archived: every UTC day before the cut-off that it touches has no readings left in
   the database (the archive verified them into its files before deleting them).
Everything else is kept and counted with the reason. Ages are file modification times
(a rename keeps it: a quarantine or failed file's age is the chunk's).

No Prefect here: `tasks/retention.py` and the `apply-retention` flow call this.
"""

from __future__ import annotations

import shutil
import stat
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import polars as pl

from db.bulk import BulkConnection
from db.tables import load_batches
from powerwatch.archive import writer as archive
from powerwatch.backup import snapshots as backup
from powerwatch.core.errors import BackupError
from powerwatch.core.settings import Settings
from powerwatch.load.ingest import committed_batches
from powerwatch.load.landing import file_hash

KEEP_NO_BACKUP = "not in a backup yet"
KEEP_NO_LEDGER = "no committed batch in the ledger"
KEEP_ARCHIVE = "readings before the archive cut-off not archived yet"
KEEP_UNREADABLE = "timestamps unreadable"
KEEP_OTHER_HISTORY = "newest backup is of another ledger history"


@dataclass
class FolderReport:
    folder: str
    deleted: int = 0
    bytes: int = 0
    kept: int = 0
    kept_by_reason: dict[str, int] = field(default_factory=dict)

    def as_row(self) -> dict[str, object]:
        reasons = "; ".join(f"{n} {why}" for why, n in sorted(self.kept_by_reason.items()))
        return {
            "folder": self.folder,
            "deleted": self.deleted,
            "bytes freed": self.bytes,
            "kept": self.kept,
            "kept because": reasons,
        }


def _size(path: Path) -> int:
    if path.is_dir() and not path.is_symlink():
        return sum(p.lstat().st_size for p in path.rglob("*") if p.is_file())
    return path.lstat().st_size


def _remove(path: Path) -> int:
    """Delete a file (or a directory set aside in failed/), never following a link;
    the bytes freed (0 if another run removed it first)."""
    try:
        size = _size(path)
        if stat.S_ISDIR(path.lstat().st_mode):
            shutil.rmtree(path)
        else:
            path.unlink()
    except FileNotFoundError:
        return 0
    return size


def expire_files(folder: Path, keep_days: int, now: datetime | None = None) -> FolderReport:
    """Delete every entry of `folder` last modified more than `keep_days` ago.

    A set-aside chunk's `.reason.txt` goes with its chunk (and stays while it does)."""
    report = FolderReport(folder.name)
    if not folder.is_dir():
        return report
    limit = ((now or datetime.now(UTC)) - timedelta(days=keep_days)).timestamp()
    entries = sorted(folder.iterdir())
    names = {p.name for p in entries}
    for path in entries:
        reason_of = path.name.removesuffix(".reason.txt")
        if path.name.endswith(".reason.txt") and reason_of in names:
            continue  # judged with its chunk
        try:
            old = path.lstat().st_mtime < limit
        except FileNotFoundError:
            continue
        companion = path.with_name(path.name + ".reason.txt")
        if not old:
            report.kept += 1
            continue
        for victim in (path, companion):
            if victim.name in names:
                report.bytes += _remove(victim)
        report.deleted += 1
    if report.kept:
        report.kept_by_reason = {f"younger than {keep_days} days": report.kept}
    return report


# --- loaded/ ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Coverage:
    """What the newest backup and the archive hold, read once per run."""

    backup: str | None  # the newest verified backup's file name
    covered_up_to: int | None  # batch ids up to this are in it (None: nothing covered)
    why_not: str | None  # why nothing is covered, when it is not
    cutoff: date  # days before this belong in the archive
    pending_days: frozenset[date]  # days before the cut-off still holding readings


def coverage(bulk: BulkConnection, settings: Settings, now: datetime | None = None) -> Coverage:
    backups = backup.list_backups(settings.backups_dir)
    newest = backups[0].name if backups else None
    covered: int | None = None
    why_not: str | None = KEEP_NO_BACKUP
    if backups:
        try:
            mark = backup.Manifest.read(backups[0]).ledger
        except BackupError:
            mark = None
        if mark is not None:
            live = bulk.rows(
                f"SELECT input_name, content_hash FROM {load_batches.name} WHERE id = :id",
                {"id": mark.batch_id},
            )
            if live == [(mark.input_name, mark.content_hash)]:
                covered, why_not = mark.batch_id, None
            else:
                why_not = KEEP_OTHER_HISTORY
    cutoff = archive.retention_cutoff(bulk, settings.retention_days, now)
    pending = frozenset(archive.days_to_archive(bulk, cutoff.before))
    return Coverage(newest, covered, why_not, cutoff.before.date(), pending)


def _days(chunk: Path) -> tuple[date, date] | None:
    """First and last UTC day of a chunk's timestamps (None: unreadable or empty)."""
    try:
        bounds = (
            pl.scan_parquet(chunk)
            .select(
                pl.col("timestamp").dt.epoch("ms").min().alias("lo"),
                pl.col("timestamp").dt.epoch("ms").max().alias("hi"),
            )
            .collect()
        )
    except (OSError, pl.exceptions.PolarsError):
        return None
    lo, hi = bounds["lo"][0], bounds["hi"][0]
    if lo is None or hi is None:
        return None

    def day(ms: int) -> date:
        return datetime.fromtimestamp(ms / 1000, tz=UTC).date()

    return day(lo), day(hi)


def why_keep(chunk: Path, batch: int | None, cover: Coverage) -> str | None:
    """Why a loaded chunk must stay (None: the database can be rebuilt without it)."""
    if batch is None:
        return KEEP_NO_LEDGER
    if cover.covered_up_to is None or batch > cover.covered_up_to:
        return cover.why_not or KEEP_NO_BACKUP
    days = _days(chunk)
    if days is None:
        return KEEP_UNREADABLE
    first, last = days
    if first < cover.cutoff:
        before_cutoff = _day_range(first, min(last, cover.cutoff - timedelta(days=1)))
        if not cover.pending_days.isdisjoint(before_cutoff):
            return KEEP_ARCHIVE
    return None


def _day_range(first: date, last: date) -> Iterable[date]:
    return (first + timedelta(days=i) for i in range((last - first).days + 1))


def expire_loaded(
    bulk: BulkConnection, settings: Settings, now: datetime | None = None
) -> FolderReport:
    """Delete the loaded chunks the database can be rebuilt without (module docstring)."""
    folder = settings.loaded_dir
    report = FolderReport(folder.name)
    if not folder.is_dir():
        return report
    cover = coverage(bulk, settings, now)
    chunks = sorted(p for p in folder.iterdir() if p.is_file() and not p.is_symlink())
    chunks = [p for p in chunks if p.name.endswith(".parquet") and not p.name.startswith(".")]
    others = sum(1 for p in folder.iterdir()) - len(chunks)
    kept: Counter[str] = Counter()
    if others:
        kept["not a chunk (set aside by hand?)"] = others
    ledger = committed_batches(bulk, [p.name for p in chunks]) if cover.covered_up_to else {}
    for chunk in chunks:
        if cover.covered_up_to is None:  # nothing can go: no need to hash anything
            kept[cover.why_not or KEEP_NO_BACKUP] += 1
            continue
        reason = why_keep(chunk, ledger.get((chunk.name, file_hash(chunk))), cover)
        if reason is not None:
            kept[reason] += 1
            continue
        report.bytes += _remove(chunk)
        report.deleted += 1
    report.kept = sum(kept.values())
    report.kept_by_reason = dict(kept)
    return report


@dataclass
class RetentionRun:
    folders: list[FolderReport]
    backup: str | None = None

    def rows(self) -> list[dict[str, object]]:
        return [f.as_row() for f in self.folders]


def expire_rejects(settings: Settings, now: datetime | None = None) -> list[FolderReport]:
    """quarantine/, failed/, dead-letter/: older than `rejects_retention_days` go."""
    days = settings.rejects_retention_days
    return [
        expire_files(folder, days, now)
        for folder in (settings.quarantine_dir, settings.failed_dir, settings.dead_letter_dir)
    ]


def apply_retention(
    bulk: BulkConnection, settings: Settings, now: datetime | None = None
) -> RetentionRun:
    """Every folder retention at once (the flow runs the same two steps as tasks)."""
    loaded = expire_loaded(bulk, settings, now)
    backups = backup.list_backups(settings.backups_dir)
    return RetentionRun(
        [*expire_rejects(settings, now), loaded], backups[0].name if backups else None
    )
