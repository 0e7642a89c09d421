"""Every failure an operator can see has a named type here.

PowerwatchError                 one-line message, never a traceback for the operator
├── InputError                  exit 2: bad usage or bad input, nothing stored changed
│   ├── RegistryError           a registry entry breaks the rules (named in the message)
│   ├── ChunkError              a landing chunk cannot be read as the contract says
│   ├── UnknownStationError     a station name that is not registered
│   └── RestoreRefused          restore would overwrite a live database (use --force)
└── JobError                    exit 1: the job ran but failed
    ├── DatabaseUnavailable     cannot connect / locked past the retries
    ├── SchemaVersionError      the database's schema is newer (or older) than this code
    ├── ArchiveError            a day could not be archived safely (it stays in the database)
    └── BackupError             a backup could not be made or does not verify
"""

from __future__ import annotations


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


class SchemaVersionError(JobError):
    pass


class ArchiveError(JobError):
    """A day could not be archived safely; its readings stay in the database."""


class BackupError(JobError):
    """A backup could not be made or does not verify; it does not count."""


class RestoreRefused(InputError):
    """`restore` would overwrite a live database without `--force`."""
