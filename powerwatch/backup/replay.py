"""Restore's second half: replay the loaded chunks since the snapshot, minus the archive.

A backup is a snapshot; `loaded/` holds every chunk committed since (retention deletes
a chunk only once a backup holds it, powerwatch/retention/prune.py). So a restore is:
1. the snapshot put in place (powerwatch/backup/snapshots.py: verified first);
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
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import polars as pl

from db.bulk import BulkConnection
from db.engine import bulk_connection
from db.queries import epoch_ms
from db.tables import READING_VALUE_COLUMNS, data_sources, load_batches, power_readings, stations
from powerwatch.archive import writer as archive
from powerwatch.backup import snapshots as backup
from powerwatch.backup.snapshots import RestoreReport, restore_database
from powerwatch.core.errors import BackupError
from powerwatch.core.progress import JobProgress, Listener
from powerwatch.core.settings import Settings
from powerwatch.load import landing
from powerwatch.load.chunks import load_chunk
from powerwatch.load.ingest import committed_batches
from powerwatch.rollups import refresh as rollups
from schemas.channels import CHANNELS

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
    listeners: list[Listener] | None = None,
) -> ReplayReport:
    """Replay `settings.loaded_dir` (the chunks `include` accepts, default all) into the
    database `url`, then drop what the archive holds; see the module docstring. Progress
    (bytes of chunks replayed, readings inserted) goes to `listeners`."""
    started = time.perf_counter()
    report = ReplayReport()
    scratch = settings.data_dir / f"{SCRATCH_PREFIX}{uuid.uuid4().hex[:8]}"
    replay_settings = settings.model_copy(update={"data_dir": scratch, "database_url": url})
    try:
        replay_settings.landing_dir.mkdir(parents=True)
        for chunk in landing.list_chunks(settings.loaded_dir):
            if chunk.is_file() and (include is None or include(chunk)):
                _link_or_copy(chunk, replay_settings.landing_dir / chunk.name)
        chunks = landing.list_chunks(replay_settings.landing_dir)
        sizes = [chunk.stat().st_size for chunk in chunks]
        progress = JobProgress(sizes, listeners, counted="readings")
        with bulk_connection(url) as bulk:
            for chunk, size in zip(chunks, sizes, strict=True):
                progress.start_file(chunk.name)
                loaded = load_chunk(bulk, chunk, replay_settings)
                progress.finish_file(size, loaded.inserted)
                if loaded.status == "loaded":
                    report.replayed += 1
                    report.inserted += loaded.inserted
                elif loaded.status == "already-loaded":
                    report.in_snapshot += 1
                else:
                    report.unreadable.append(loaded.error or loaded.chunk)
            progress.finish()
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
    backup_file: Path,
    url: str,
    settings: Settings,
    *,
    force: bool = False,
    listeners: list[Listener] | None = None,
) -> tuple[RestoreReport, ReplayReport]:
    """`powerwatch restore`: the verified snapshot, then every chunk loaded since."""
    restored = restore_database(backup_file, url, force=force)
    return restored, replay_loaded(url, settings, listeners=listeners)


# --- the restore drill: restore + replay, compared with the live database ---------------

# The drill compares the readings stamped in the last day before it started: a day of
# every station (bounded work however large the database), the part a restore is most
# likely to get wrong (the chunks since the snapshot), and the frame a site cares about.
DRILL_WINDOW = timedelta(hours=24)
MIGRATION_KIND = "log_migration"  # batches that have no chunk in loaded/ (not replayed)


@dataclass
class Tally:
    readings: int
    checksum: str  # archive.ContentChecksum of the station's readings in the window


@dataclass
class DrillResult:
    drill: backup.DrillReport
    window: tuple[str, str]  # ISO-8601 UTC, [start, end)
    ledger_mark: int  # live batches up to this id were compared
    replay: ReplayReport
    stations: dict[str, Tally]  # the live (= restored) tally per station
    differ: list[str]  # one line per station whose count or checksum differs

    def rows(self) -> list[dict[str, object]]:
        return [
            {"station": name, "readings": t.readings, "checksum": t.checksum[:16]}
            for name, t in sorted(self.stations.items())
        ]


@contextlib.contextmanager
def _one_snapshot(bulk: BulkConnection) -> Iterator[None]:
    """Every read inside sees one moment of the database (loads carry on meanwhile)."""
    if bulk.sqlite:
        bulk.execute("BEGIN")
        try:
            yield
        finally:
            bulk.execute("COMMIT")
        return
    bulk.conn.commit()
    bulk.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
    try:
        yield
    finally:
        bulk.conn.rollback()


def tally(
    bulk: BulkConnection, start: datetime, end: datetime, up_to_batch: int | None = None
) -> dict[str, Tally]:
    """Per station: readings stamped in [start, end) and their content checksum, counting
    the readings of chunk batches (not of legacy migrations) up to `up_to_batch`."""
    names = dict(bulk.rows(f"SELECT id, name FROM {stations.name}"))
    batch_filter = "" if up_to_batch is None else f" AND b.id <= {int(up_to_batch)}"
    sql = (
        f"SELECT p.ts, {', '.join('p.' + c for c in READING_VALUE_COLUMNS)} "
        f"FROM {power_readings.name} p JOIN {load_batches.name} b ON b.id = p.batch_id "
        f"JOIN {data_sources.name} d ON d.id = b.source_id "
        f"WHERE p.station_id = :station AND p.ts >= :start AND p.ts < :end "
        f"AND d.kind <> '{MIGRATION_KIND}'"
        f"{batch_filter} ORDER BY p.ts"
    )
    window = {"start": int(start.timestamp() * 1000), "end": int(end.timestamp() * 1000)}
    found: dict[str, Tally] = {}
    for station_id, name in sorted(names.items()):
        frame = bulk.frame(sql, {"station": station_id, **window})
        if frame.is_empty():
            continue
        checksum = archive.ContentChecksum()
        checksum.update(
            frame.select(
                pl.lit(str(name), pl.String).alias("station"),
                epoch_ms("ts").alias("timestamp"),
                *(pl.col(c.column).cast(pl.Float64).alias(c.key) for c in CHANNELS),
            )
        )
        found[str(name)] = Tally(checksum.rows, checksum.hexdigest())
    return found


MOVE_WAIT = 10.0  # seconds a committed chunk may take to leave landing/.claimed/


def _loaded_by_then(
    live: BulkConnection, settings: Settings, mark: int, waiting: Callable[[], None]
) -> list[Path]:
    """The chunks in loaded/, once every chunk the ledger had committed by `mark` has
    left its claim: a loader commits, then moves the chunk (milliseconds later), so one
    caught in between would otherwise look lost to the drill. `waiting` is called at each
    look that found one (a test's hook)."""
    claims = settings.landing_dir / landing.CLAIMED
    deadline = time.monotonic() + MOVE_WAIT
    while True:
        claimed = [landing.claimed_name(p) for p in claims.glob("*")] if claims.is_dir() else []
        moving = [
            name
            for (name, _hash), batch in committed_batches(live, claimed).items()
            if batch <= mark
        ]
        if not moving or time.monotonic() >= deadline:
            return [p for p in landing.list_chunks(settings.loaded_dir) if p.is_file()]
        waiting()
        time.sleep(0.1)


def restore_drill(
    settings: Settings,
    now: datetime | None = None,
    waiting: Callable[[], None] = lambda: None,
    listeners: list[Listener] | None = None,
) -> DrillResult:
    """Restore the newest backup to a scratch file beside the data, replay the chunks the
    live ledger had committed when the drill started, and compare, per station, the
    readings stamped in the `DRILL_WINDOW` before that moment (count and checksum) with
    the live database's. Any difference raises BackupError naming the stations.

    On PostgreSQL the scratch is a database of its own on the live server
    (`<name>_drill_<random>`, dropped afterwards): the drill needs the CREATEDB right,
    and says so in one line without it."""
    backups = backup.list_backups(settings.backups_dir)
    if not backups:
        raise BackupError(f"no verified backup in {settings.backups_dir} to drill")
    newest = backups[0]
    moment = now if now is not None else datetime.now(UTC)
    end = moment.replace(second=0, microsecond=0)
    start = end - DRILL_WINDOW
    window = (start.isoformat(), end.isoformat())
    with bulk_connection(settings.database_url) as live:
        with _one_snapshot(live):
            mark = int(live.scalar(f"SELECT coalesce(max(id), 0) FROM {load_batches.name}"))
            expected = tally(live, start, end, mark)
        chunks = _loaded_by_then(live, settings, mark, waiting)
        ledger = committed_batches(live, [p.name for p in chunks])

    def committed_by_then(chunk: Path) -> bool:
        batch = ledger.get((chunk.name, landing.file_hash(chunk)))
        return batch is not None and batch <= mark

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    with (
        tempfile.TemporaryDirectory(prefix=".drill-", dir=settings.data_dir) as scratch,
        _scratch_database(settings.database_url, Path(scratch)) as target,
    ):
        report = backup.restore_drill_into(newest, target, moment)
        replayed = replay_loaded(target, settings, include=committed_by_then, listeners=listeners)
        with bulk_connection(target) as restored:
            found = tally(restored, start, end)
    differ = [
        f"{name}: live {want.readings if want else 0} readings, restored "
        f"{got.readings if got else 0}"
        + ("" if (want and got and want.readings != got.readings) else " (checksums differ)")
        for name in sorted(expected.keys() | found.keys())
        if (want := expected.get(name)) != (got := found.get(name))
    ]
    result = DrillResult(report, window, mark, replayed, expected, differ)
    if differ:
        raise BackupError(
            f"restore drill: {newest.name} + {replayed.replayed} replayed chunk(s) differs "
            f"from the live database for {start:%Y-%m-%d %H:%M}..{end:%H:%M} UTC: "
            + "; ".join(differ[:3])
            + (f"; +{len(differ) - 3} more" if len(differ) > 3 else "")
        )
    return result


@contextlib.contextmanager
def _scratch_database(live_url: str, folder: Path) -> Iterator[str]:
    """An empty database of the live one's kind for the drill: a file in `folder` for
    SQLite; on PostgreSQL a new database on the same server (the same connection options,
    so the dump's schema is found by the same search_path), dropped when done."""
    import sqlalchemy

    from db.engine import make_engine

    url = sqlalchemy.make_url(live_url)
    if url.get_backend_name() == "sqlite":
        yield f"sqlite:///{folder / 'restored.db'}"
        return
    name = f"{url.database or 'powerwatch'}_drill_{uuid.uuid4().hex[:8]}"
    engine = make_engine(live_url)
    try:
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    except sqlalchemy.exc.DBAPIError as exc:
        engine.dispose()
        first = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        raise BackupError(
            f"restore drill: cannot create the scratch database {name} (the drill needs "
            f"the CREATEDB right on PostgreSQL): {first}"
        ) from exc
    try:
        yield url.set(database=name).render_as_string(hide_password=False)
    finally:
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        engine.dispose()
