"""The disk guard: a write job refuses to start on a nearly full disk.

A job that starts on a nearly full disk fails half-way (a chunk's move, an archive day's
file, a backup's copy: each is rolled back, tested in tests/faults), and meanwhile it
takes the last space the database's own journal needs. So before a write job (load,
archive, backup, refresh-rollups) does anything, the
file systems it writes to (the data folder and the SQLite database's folder) must have
at least the smaller of `disk_min_free_percent` (5 %) of their size and
`disk_min_free_bytes` (2 GB) free. The smaller: 5 % of a 4 TB disk (200 GB) would stop a
site that has days of room; 2 GB of an 8 GB card would stop it at 75 %.

Below that the job refuses in one line (DiskLow, a DiskFull: exit 1, never retried; the
run is Failed with that line, red in the UI). Nothing is written, so nothing needs
repair: the next scheduled run starts normally once space is back. The retention flow
is not guarded: it only deletes.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from powerwatch.core.errors import DiskLow
from powerwatch.core.settings import Settings


def _existing(path: Path) -> Path:
    """`path`, or its nearest existing ancestor (a data folder not created yet)."""
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _size(count: float) -> str:
    for unit in ("bytes", "kB", "MB", "GB"):
        if count < 1000 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "bytes" else f"{count:.1f} {unit}"
        count /= 1000
    raise AssertionError("unreachable")


def threshold(total: int, settings: Settings) -> int:
    """Free bytes a file system of `total` bytes must keep for write jobs to start."""
    return int(min(total * settings.disk_min_free_percent / 100, settings.disk_min_free_bytes))


def low_space(settings: Settings, job: str) -> DiskLow | None:
    """The refusal for `job`, or None when every file system it writes to has room."""
    folders = [settings.data_dir]
    if settings.sqlite_file is not None:
        folders.append(settings.sqlite_file.parent)
    for folder in folders:
        where = _existing(folder)
        usage = shutil.disk_usage(where)
        keep = threshold(usage.total, settings)
        if usage.free < keep:
            return DiskLow(
                f"{job} refused to start: {_size(usage.free)} free on the file system of "
                f"{folder}, below the disk guard's {_size(keep)} (POWERWATCH_DISK_MIN_FREE_"
                f"PERCENT {settings.disk_min_free_percent:g} %, _BYTES "
                f"{settings.disk_min_free_bytes}); it runs again once space is freed"
            )
    return None
