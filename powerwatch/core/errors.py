"""Every failure an operator can see has a named type here.

PowerwatchError                 one-line message, never a traceback for the operator
├── InputError                  exit 2: bad usage or bad input, nothing stored changed
│   ├── RegistryError           a registry entry breaks the rules (named in the message)
│   ├── ChunkError              a landing chunk cannot be read as the contract says
│   ├── UnknownStationError     a station name that is not registered
│   └── RestoreRefused          restore would overwrite a live database (use --force)
└── JobError                    exit 1: the job ran but failed
    ├── DatabaseUnavailable     busy, locked or unreachable past the retries (the only
    │                           failure retried as such)
    ├── DatabaseCorrupt         the database file is damaged: restore, then re-load
    ├── DiskFull                no space left (database or data folder): never retried
    │                           as "busy"; nothing stored is lost, inputs stay in place
    ├── StorageError            any other I/O failure of a disk or file system
    ├── SchemaVersionError      the database's schema is newer (or older) than this code
    ├── ArchiveError            a day could not be archived safely (it stays in the database)
    └── BackupError             a backup could not be made or does not verify
"""

from __future__ import annotations

import errno


class PowerwatchError(Exception):
    exit_code = 1


class InputError(PowerwatchError):
    exit_code = 2


class RegistryError(InputError):
    pass


class ChunkError(InputError):
    pass


class UnknownStationError(InputError):
    pass


class JobError(PowerwatchError):
    exit_code = 1


class DatabaseUnavailable(JobError):
    pass


class DatabaseCorrupt(JobError):
    """The database file is damaged (not a database, malformed pages); nothing replaces it."""


class DiskFull(JobError):
    """No space left on a device the job writes to."""


class DiskLow(DiskFull):
    """Free space below the disk guard's threshold: a write job refused to start."""


class StorageError(JobError):
    """An I/O error of a disk or file system (not a full disk, not bad input)."""


class SchemaVersionError(JobError):
    pass


class ArchiveError(JobError):
    """A day could not be archived safely; its readings stay in the database."""


class BackupError(JobError):
    """A backup could not be made or does not verify; it does not count."""


class RestoreRefused(InputError):
    """`restore` would overwrite a live database without `--force`."""


_DISK_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def from_os_error(exc: OSError, doing: str = "") -> JobError:
    """The named failure for an `OSError` a job met: disk full, else a storage error.

    Bad input paths are refused as `InputError` before a job starts; an `OSError`
    during the job is the job failing (exit 1), never "bad input".
    """
    where = f"{doing}: " if doing else ""
    detail = exc.strerror or str(exc) or type(exc).__name__
    name = f" ({exc.filename})" if exc.filename else ""
    if exc.errno in _DISK_FULL_ERRNOS:
        return DiskFull(f"{where}disk full{name}: {detail}")
    return StorageError(f"{where}{detail}{name}")
