"""Online backups of the database, their rotation, restore, and the restore drill.

    $POWERWATCH_DATA_DIR/backups/powerwatch-20261125T210000123456Z.db.zst        the backup
    $POWERWATCH_DATA_DIR/backups/powerwatch-20261125T210000123456Z.db.zst.json   its manifest

Names sort by time. A backup counts only once its manifest exists, and the
manifest is written only after the copy passed every check:

SQLite: one read transaction on the live database (capture and load keep
writing; WAL readers never block them) counts every table and then copies the
pages with SQLite's backup API *inside that same transaction*, so the copy is
exactly the counted snapshot. The copy is switched to a self-contained journal,
opened, must pass `PRAGMA integrity_check` and show the same counts, and is
then zstd-compressed (hashing both sides) into a hidden temp file that is
renamed into place.

PostgreSQL: the counts are taken in a REPEATABLE READ transaction whose
snapshot is exported to `pg_dump --snapshot`, so dump and counts agree; the
dump (custom format) must list cleanly with `pg_restore --list`. Restoring a
PostgreSQL dump is `pg_restore`'s job; `restore` says how.

No Prefect here; the flows call these functions.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
from sqlalchemy import text
from sqlalchemy.engine import URL

from db.engine import is_sqlite, make_engine, parse_url, sqlite_path
from powerwatch.errors import BackupError, InputError, RestoreRefused
from powerwatch.faults import fault_point

PREFIX = "powerwatch-"
SQLITE_SUFFIX = ".db.zst"
POSTGRES_SUFFIX = ".pgdump"
MANIFEST_SUFFIX = ".json"
STAMP = "%Y%m%dT%H%M%S%fZ"
BLOCK = 4 << 20


@dataclass
class Manifest:
    """What a backup file holds and how to check it (written beside it as JSON)."""

    file: str
    kind: str  # sqlite | postgresql
    created_at: str  # ISO-8601 UTC
    bytes: int
    sha256: str  # of the file as stored
    rows: dict[str, int]  # per table, in the backed-up snapshot
    raw_bytes: int = 0  # SQLite: the database file inside the compression
    raw_sha256: str = ""
    integrity_check: str = ""
    seconds: float = 0.0

    @classmethod
    def read(cls, backup: Path) -> Manifest:
        path = manifest_of(backup)
        if not path.exists():
            raise BackupError(f"{backup.name}: no manifest beside it; not a verified backup")
        return cls(**json.loads(path.read_text(encoding="utf-8")))

    def write(self, backup: Path) -> None:
        _write_atomically(manifest_of(backup), json.dumps(asdict(self), indent=1) + "\n")


def manifest_of(backup: Path) -> Path:
    return backup.with_name(backup.name + MANIFEST_SUFFIX)


def _write_atomically(path: Path, body: str) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(body, encoding="utf-8")
    _fsync(tmp)
    tmp.replace(path)


def _fsync(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(BLOCK):
            digest.update(block)
    return digest.hexdigest()


def backup_time(path: Path) -> datetime:
    stamp = path.name.removeprefix(PREFIX).split(".", 1)[0]
    return datetime.strptime(stamp, STAMP).replace(tzinfo=UTC)


def list_backups(folder: Path) -> list[Path]:
    """Verified backups (those with a manifest), newest first."""
    if not folder.is_dir():
        return []
    found = [
        p
        for p in folder.iterdir()
        if p.name.startswith(PREFIX)
        and p.name.endswith((SQLITE_SUFFIX, POSTGRES_SUFFIX))
        and manifest_of(p).exists()
    ]
    return sorted(found, key=lambda p: p.name, reverse=True)


# --- SQLite files -----------------------------------------------------------------------


@contextmanager
def _open_copy(path: Path) -> Iterator[sqlite3.Connection]:
    """A backup copy is a plain file, not the database: opened directly, without the
    engine's WAL/tuning pragmas (db/engine.py is for the live database)."""
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        yield conn


def _table_rows(conn: sqlite3.Connection) -> dict[str, int]:
    names = [
        r[0]
        for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' "
            "ORDER BY name"
        )
    ]
    return {n: int(conn.execute(f'SELECT count(*) FROM "{n}"').fetchone()[0]) for n in names}


def check_sqlite_copy(path: Path, rows: dict[str, int]) -> str:
    """`PRAGMA integrity_check` and the row counts of a copy; raises unless both hold."""
    with _open_copy(path) as conn:
        result = "; ".join(r[0] for r in conn.execute("PRAGMA integrity_check"))
        if result != "ok":
            raise BackupError(f"{path.name}: integrity_check says {result[:200]}")
        found = _table_rows(conn)
    if found != rows:
        differ = {
            t: (rows.get(t), found.get(t))
            for t in rows.keys() | found.keys()
            if rows.get(t) != found.get(t)
        }
        raise BackupError(f"{path.name}: row counts differ (expected, found): {differ}")
    return result


def _snapshot_copy(url: URL, target: Path) -> dict[str, int]:
    """Copy the live database into `target` as one consistent snapshot; its row counts."""
    engine = make_engine(url.render_as_string(hide_password=False))
    try:
        with engine.connect() as conn:
            live: Any = conn.connection.driver_connection
            live.execute("BEGIN")  # a read transaction: writers carry on under WAL
            try:
                rows = _table_rows(live)
                with closing(sqlite3.connect(target)) as copy:
                    live.backup(copy)  # inside the transaction: the snapshot just counted
                    copy.execute("PRAGMA journal_mode=DELETE")  # one self-contained file
            finally:
                live.execute("COMMIT")
    finally:
        engine.dispose()
    return rows


def _compress(raw: Path, target: Path) -> tuple[str, int]:
    """zstd-compress `raw` into `target`; (sha256, size) of the raw bytes."""
    digest = hashlib.sha256()
    size = 0
    with open(raw, "rb") as source, pa.CompressedOutputStream(str(target), "zstd") as out:
        while block := source.read(BLOCK):
            digest.update(block)
            out.write(block)
            size += len(block)
    return digest.hexdigest(), size


def _decompress(source: Path, target: Path) -> str:
    """Unpack a backup into `target`; the sha256 of what came out."""
    digest = hashlib.sha256()
    with pa.CompressedInputStream(str(source), "zstd") as packed, open(target, "wb") as out:
        while block := packed.read(BLOCK):
            digest.update(block)
            out.write(block)
    _fsync(target)
    return digest.hexdigest()


def backup_database(url: str, folder: Path, now: datetime | None = None) -> tuple[Path, Manifest]:
    """Take, verify and record one backup of the database `url` names."""
    started = time.perf_counter()
    parsed = parse_url(url)
    moment = now if now is not None else datetime.now(UTC)
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"{PREFIX}{moment.strftime(STAMP)}"
    if not is_sqlite(parsed):
        return _backup_postgres(parsed, folder, stem, moment, started)
    if sqlite_path(parsed) is None:
        raise InputError("an in-memory SQLite database cannot be backed up")
    final = folder / f"{stem}{SQLITE_SUFFIX}"
    raw = folder / f".{stem}.db.{uuid.uuid4().hex[:8]}.tmp"
    packed = folder / f".{final.name}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        rows = _snapshot_copy(parsed, raw)
        fault_point("backup.copied")
        integrity = check_sqlite_copy(raw, rows)
        raw_sha, raw_bytes = _compress(raw, packed)
        _fsync(packed)
        packed.replace(final)
    finally:
        raw.unlink(missing_ok=True)
        packed.unlink(missing_ok=True)
    manifest = Manifest(
        file=final.name,
        kind="sqlite",
        created_at=moment.isoformat(),
        bytes=final.stat().st_size,
        sha256=file_sha256(final),
        rows=rows,
        raw_bytes=raw_bytes,
        raw_sha256=raw_sha,
        integrity_check=integrity,
        seconds=round(time.perf_counter() - started, 3),
    )
    manifest.write(final)  # from here on the backup counts
    return final, manifest


# --- PostgreSQL -------------------------------------------------------------------------


def _libpq(url: URL) -> str:
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


def _pg_tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise BackupError(
            f"{name} not found: PostgreSQL backups are taken with `pg_dump --format=custom` "
            f"and restored with `pg_restore`; install the PostgreSQL client tools"
        )
    return found


def _backup_postgres(
    url: URL, folder: Path, stem: str, moment: datetime, started: float
) -> tuple[Path, Manifest]:
    pg_dump = _pg_tool("pg_dump")
    final = folder / f"{stem}{POSTGRES_SUFFIX}"
    tmp = folder / f".{final.name}.{uuid.uuid4().hex[:8]}.tmp"
    engine = make_engine(url.render_as_string(hide_password=False))
    try:
        with engine.connect() as conn:
            conn.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"))
            snapshot = conn.execute(text("SELECT pg_export_snapshot()")).scalar_one()
            schema = conn.execute(text("SELECT current_schema()")).scalar_one()
            tables = conn.execute(
                text("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")
            ).scalars()
            rows = {
                t: int(conn.execute(text(f'SELECT count(*) FROM "{t}"')).scalar_one())
                for t in sorted(tables)
            }
            done = subprocess.run(
                [
                    pg_dump,
                    "--format=custom",
                    f"--snapshot={snapshot}",
                    f"--schema={schema}",
                    f"--file={tmp}",
                    f"--dbname={_libpq(url)}",
                ],
                capture_output=True,
                text=True,
                check=False,
            )
            conn.rollback()
        if done.returncode != 0:
            raise BackupError(f"pg_dump failed: {done.stderr.strip().splitlines()[-1:]}")
        listed = _pg_list(tmp)
        _fsync(tmp)
        tmp.replace(final)
    finally:
        engine.dispose()
        tmp.unlink(missing_ok=True)
    manifest = Manifest(
        file=final.name,
        kind="postgresql",
        created_at=moment.isoformat(),
        bytes=final.stat().st_size,
        sha256=file_sha256(final),
        rows=rows,
        integrity_check=listed,
        seconds=round(time.perf_counter() - started, 3),
    )
    manifest.write(final)
    return final, manifest


def _pg_list(dump: Path) -> str:
    done = subprocess.run(
        [_pg_tool("pg_restore"), "--list", str(dump)], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise BackupError(f"{dump.name}: pg_restore --list failed: {done.stderr.strip()[:200]}")
    entries = sum(1 for line in done.stdout.splitlines() if line and not line.startswith(";"))
    return f"pg_restore --list ok ({entries} entries)"


# --- verify and restore -----------------------------------------------------------------


def verify_backup(backup: Path, unpack_to: Path | None = None) -> Manifest:
    """Check a backup against its manifest: file checksum, and for SQLite the unpacked
    database's checksum, integrity and row counts (unpacked into `unpack_to`, or a temp
    file removed afterwards)."""
    if not backup.is_file():
        raise InputError(f"{backup}: no such backup file")
    manifest = Manifest.read(backup)
    if file_sha256(backup) != manifest.sha256:
        raise BackupError(f"{backup.name}: checksum differs from its manifest (damaged file)")
    if manifest.kind == "postgresql":
        _pg_list(backup)
        return manifest
    target = unpack_to or backup.with_name(f".{backup.name}.{uuid.uuid4().hex[:8]}.verify")
    try:
        if _decompress(backup, target) != manifest.raw_sha256:
            raise BackupError(f"{backup.name}: unpacked database differs from its manifest")
        check_sqlite_copy(target, manifest.rows)
    except BaseException:
        target.unlink(missing_ok=True)
        raise
    if unpack_to is None:
        target.unlink(missing_ok=True)
    return manifest


@dataclass
class RestoreReport:
    backup: str
    target: str
    rows: dict[str, int]
    seconds: float


def restore_database(backup: Path, url: str, *, force: bool = False) -> RestoreReport:
    """Verify `backup`, then put it in place of the database `url` names.

    Refuses (RestoreRefused) to replace an existing, non-empty database unless
    `force`; stop capture and load first (a forced restore replaces the file under
    any process that has it open). The old database's `-wal`/`-shm` files go with
    it, or SQLite would replay them onto the restored one.
    """
    started = time.perf_counter()
    parsed = parse_url(url)
    if not is_sqlite(parsed):
        raise InputError(
            f"{parsed.render_as_string()} is PostgreSQL: restore a dump with "
            f"`pg_restore --clean --if-exists --dbname <url> {backup}` (stop capture/load first)"
        )
    target = sqlite_path(parsed)
    if target is None:
        raise InputError("cannot restore into an in-memory SQLite database")
    target.parent.mkdir(parents=True, exist_ok=True)
    unpacked = target.with_name(f".{target.name}.restore-{uuid.uuid4().hex[:8]}.tmp")
    manifest = verify_backup(backup, unpack_to=unpacked)
    try:
        if target.exists() and target.stat().st_size > 0 and not force:
            raise RestoreRefused(
                f"{target} exists and holds a database; restoring would overwrite it "
                "(stop capture/load, then use --force)"
            )
        for suffix in ("-wal", "-shm", "-journal"):
            Path(f"{target}{suffix}").unlink(missing_ok=True)
        unpacked.replace(target)
    finally:
        unpacked.unlink(missing_ok=True)
    return RestoreReport(backup.name, str(target), manifest.rows, time.perf_counter() - started)


# --- rotation and the drill -------------------------------------------------------------


def rotate_backups(folder: Path, keep_hourly: int, keep_daily: int) -> list[str]:
    """Keep the newest backup of each of the last `keep_hourly` hours and `keep_daily`
    days that have backups (and always the newest); remove the rest with their manifests.
    Leftover temp files of a crashed backup (older than a day) go too."""
    backups = list_backups(folder)
    keep = set(backups[:1])
    for width, count in ((11, keep_hourly), (8, keep_daily)):  # YYYYmmddTHH / YYYYmmdd
        seen: list[str] = []
        for path in backups:  # newest first: the first of each period is its newest
            period = path.name.removeprefix(PREFIX)[:width]
            if period not in seen and len(seen) < count:
                seen.append(period)
                keep.add(path)
    removed = []
    for path in backups:
        if path not in keep:
            manifest_of(path).unlink(missing_ok=True)  # first: it no longer counts
            path.unlink(missing_ok=True)
            removed.append(path.name)
    cutoff = time.time() - 86_400
    for stale in folder.glob(f".{PREFIX}*.tmp") if folder.is_dir() else []:
        if stale.stat().st_mtime < cutoff:
            stale.unlink(missing_ok=True)
            removed.append(stale.name)
    return removed


@dataclass
class DrillReport:
    backup: str
    created_at: str
    age_hours: float
    rows: dict[str, int]
    check: str
    seconds: float


def restore_drill(folder: Path, now: datetime | None = None) -> DrillReport:
    """Restore the newest backup to a temporary path and check it, as a restore would."""
    started = time.perf_counter()
    backups = list_backups(folder)
    if not backups:
        raise BackupError(f"no verified backup in {folder} to drill")
    newest = backups[0]
    moment = now if now is not None else datetime.now(UTC)
    with tempfile.TemporaryDirectory(prefix="powerwatch-drill-") as scratch:
        manifest = Manifest.read(newest)
        if manifest.kind == "sqlite":
            target = Path(scratch) / "restored.db"
            # restore_database verifies what it puts in place: checksums, integrity, counts.
            restore_database(newest, f"sqlite:///{target}")
            check = f"restored; integrity_check {manifest.integrity_check}; row counts match"
        else:
            check = verify_backup(newest).integrity_check
    return DrillReport(
        backup=newest.name,
        created_at=manifest.created_at,
        age_hours=round((moment - backup_time(newest)).total_seconds() / 3600, 2),
        rows=manifest.rows,
        check=check,
        seconds=round(time.perf_counter() - started, 3),
    )
