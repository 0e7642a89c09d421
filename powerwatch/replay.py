"""Restore's second half: replay the loaded chunks since the snapshot, minus the archive.

A backup is a snapshot; `loaded/` holds every chunk committed since (retention deletes
a chunk only once a backup holds it, powerwatch/retention.py). So a restore is:
1. the snapshot put in place (powerwatch/backup.py: verified first);
2. every chunk of `loaded/`, oldest first (the loader's own order: modification time,
   then name), loaded again through the loader itself (`load_chunk`): the ledger skips
   those the snapshot holds already (same name and content hash), the others are
   stored exactly as they were the first time, first value winning, conflicts recorded;
3. the readings the archive holds taken out again: an archive run between the snapshot
   and now deleted them from the live database (they live in archive/ now), and step 1
   or 2 brought them back. For each archived UTC day that still has readings here,
   the day file's keys (station, timestamp) are deleted, in one transaction per day
   after the queued rollup hours were refreshed, as the archive itself does.
Afterwards the database holds every reading committed before the restore, as the live
one did (tests/test_replay.py compares them exactly, with an archive run in between).

The chunks are replayed from hard links in a hidden scratch folder under the data
folder (a copy where links are not possible): the loader's claims, moves and
quarantine writes happen there, and `loaded/`, `quarantine/` and `failed/` are only
read. Not replayed: legacy-log migrations committed after the snapshot (no chunk of
theirs is in `loaded/`); run those again (`migrate-logs --force`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import polars as pl

from db import rollups
from db.bulk import BulkConnection
from db.engine import bulk_connection
from db.tables import power_readings, stations
from powerwatch import archive, landing
from powerwatch.backup import RestoreReport, restore_database
from powerwatch.loader import load_chunk
from powerwatch.settings import Settings

SCRATCH_PREFIX = ".replay-"


@dataclass
class ReplayReport:
    replayed: int = 0  # chunks stored (committed after the snapshot)
    in_snapshot: int = 0  # chunks the snapshot held already
    inserted: int = 0
    unreadable: list[str] = field(default_factory=list)
    archived_dropped: int = 0  # readings the archive holds, taken out again
    seconds: float = 0.0


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
            raise
        shutil.copy2(source, target)  # keeps the modification time: the replay order


def replay_loaded(
    url: str,
    settings: Settings,
    *,
    include: Callable[[Path], bool] | None = None,
) -> ReplayReport:
    """Replay `settings.loaded_dir` (the chunks `include` accepts, default all) into the
    database `url`, then drop what the archive holds; see the module docstring."""
    started = time.perf_counter()
    report = ReplayReport()
    scratch = settings.data_dir / f"{SCRATCH_PREFIX}{uuid.uuid4().hex[:8]}"
    replay_settings = settings.model_copy(update={"data_dir": scratch, "database_url": url})
    try:
        replay_settings.landing_dir.mkdir(parents=True)
        for chunk in landing.list_chunks(settings.loaded_dir):
            if chunk.is_file() and (include is None or include(chunk)):
                _link_or_copy(chunk, replay_settings.landing_dir / chunk.name)
        with bulk_connection(url) as bulk:
            for chunk in landing.list_chunks(replay_settings.landing_dir):
                loaded = load_chunk(bulk, chunk, replay_settings)
                if loaded.status == "loaded":
                    report.replayed += 1
                    report.inserted += loaded.inserted
                elif loaded.status == "already-loaded":
                    report.in_snapshot += 1
                else:
                    report.unreadable.append(loaded.error or loaded.chunk)
            report.archived_dropped = drop_archived(bulk, settings.archive_dir)
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(scratch)
    report.seconds = round(time.perf_counter() - started, 3)
    return report


def _day(partition: str) -> date | None:
    try:
        return date.fromisoformat(partition.removeprefix("date="))
    except ValueError:
        return None


def drop_archived(bulk: BulkConnection, archive_root: Path) -> int:
    """Delete the stored readings whose (station, timestamp) an archive day file holds;
    only days that still have readings here are read. How many were deleted."""
    entries = archive.read_manifest(archive_root)
    days = {d: e for p, e in entries.items() if (d := _day(p)) is not None}
    if not days:
        return 0
    last = max(days) + timedelta(days=1)
    stored = archive.days_to_archive(bulk, datetime(last.year, last.month, last.day, tzinfo=UTC))
    ids = bulk.frame(f"SELECT name AS station, id AS station_id FROM {stations.name}").cast(
        {"station": pl.String, "station_id": pl.Int32}
    )
    dropped = 0
    for day in [d for d in stored if d in days]:
        keys = (
            pl.read_parquet(archive_root / days[day]["file"], columns=["station", "timestamp"])
            .join(ids, on="station")
            .select("station_id", pl.col("timestamp").dt.epoch("ms").alias("ts"))
        )
        with bulk.transaction(lock_tables=rollups.LOCK_TABLES, check_foreign_keys=False):
            rollups.refresh_pending(bulk)  # queued hours take their readings first
            bulk.ingest("pw_archived", keys.to_arrow(), temporary=True)
            try:
                dropped += bulk.delete(
                    f"FROM {power_readings.name} WHERE (station_id, ts) IN "
                    "(SELECT station_id, ts FROM pw_archived)"
                )
            finally:
                bulk.execute("DROP TABLE pw_archived")
    return dropped


def restore(
    backup_file: Path, url: str, settings: Settings, *, force: bool = False
) -> tuple[RestoreReport, ReplayReport]:
    """`powerwatch restore`: the verified snapshot, then every chunk loaded since."""
    restored = restore_database(backup_file, url, force=force)
    return restored, replay_loaded(url, settings)
