"""What an archive run would do, and the shape of its report: the cut-off, the days
before it that hold readings, and the summary table.

Kept apart from `powerwatch.archive.writer` (numpy, pyarrow, ADBC, SQLAlchemy: ~1.5 s to import
on this host) so that `powerwatch archive` with nothing to archive answers without them
and without Prefect (issue 14: idle job commands <= 2 s). Plain queries over the read
half of a connection (`db.reader.SqliteReader` or `db.bulk.BulkConnection`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from db.names import POWER_READINGS, STATIONS
from powerwatch.core.errors import InputError
from schemas.channels import DAY_MS, FUTURE_TOLERANCE

if TYPE_CHECKING:
    from db.bulk import BulkConnection

ARCHIVE_FILE = "readings.parquet"
MANIFEST_FILE = "archive-manifest.json"


def leftovers(archive_root: Path) -> list[Path]:
    """Temp files a dead archiver left (day files being written, manifests being
    replaced); `archive.remove_leftovers` removes them under the archive lock."""
    return [
        *archive_root.glob(f"date=*/.{ARCHIVE_FILE}.*.tmp"),
        *archive_root.parent.glob(f".{MANIFEST_FILE}.*.tmp"),
    ]


def nothing_to_do(bulk: BulkConnection, archive_root: Path, retention_days: int) -> Cutoff | None:
    """The cut-off if a run would archive nothing (no day before it holds readings and no
    dead archiver's temp file to clean up), else None: the run has work to do."""
    cutoff = retention_cutoff(bulk, retention_days)
    if leftovers(archive_root) or next(days_to_archive(bulk, cutoff.before), None) is not None:
        return None
    return cutoff


@dataclass(frozen=True)
class Cutoff:
    """Readings stamped before `before` (a UTC midnight) are archived."""

    before: datetime
    reference: datetime  # the "now" the retention is counted back from
    wall_clock: datetime
    newest_reading: datetime | None  # the data's witness of the time (see `retention_cutoff`)


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def _from_ms(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def retention_cutoff(
    bulk: BulkConnection, retention_days: int, now: datetime | None = None
) -> Cutoff:
    """Where the retention ends, counted back from a "now" that neither a clock running
    ahead nor a reading stamped in the future can move forward.

    The reference is the earlier of the wall clock and the data's own witness of
    the time: the newest reading of the *second*-newest station (the only one's
    if there is one), ignoring readings stamped after the wall clock (+5 min, the
    validation's tolerance). So one bogus future reading (one station) moves
    nothing; a clock set ahead is capped by what the stations actually sent; a
    clock set back only archives less. The cut-off is then floored to a UTC
    midnight: the archive works in whole days.
    """
    if retention_days < 0:
        raise InputError(f"archive retention must not be negative (got {retention_days} days)")
    wall = now if now is not None else datetime.now(UTC)
    newest = bulk.frame(
        f"SELECT (SELECT max(p.ts) FROM {POWER_READINGS} p "
        f"WHERE p.station_id = s.id AND p.ts <= :latest) AS newest FROM {STATIONS} s",
        {"latest": _ms(wall + FUTURE_TOLERANCE)},
    )
    per_station = (
        sorted((int(v) for v in newest["newest"].to_list() if v is not None), reverse=True)
        if newest.height
        else []
    )
    witness = _from_ms(per_station[min(1, len(per_station) - 1)]) if per_station else None
    reference = min(wall, witness) if witness is not None else wall
    edge = (reference - timedelta(days=retention_days)).astimezone(UTC)
    before = datetime(edge.year, edge.month, edge.day, tzinfo=UTC)
    return Cutoff(before=before, reference=reference, wall_clock=wall, newest_reading=witness)


def days_to_archive(bulk: BulkConnection, before: datetime) -> Iterator[date]:
    """UTC days holding readings stamped before `before`, oldest first.

    Jumps from day to day with data by one seek per station (the first reading
    at or after a moment), so a gap of years costs nothing.
    """
    sql = (
        f"SELECT (SELECT min(p.ts) FROM {POWER_READINGS} p "
        f"WHERE p.station_id = s.id AND p.ts >= :after) AS first FROM {STATIONS} s"
    )
    limit = _ms(before)
    after = -(2**62)
    while True:
        firsts = [
            int(v) for v in bulk.frame(sql, {"after": after})["first"].to_list() if v is not None
        ]
        if not firsts or min(firsts) >= limit:
            return
        day_start = min(firsts) // DAY_MS * DAY_MS
        yield _from_ms(day_start).date()
        after = day_start + DAY_MS


@dataclass
class DayReport:
    day: str
    archived: int = 0  # rows deleted from the database
    already_archived: int = 0  # rows found both in the database and the file (crash recovery)
    file_rows: int = 0  # rows in the day's file afterwards
    merged: bool = False  # the day had a file already (late data)
    checksum: str = ""
    seconds: float = 0.0
    delete_seconds: float = 0.0  # the delete transaction: how long writers waited at most


@dataclass
class Reclaimed:
    method: str
    pages: int = 0
    seconds: float = 0.0


@dataclass
class ArchiveRun:
    cutoff: Cutoff
    days: list[DayReport]
    failed: list[str]  # one line per day that stayed in the database, with the reason
    reclaimed: Reclaimed | None


def summary_rows(run: ArchiveRun) -> list[dict[str, object]]:
    """One row per day plus a total: the Prefect artifact's and the CLI's table."""
    rows: list[dict[str, object]] = [
        {
            "day": d.day,
            "archived": d.archived,
            "file rows": d.file_rows,
            "merged": d.merged,
            "already archived": d.already_archived,
            "checksum": d.checksum[:16],
            "rows/s": round(d.archived / d.seconds) if d.seconds else None,
        }
        for d in run.days
    ]
    seconds = sum(d.seconds for d in run.days)
    archived = sum(d.archived for d in run.days)
    rows.append(
        {
            "day": f"TOTAL ({len(run.days)} days, {len(run.failed)} kept)",
            "archived": archived,
            "file rows": sum(d.file_rows for d in run.days),
            "merged": sum(d.merged for d in run.days),
            "already archived": sum(d.already_archived for d in run.days),
            "checksum": "",
            "rows/s": round(archived / seconds) if seconds else None,
        }
    )
    return rows
