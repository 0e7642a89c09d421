"""Per station-day completeness: readings received vs expected, and the missing ranges.

Expected = the day's length / the station's normal interval (the lower median of
the day's inter-reading intervals; for a day with fewer than two readings, the
normal interval of the station's latest earlier day in `rollup_daily`). A missing
range is a stretch between two consecutive readings longer than the gap threshold
the rollups use (`powerwatch.rollups.compute.gap_threshold`), clipped to the day; after the
station's last reading the day's end (or now) stands in for the next one. A station's
first day (no reading before it, in the database or the archive) counts from its first
reading, not from midnight: it did not exist before.

Reads the readings' timestamps only (one key range scan). Days whose readings
were archived are read from the Parquet archive (`spec/archive.md`) as well, so
the answer does not change when the archive moves a day out of the database.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl

from db.names import POWER_READINGS, ROLLUP_DAILY
from powerwatch.rollups.compute import gap_threshold
from powerwatch.rollups.queries import require_station_id
from schemas.channels import DAY_MS, TIMESTAMP_DTYPE

if TYPE_CHECKING:  # not at run time: a query on `db.reader` loads no ADBC
    from db.bulk import BulkConnection

_TS = {"ts": pl.Int64()}


@dataclass(frozen=True)
class Completeness:
    station: str
    day: date
    received: int
    expected: int | None  # None: no normal interval known for the station yet
    normal_interval_s: float | None
    missing: pl.DataFrame  # start, end (UTC timestamps), seconds
    counted_from: datetime  # midnight, or the station's first reading on its first day

    @property
    def ratio(self) -> float | None:
        return self.received / self.expected if self.expected else None

    def summary(self) -> dict[str, object]:
        return {
            "station": self.station,
            "day": self.day.isoformat(),
            "counted_from": self.counted_from.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z",
            "received": self.received,
            "expected": self.expected,
            "completeness": None if self.ratio is None else round(self.ratio, 4),
            "normal_interval_s": self.normal_interval_s,
            "missing_ranges": self.missing.height,
            "missing_seconds": float(self.missing["seconds"].sum()),
        }


def completeness(
    bulk: BulkConnection,
    station: str,
    day: date,
    *,
    archive_dir: Path | None = None,
    now: datetime | None = None,
) -> Completeness:
    """Completeness of one station-day (UTC). A day still running counts up to `now`."""
    sid = require_station_id(bulk, station)
    start = int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp() * 1000)
    end = start + DAY_MS
    moment = now if now is not None else datetime.now(UTC)
    until = max(start, min(end, int(moment.timestamp() * 1000)))
    stamps = _timestamps(bulk, sid, station, start, end, archive_dir)
    inside = stamps.filter(pl.col("ts").is_between(start, end, closed="left"))
    normal = _normal_interval(bulk, sid, inside["ts"], start)
    threshold = pl.select(gap_threshold(pl.lit(normal, pl.Float64))).item()
    before = stamps.filter(pl.col("ts") < start)["ts"].max()
    after = stamps.filter(pl.col("ts") >= end)["ts"].min()
    # A station's first day counts from its first reading (one added at 08:51 is not
    # 1 % complete): with no reading before the day, the day starts at its first one.
    first = start if before is not None or inside.is_empty() else int(inside["ts"].to_list()[0])
    # The neighbours outside the day, or the day's edges when there are none.
    points = pl.concat(
        [
            pl.Series("ts", [before if before is not None else first], pl.Int64),
            inside["ts"],
            pl.Series("ts", [after if after is not None else until], pl.Int64),
        ]
    )
    missing = (
        pl.DataFrame({"start": points.head(-1), "end": points.tail(-1)})
        .filter(pl.col("end") - pl.col("start") > threshold)
        .select(pl.col("start").clip(start, until), pl.col("end").clip(start, until))
        .filter(pl.col("end") > pl.col("start"))
        .select(
            pl.col("start").cast(pl.Datetime("ms")).dt.replace_time_zone("UTC"),
            pl.col("end").cast(pl.Datetime("ms")).dt.replace_time_zone("UTC"),
            ((pl.col("end") - pl.col("start")) / 1000).alias("seconds"),
        )
    )
    return Completeness(
        station=station,
        day=day,
        received=inside.height,
        expected=None if normal is None else round((until - first) / normal),
        counted_from=datetime.fromtimestamp(first / 1000, UTC),
        normal_interval_s=None if normal is None else normal / 1000,
        missing=missing,
    )


def _timestamps(
    bulk: BulkConnection,
    station_id: int,
    station: str,
    start: int,
    end: int,
    archive_dir: Path | None,
) -> pl.DataFrame:
    """The day's reading times plus the nearest one on each side, from database and archive."""
    table = POWER_READINGS
    day = bulk.frame(
        f"SELECT ts FROM {table} WHERE station_id = :station AND ts >= :start AND ts < :end",
        {"station": station_id, "start": start, "end": end},
    )
    # The nearest neighbours by one key seek each.
    before = bulk.scalar(
        f"SELECT max(ts) FROM {table} WHERE station_id = :station AND ts < :start",
        {"station": station_id, "start": start},
    )
    after = bulk.scalar(
        f"SELECT min(ts) FROM {table} WHERE station_id = :station AND ts >= :end",
        {"station": station_id, "end": end},
    )
    frames = [
        day.select(pl.col("ts").cast(pl.Int64)) if day.height else pl.DataFrame(schema=_TS),
        pl.DataFrame({"ts": [before, after]}, schema=_TS),
    ]
    if archive_dir is not None and archive_dir.is_dir() and any(archive_dir.rglob("*.parquet")):
        # One day either side is plenty: a neighbour further away is a gap all the same.
        lo = datetime.fromtimestamp((start - DAY_MS) / 1000, UTC)
        hi = datetime.fromtimestamp((end + DAY_MS) / 1000, UTC)
        scan = pl.scan_parquet(archive_dir / "**" / "*.parquet", hive_partitioning=True)
        if isinstance(scan.collect_schema().get("date"), pl.Date):
            # The archive's day partitions (`date=YYYY-MM-DD`): open only the days around.
            scan = scan.filter(pl.col("date").is_between(lo.date(), hi.date()))
        archived = (
            scan.filter(
                (pl.col("station") == station)
                & (pl.col("timestamp").cast(TIMESTAMP_DTYPE) >= lo)
                & (pl.col("timestamp").cast(TIMESTAMP_DTYPE) < hi)
            )
            .select(pl.col("timestamp").cast(TIMESTAMP_DTYPE).dt.epoch("ms").alias("ts"))
            .collect()
        )
        frames.append(archived)
    return pl.concat(frames, how="vertical_relaxed").drop_nulls().unique().sort("ts")


def _normal_interval(
    bulk: BulkConnection, station_id: int, times: pl.Series, start: int
) -> float | None:
    if times.len() >= 2:
        return float(times.diff().drop_nulls().quantile(0.5, "lower") or 0) or None
    known = bulk.scalar(
        f"SELECT normal_interval_ms FROM {ROLLUP_DAILY} WHERE station_id = :station "
        "AND start_ts < :start AND normal_interval_ms IS NOT NULL ORDER BY start_ts DESC LIMIT 1",
        {"station": station_id, "start": start},
    )
    return None if known is None else float(known)
