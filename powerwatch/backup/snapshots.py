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

Crashes and full disks (fault points `backup.*`, powerwatch.core.faults): one backup
or rotation at a time per folder (`flock` on `data/.backups.lock`, released by
the kernel when its holder dies, so a killed run never blocks the next). Every
run starts, under that lock, by removing the temp files of dead runs (the hidden
`.powerwatch-*` copies, their SQLite `-journal`, unpacked `.verify` files) and by
settling every backup left without its manifest (killed between the rename and the
manifest): it is verified again and its manifest written, or, if it does not
verify, removed. So rotation sees every backup. A full disk is `DiskFull` (one line,
exit 1, never retried as busy); what the failed run wrote is removed.

The PostgreSQL password never reaches a command line (`ps` shows those to every
user): pg_dump gets the URL without it and the password in `PGPASSWORD`, which
only the process's owner can read; error messages never include it.

No Prefect here; the flows call these functions.
"""

from __future__ import annotations

import fcntl
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
from db.failures import classify
from powerwatch.core.errors import (
    BackupError,
    DiskFull,
    InputError,
    PowerwatchError,
    RestoreRefused,
)
from powerwatch.core.faults import fault_point
from powerwatch.core.files import fsync_file, sha256_file, write_text_atomically
from powerwatch.core.progress import JobProgress, Listener
from powerwatch.core.storage import storage_failure

PREFIX = "powerwatch-"
SQLITE_SUFFIX = ".db.zst"
POSTGRES_SUFFIX = ".pgdump"
MANIFEST_SUFFIX = ".json"
STAMP = "%Y%m%dT%H%M%S%fZ"
BLOCK = 4 << 20
LOCK_FILE = ".backups.lock"  # beside the folder, like the archive's: not a file in it


@dataclass(frozen=True)
class LedgerMark:
    """The newest ledger row a snapshot holds (see `Manifest.ledger`)."""

    batch_id: int
    input_name: str
    content_hash: str


COPY_PAGES = 4096  # pages per backup step (16 MB at 4 KiB): a progress update each
LEDGER_MARK_SQL = "SELECT id, input_name, content_hash FROM load_batches ORDER BY id DESC LIMIT 1"


def ledger_mark(row: Any) -> LedgerMark | None:
    """The mark of the first row `LEDGER_MARK_SQL` returned (None: an empty ledger)."""
    return None if row is None else LedgerMark(int(row[0]), str(row[1]), str(row[2]))


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
    # The newest ledger row (`load_batches`) in the snapshot: id, input name and content
    # hash. Every batch up to it is in the backup (batches are created and committed
    # under the write lock, one at a time); those after it are replayed from loaded/
    # on restore. Name and hash tell this database's history from another's (a restore
    # of an older backup reuses ids). None in backups taken before this was recorded.
    ledger: LedgerMark | None = None

    def __post_init__(self) -> None:
        if isinstance(self.ledger, dict):  # read back from JSON
            self.ledger = LedgerMark(**self.ledger)

    @classmethod
    def read(cls, backup: Path, invalid: type[PowerwatchError] = BackupError) -> Manifest:
        """The manifest beside `backup`. Missing or damaged: `invalid` with one line
        (BackupError for the system's own backups, InputError for a file an operator
        hands to `restore`)."""
        path = manifest_of(backup)
        if not path.exists():
            raise invalid(f"{backup.name}: no manifest beside it; not a verified backup")
        try:
            manifest = cls(**json.loads(path.read_text(encoding="utf-8")))
            if not isinstance(manifest.rows, dict) or not isinstance(manifest.sha256, str):
                raise ValueError("rows or sha256 of the wrong type")
        except (ValueError, TypeError, UnicodeDecodeError) as exc:
            detail = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
            raise invalid(
                f"{path.name}: damaged manifest ({detail}); not a verified backup"
            ) from None
        return manifest

    def write(self, backup: Path) -> None:
        write_text_atomically(manifest_of(backup), json.dumps(asdict(self), indent=1) + "\n")


def manifest_of(backup: Path) -> Path:
    return backup.with_name(backup.name + MANIFEST_SUFFIX)


file_sha256 = sha256_file


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


@contextmanager
def _locked(folder: Path, shared: bool = False) -> Iterator[None]:
    """Backups, rotation and clean-up of one folder exclusively; verifying (which unpacks
    a temp file beside the backup) shared. A dead holder's lock is released by the kernel."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / LOCK_FILE, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _storage(exc: OSError) -> bool:
    """An OS-level failure (errno set, or pyarrow's "No space left"), as opposed to
    pyarrow's I/O error for undecodable data, which means a damaged backup."""
    return exc.errno is not None or isinstance(storage_failure(exc, ""), DiskFull)


def _temp_files(folder: Path) -> list[Path]:
    """Hidden files of unfinished backups and verifies: `.powerwatch-…tmp`, its
    `-journal`, `.…verify`, and manifests' temps. Only dead runs' while `_locked`."""
    return [p for p in folder.glob(f".{PREFIX}*") if p.is_file()]


def recover(folder: Path) -> list[str]:
    """Under the exclusive lock: remove dead runs' temp files; give every backup left
    without its manifest its manifest again if it verifies (else remove it); remove
    manifests whose backup is gone. What was done, one line each."""
    done: list[str] = []
    if not folder.is_dir():
        return done
    for path in _temp_files(folder):
        path.unlink(missing_ok=True)
        done.append(f"removed {path.name} (temp file of an interrupted run)")
    for path in sorted(folder.glob(f"{PREFIX}*")):
        if path.name.endswith(MANIFEST_SUFFIX):
            if not path.with_name(path.name.removesuffix(MANIFEST_SUFFIX)).exists():
                path.unlink(missing_ok=True)
                done.append(f"removed {path.name} (its backup is gone)")
        elif path.name.endswith((SQLITE_SUFFIX, POSTGRES_SUFFIX)) and not (
            manifest_of(path).exists()
        ):
            done.append(_settle_orphan(path))
    return done


def _settle_orphan(backup: Path) -> str:
    """A backup renamed into place whose manifest was never written (the run died in
    between): it was checked before the rename; check it again now and write the
    manifest, or remove it if it does not pass."""
    started = time.perf_counter()
    try:
        if backup.name.endswith(POSTGRES_SUFFIX):
            kind, rows, raw_sha, raw_bytes = "postgresql", {}, "", 0
            check = _pg_list(backup) + "; row counts not known (manifest rewritten)"
        else:
            kind = "sqlite"
            unpacked = backup.with_name(f".{backup.name}.{uuid.uuid4().hex[:8]}.verify")
            try:
                raw_sha = _decompress(backup, unpacked)
                raw_bytes = unpacked.stat().st_size
                with _open_copy(unpacked) as conn:
                    rows = _table_rows(conn)
                check = check_sqlite_copy(unpacked, rows)
            finally:
                unpacked.unlink(missing_ok=True)
    except (BackupError, sqlite3.DatabaseError, OSError) as exc:
        if isinstance(exc, OSError) and _storage(exc):
            raise  # the disk, not the backup: settled by a later run
        manifest_of(backup).unlink(missing_ok=True)
        backup.unlink(missing_ok=True)
        return f"removed {backup.name} (no manifest, does not verify: {exc})"
    Manifest(
        file=backup.name,
        kind=kind,
        created_at=backup_time(backup).isoformat(),
        bytes=backup.stat().st_size,
        sha256=file_sha256(backup),
        rows=rows,
        raw_bytes=raw_bytes,
        raw_sha256=raw_sha,
        integrity_check=check,
        seconds=round(time.perf_counter() - started, 3),
    ).write(backup)
    return f"completed {backup.name} (verified again, manifest written)"


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


def _snapshot_copy(
    url: URL, target: Path, listeners: list[Listener] | None = None
) -> tuple[dict[str, int], LedgerMark | None]:
    """Copy the live database into `target` as one consistent snapshot; its row counts
    and its newest ledger row. The copy goes `COPY_PAGES` pages a step, each step told
    to `listeners` as bytes copied."""
    engine = make_engine(url.render_as_string(hide_password=False))
    try:
        with engine.connect() as conn:
            live: Any = conn.connection.driver_connection
            live.execute("BEGIN")  # a read transaction: writers carry on under WAL
            try:
                rows = _table_rows(live)
                mark = ledger_mark(live.execute(LEDGER_MARK_SQL).fetchone())
                page_size = int(live.execute("PRAGMA page_size").fetchone()[0])
                pages = int(live.execute("PRAGMA page_count").fetchone()[0])
                progress = JobProgress([pages * page_size], listeners, counted="pages")
                progress.start_file(target.name)

                def copied(_status: int, remaining: int, total: int) -> None:
                    progress.advance((total - remaining) * page_size, total - remaining)

                with closing(sqlite3.connect(target)) as copy:
                    # inside the transaction: the snapshot just counted
                    live.backup(copy, pages=COPY_PAGES, progress=copied)
                    copy.execute("PRAGMA journal_mode=DELETE")  # one self-contained file
                progress.finish_file(pages * page_size, pages)
            finally:
                live.execute("COMMIT")
    finally:
        engine.dispose()
    return rows, mark


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
    fsync_file(target)
    return digest.hexdigest()


def backup_database(
    url: str,
    folder: Path,
    now: datetime | None = None,
    listeners: list[Listener] | None = None,
) -> tuple[Path, Manifest]:
    """Take, verify and record one backup of the database `url` names (first settling
    what an interrupted run left, see `recover`). A full disk or I/O failure is
    DiskFull / StorageError and leaves nothing of this run behind. The copy's progress
    (SQLite: bytes copied; pg_dump tells none) goes to `listeners`."""
    parsed = parse_url(url)
    if is_sqlite(parsed) and sqlite_path(parsed) is None:
        raise InputError("an in-memory SQLite database cannot be backed up")
    try:
        with _locked(folder):
            recover(folder)
            return _backup(parsed, folder, now, listeners)
    except sqlite3.Error as exc:  # the copy's own writes (the live database's go via db/)
        raise classify(exc, "backup") from exc
    except OSError as exc:
        raise storage_failure(exc, "backup") from exc


def _backup(
    parsed: URL, folder: Path, now: datetime | None, listeners: list[Listener] | None
) -> tuple[Path, Manifest]:
    started = time.perf_counter()
    moment = now if now is not None else datetime.now(UTC)
    stem = f"{PREFIX}{moment.strftime(STAMP)}"
    if not is_sqlite(parsed):
        return _backup_postgres(parsed, folder, stem, moment, started)
    final = folder / f"{stem}{SQLITE_SUFFIX}"
    raw = folder / f".{stem}.db.{uuid.uuid4().hex[:8]}.tmp"
    packed = folder / f".{final.name}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        rows, mark = _snapshot_copy(parsed, raw, listeners)
        fault_point("backup.copied")
        integrity = check_sqlite_copy(raw, rows)
        fault_point("backup.verified")
        raw_sha, raw_bytes = _compress(raw, packed)
        fsync_file(packed)
        packed.replace(final)
        fault_point("backup.renamed")
    finally:
        for temp in (raw, Path(f"{raw}-journal"), packed):
            temp.unlink(missing_ok=True)
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
        ledger=mark,
    )
    _record(manifest, final)
    return final, manifest


def _record(manifest: Manifest, final: Path) -> None:
    """Write the manifest: from here on the backup counts. If that fails (disk full),
    the backup goes too: nothing half-made stays behind a failed run."""
    try:
        manifest.write(final)
    except BaseException:
        final.unlink(missing_ok=True)
        raise


# --- PostgreSQL -------------------------------------------------------------------------


def _libpq(url: URL) -> tuple[str, dict[str, str]]:
    """The libpq URL *without* the password, and the environment that carries it: a
    command line is visible to every user in `ps`, a process's environment only to
    its owner (and root)."""
    env = dict(os.environ)
    if url.password is not None:
        env["PGPASSWORD"] = str(url.password)
    else:
        env.pop("PGPASSWORD", None)
    return url.set(drivername="postgresql", password=None).render_as_string(), env


def _redact(text: str, url: URL) -> str:
    """`text` with the URL's password (if any) masked: messages may be logged."""
    password = str(url.password) if url.password is not None else ""
    return text.replace(password, "***") if password else text


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
    dbname, env = _libpq(url)
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
            mark = ledger_mark(conn.execute(text(LEDGER_MARK_SQL)).first())
            done = subprocess.run(
                [
                    pg_dump,
                    "--format=custom",
                    f"--snapshot={snapshot}",
                    f"--schema={schema}",
                    f"--file={tmp}",
                    f"--dbname={dbname}",
                ],
                capture_output=True,
                text=True,
                check=False,
                env=env,
            )
            conn.rollback()
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["(no message)"])[-1]
            if "no space left on device" in last.lower() or "could not write" in last.lower():
                raise OSError(28, f"pg_dump: {_redact(last, url)}")
            raise BackupError(f"pg_dump failed: {_redact(last, url)}")
        fault_point("backup.copied")
        listed = _pg_list(tmp)
        fault_point("backup.verified")
        fsync_file(tmp)
        tmp.replace(final)
        fault_point("backup.renamed")
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
        ledger=mark,
    )
    _record(manifest, final)
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


def verify_backup(
    backup: Path, unpack_to: Path | None = None, invalid: type[PowerwatchError] = BackupError
) -> Manifest:
    """Check a backup against its manifest: file checksum, and for SQLite the unpacked
    database's checksum, integrity and row counts (unpacked into `unpack_to`, or a temp
    file beside the backup, removed afterwards). A backup that is not valid raises
    `invalid` with one line (InputError when an operator named the file)."""
    if not backup.is_file():
        raise InputError(f"{backup}: no such backup file")
    manifest = Manifest.read(backup, invalid)
    if file_sha256(backup) != manifest.sha256:
        raise invalid(f"{backup.name}: checksum differs from its manifest (damaged file)")
    try:
        if manifest.kind == "postgresql":
            _pg_list(backup)
            return manifest
        if unpack_to is not None:
            _check_unpacked(backup, manifest, unpack_to)
            return manifest
        with _locked(backup.parent, shared=True):  # a backup's start removes dead temps
            target = backup.with_name(f".{backup.name}.{uuid.uuid4().hex[:8]}.verify")
            try:
                _check_unpacked(backup, manifest, target)
            finally:
                target.unlink(missing_ok=True)
    except (BackupError, sqlite3.DatabaseError, OSError) as exc:
        if isinstance(exc, OSError) and _storage(exc):
            raise  # the disk, not the backup (exit 1 via the CLI)
        if invalid is BackupError and isinstance(exc, BackupError):
            raise
        raise invalid(f"{backup.name}: not a valid backup ({str(exc).splitlines()[0]})") from None
    return manifest


def _check_unpacked(backup: Path, manifest: Manifest, target: Path) -> None:
    try:
        if _decompress(backup, target) != manifest.raw_sha256:
            raise BackupError(f"{backup.name}: unpacked database differs from its manifest")
        check_sqlite_copy(target, manifest.rows)
    except BaseException:
        target.unlink(missing_ok=True)
        raise


@dataclass
class RestoreReport:
    backup: str
    target: str
    rows: dict[str, int]
    seconds: float


def restore_database(
    backup: Path, url: str, *, force: bool = False, invalid: type[PowerwatchError] = InputError
) -> RestoreReport:
    """Verify `backup`, then put it in place of the database `url` names.

    A file that is not a valid backup (no or a damaged manifest, checksum differing)
    is refused with one line: `invalid`, by default InputError (exit 2: the operator
    named it); the drill, restoring the system's own newest backup, passes BackupError.

    Refuses (RestoreRefused) to replace an existing, non-empty database unless
    `force`; stop capture and load first (a forced restore replaces the file under
    any process that has it open). The old database's `-wal`/`-shm` files go with
    it, or SQLite would replay them onto the restored one.
    """
    started = time.perf_counter()
    parsed = parse_url(url)
    if not is_sqlite(parsed):
        return _restore_postgres(backup, parsed, force=force, invalid=invalid)
    target = sqlite_path(parsed)
    if target is None:
        raise InputError("cannot restore into an in-memory SQLite database")
    target.parent.mkdir(parents=True, exist_ok=True)
    unpacked = target.with_name(f".{target.name}.restore-{uuid.uuid4().hex[:8]}.tmp")
    manifest = verify_backup(backup, unpack_to=unpacked, invalid=invalid)
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


def _restore_postgres(
    backup: Path, url: URL, *, force: bool, invalid: type[PowerwatchError]
) -> RestoreReport:
    """`pg_restore` a verified dump into the database `url` names, into the schema it
    was taken from (the dump creates it). Refused (RestoreRefused) when the URL's schema
    already holds tables, unless `force` (then the dump's objects replace theirs)."""
    started = time.perf_counter()
    manifest = verify_backup(backup, invalid=invalid)
    if manifest.kind != "postgresql":
        raise invalid(f"{backup.name}: a SQLite backup; restore it into a sqlite:/// URL")
    engine = make_engine(url.render_as_string(hide_password=False))
    try:
        with engine.connect() as conn:
            tables = conn.execute(
                text("SELECT count(*) FROM pg_tables WHERE schemaname = current_schema()")
            ).scalar_one()
    finally:
        engine.dispose()
    if tables and not force:
        raise RestoreRefused(
            f"{url.render_as_string()} holds {tables} table(s); restoring would replace them "
            "(stop capture/load, then use --force)"
        )
    dbname, env = _libpq(url)
    done = subprocess.run(
        [
            _pg_tool("pg_restore"),
            "--clean",  # with --if-exists: also an empty `public` the dump creates again
            "--if-exists",
            "--no-owner",
            "--exit-on-error",
            f"--dbname={dbname}",
            str(backup),
        ],
        capture_output=True,
        text=True,
        check=False,
        env=env,
    )
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no message)"])[-1]
        raise BackupError(f"pg_restore failed: {_redact(last, url)}")
    return RestoreReport(
        backup.name, url.render_as_string(), manifest.rows, time.perf_counter() - started
    )


# --- rotation and the drill -------------------------------------------------------------


def rotate_backups(folder: Path, keep_hourly: int, keep_daily: int) -> list[str]:
    """Keep the newest backup of each of the last `keep_hourly` hours and `keep_daily`
    days that have backups (and always the newest); remove the rest with their manifests.
    Under the folder's lock, after settling what interrupted runs left (`recover`), so
    every backup is seen."""
    if not folder.is_dir():
        return []
    try:
        with _locked(folder):
            removed = [line for line in recover(folder) if line.startswith("removed")]
            removed += _rotate(folder, keep_hourly, keep_daily)
    except OSError as exc:
        raise storage_failure(exc, "rotate backups") from exc
    fault_point("backup.rotated")
    return removed


def _rotate(folder: Path, keep_hourly: int, keep_daily: int) -> list[str]:
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
    backups = list_backups(folder)
    if not backups:
        raise BackupError(f"no verified backup in {folder} to drill")
    newest = backups[0]
    if Manifest.read(newest).kind != "sqlite":  # a dump needs a scratch database: verified
        manifest = verify_backup(newest)  # here; `replay.restore_drill` restores it
        moment = now if now is not None else datetime.now(UTC)
        return DrillReport(
            backup=newest.name,
            created_at=manifest.created_at,
            age_hours=round((moment - backup_time(newest)).total_seconds() / 3600, 2),
            rows=manifest.rows,
            check=manifest.integrity_check,
            seconds=0.0,
        )
    with tempfile.TemporaryDirectory(prefix="powerwatch-drill-") as scratch:
        return restore_drill_into(newest, f"sqlite:///{Path(scratch) / 'restored.db'}", now)


def restore_drill_into(backup: Path, target: str, now: datetime | None = None) -> DrillReport:
    """Restore `backup` into the empty database `target` (of the backup's kind) with every
    check a restore makes."""
    started = time.perf_counter()
    moment = now if now is not None else datetime.now(UTC)
    manifest = Manifest.read(backup)
    # restore_database verifies what it puts in place: checksums, integrity, counts.
    restore_database(backup, target, invalid=BackupError)
    if manifest.kind == "sqlite":
        check = f"restored; integrity_check {manifest.integrity_check}; row counts match"
    else:
        check = f"pg_restore into a scratch database; {manifest.integrity_check}"
    return DrillReport(
        backup=backup.name,
        created_at=manifest.created_at,
        age_hours=round((moment - backup_time(backup)).total_seconds() / 3600, 2),
        rows=manifest.rows,
        check=check,
        seconds=round(time.perf_counter() - started, 3),
    )
