"""Named fault points: the stage boundaries where a crash or an I/O failure matters.

Production code calls `fault_point("load.committed")` at each boundary. Unless the
tests arm it, that is one dictionary lookup and nothing else. The tests arm points
through the environment of the process they start, so a real process dies (or fails)
exactly there, never "probably there after a sleep":

    POWERWATCH_FAULT="load.committed=kill"            SIGKILL this process (kill -9)
    POWERWATCH_FAULT="archive.renamed=kill@2"         ... the 2nd time the point is passed
    POWERWATCH_FAULT="capture.chunk_written=diskfull" raise OSError(ENOSPC)
    POWERWATCH_FAULT="backup.copied=ioerror"          raise OSError(EIO)
    POWERWATCH_FAULT="load.claimed=pause"             announce, then wait for a signal
    POWERWATCH_FAULT="archive.written=hold"           announce, then wait for "resume"
    POWERWATCH_FAULT="a=kill,b=diskfull"              several points at once

`pause` writes the point's name as one line to `POWERWATCH_FAULT_NOTIFY` (a file the
test watches) and then sleeps until a signal ends the process: the test sends its
SIGTERM/SIGINT knowing where the process stands.
`hold` announces the same way, then waits until the test appends the line
`resume <point>` to that file, and goes on: the test does something at that exact
moment (a reading arriving mid-archive) and then lets the job finish.

Every point is listed in `POINTS` with what has happened when it is passed;
docs/design.md ("Fault points") says what recovery guarantees after each.
"""

from __future__ import annotations

import errno
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

ENV = "POWERWATCH_FAULT"
NOTIFY_ENV = "POWERWATCH_FAULT_NOTIFY"

POINTS: dict[str, str] = {
    # load (one landing chunk)
    "load.claimed": "the chunk is renamed into the loader's claim; nothing stored yet",
    "load.slice_stored": "one slice is stored inside the open transaction (not committed)",
    "load.committed": "the chunk's transaction (ledger, readings, conflicts) committed",
    "load.moved": "the chunk is in loaded/; the claim is gone",
    # legacy log migration (one file)
    "migrate.parsed": "a block of the file is parsed and validated, not stored",
    "migrate.committed": "the file's transaction committed",
    "migrate.recorded": "the file's outcome is in the report",
    # archive (one day)
    "archive.written": "the day's Parquet file is written under its temporary name",
    "archive.verified": "the temporary file read back and its checksum matched",
    "archive.renamed": "the file has its final name; the day's deletes not committed",
    "archive.deleted": "the day's rows are deleted and committed",
    "archive.manifest_written": "the archive manifest records the day",
    # backup
    "backup.copied": "the database is copied to a temporary file",
    "backup.verified": "the copy passed its integrity check and row counts",
    "backup.renamed": "the compressed backup has its final name, no manifest yet",
    "backup.rotated": "older backups beyond the rotation are removed",
    # capture (one flush)
    "capture.batch_taken": "a flush took the buffered frames and judged them; nothing written",
    "capture.chunk_written": "the flush's landing chunk (if it has readings) is in landing/",
    "capture.dead_letters_written": "the flush's rejected frames are appended and fsynced",
    # capture (one station's task)
    "capture.station_connecting": "a station's task is about to (re)connect; outside its "
    "connection error handling, so a fault here is a crash of the task",
    # energy statement (one month)
    "statement.recorded": "the statement's new revision is committed; its files not written",
    "statement.csv_written": "the revision's CSV has its final name; the Parquet file not yet",
}


@dataclass(frozen=True)
class _Armed:
    fault: str
    at: int  # fire on this pass (1-based)


_armed_cache: tuple[str, dict[str, _Armed]] | None = None
_passes: dict[str, int] = {}


def _armed() -> dict[str, _Armed]:
    global _armed_cache
    raw = os.environ.get(ENV, "")
    if _armed_cache is None or _armed_cache[0] != raw:
        _armed_cache = (raw, _parse(raw))
    return _armed_cache[1]


def _parse(raw: str) -> dict[str, _Armed]:
    armed: dict[str, _Armed] = {}
    for item in filter(None, (part.strip() for part in raw.split(","))):
        name, _, spec = item.partition("=")
        fault, _, count = spec.partition("@")
        if name not in POINTS or fault not in _FAULTS:
            raise ValueError(f"{ENV}: unknown fault point or fault in {item!r}")
        armed[name] = _Armed(fault, int(count) if count else 1)
    return armed


def fault_point(name: str) -> None:
    """Pass the named boundary: a no-op unless a test armed it (see the module docstring)."""
    armed = _armed()
    if not armed:
        return
    assert name in POINTS, f"undeclared fault point {name!r}"
    found = armed.get(name)
    if found is None:
        return
    _passes[name] = _passes.get(name, 0) + 1
    if _passes[name] == found.at:
        _FAULTS[found.fault](name)


def _kill(_name: str) -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _disk_full(name: str) -> None:
    raise OSError(errno.ENOSPC, f"No space left on device (fault {name})")


def _io_error(name: str) -> None:
    raise OSError(errno.EIO, f"Input/output error (fault {name})")


def _pause(name: str) -> None:
    notify = os.environ.get(NOTIFY_ENV)
    if notify:
        with open(notify, "a", encoding="utf-8") as handle:
            handle.write(name + "\n")
    while True:  # until a signal ends the process (the test sends it)
        time.sleep(3600)


def _hold(name: str) -> None:
    notify = os.environ.get(NOTIFY_ENV)
    if not notify:
        raise ValueError(f"{ENV}: `hold` at {name} needs {NOTIFY_ENV}")
    with open(notify, "a", encoding="utf-8") as handle:
        handle.write(name + "\n")
    resume = f"resume {name}"
    while resume not in Path(notify).read_text(encoding="utf-8").splitlines():
        time.sleep(0.02)


def reset_passes() -> None:
    """Forget how often each point was passed (a test arming a point in its own process,
    after another test did)."""
    _passes.clear()


_FAULTS = {
    "kill": _kill,
    "diskfull": _disk_full,
    "ioerror": _io_error,
    "pause": _pause,
    "hold": _hold,
}
