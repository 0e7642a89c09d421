"""What a database driver's error means for the job: one classification for every path.

SQLite (stdlib `sqlite3` and ADBC's copy) and PostgreSQL (psycopg, ADBC/libpq) report
failures as `OperationalError`s whose only reliable distinction is the message. Only
"busy, locked or unreachable" is worth waiting for (`DatabaseUnavailable`, retried
with backoff); a full disk, a damaged file or an I/O error would fail the same way on
every retry and is reported at once, by name.
"""

from __future__ import annotations

from powerwatch.core.errors import (
    DatabaseCorrupt,
    DatabaseUnavailable,
    DiskFull,
    JobError,
    StorageError,
)

# Lower-case fragments of driver messages, most specific first.
_CORRUPT = (
    "file is not a database",
    "database disk image is malformed",
    "malformed database schema",
    "sqlite_corrupt",
    "sqlite_notadb",
)
_DISK_FULL = (
    "database or disk is full",
    "sqlite_full",
    "no space left on device",
    "could not extend file",
    "disk quota exceeded",
)
_IO = ("disk i/o error", "sqlite_ioerr", "input/output error", "read-only file system")
_UNAVAILABLE = (
    "database is locked",
    "database table is locked",
    "database is busy",
    "sqlite_busy",
    "sqlite_locked",
    "lock timeout",
    "could not connect",
    "connection refused",
    "connection to server",
    "server closed the connection",
    "terminating connection",
    "the database system is starting up",
    "the database system is shutting down",
    "timeout expired",
    "connection timed out",
    "no connection to the server",
    "canceling statement due to statement timeout",
    "deadlock detected",
    "could not serialize access",
)


def first_line(exc: BaseException) -> str:
    message = str(getattr(exc, "orig", None) or exc).strip()
    return message.splitlines()[0] if message else type(exc).__name__


def classify(exc: BaseException, doing: str = "database") -> JobError:
    """The named failure for a driver error (`doing` starts the one-line message)."""
    line = first_line(exc)
    text = str(getattr(exc, "orig", None) or exc).lower()
    if any(part in text for part in _CORRUPT):
        return DatabaseCorrupt(
            f"{doing}: the database is damaged ({line}); restore the newest backup, then "
            "re-load what landed since (README: Recovering)"
        )
    if any(part in text for part in _DISK_FULL):
        return DiskFull(f"{doing}: disk full ({line})")
    if any(part in text for part in _IO):
        return StorageError(f"{doing}: I/O error ({line})")
    if any(part in text for part in _UNAVAILABLE):
        return DatabaseUnavailable(f"{doing}: database busy or unreachable ({line})")
    return JobError(f"{doing}: {line}")
