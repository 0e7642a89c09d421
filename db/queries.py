"""Read-side queries: plain functions returning polars frames. No Prefect, no ORM.

Every query is shaped to use the (station_id, ts) key: a station's range is one
index range scan, "latest per station" is one seek per station (a GROUP BY
would scan the whole table). Results come back as Arrow through ADBC, so a
station-day of 86,400 rows costs no Python object per row.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Literal

import polars as pl

from db.names import POWER_READINGS, READING_VALUE_COLUMNS, STATIONS
from schemas.channels import CHANNELS, TIMESTAMP_DTYPE

if TYPE_CHECKING:  # not at run time: a query on `db.reader` loads neither
    import pyarrow as pa

    from db.bulk import BulkConnection

Order = Literal["asc", "desc"]
STREAM_BATCH_ROWS = 100_000  # big enough that per-batch overhead vanishes, small enough to stream
_SELECT_VALUES = ", ".join(f'p.{c.column} AS "{c.key}"' for c in CHANNELS)
READING_SCHEMA: dict[str, pl.DataType] = {
    "station": pl.String(),
    "timestamp": TIMESTAMP_DTYPE,
    **{c.key: pl.Float64() for c in CHANNELS},
}


@dataclass(frozen=True)
class ReadingFilter:
    station: str | None = None
    start: datetime | None = None  # inclusive
    end: datetime | None = None  # exclusive
    limit: int | None = None
    offset: int = 0
    order: Order = "asc"


def epoch_ms(column: str) -> pl.Expr:
    """Integer epoch milliseconds (the stored form) -> the contract's UTC timestamp."""
    return pl.col(column).cast(pl.Int64).cast(pl.Datetime("ms")).dt.replace_time_zone("UTC")


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def _frame(batch: pa.RecordBatch | pl.DataFrame) -> pl.DataFrame:
    """A batch of `BulkConnection.batches` (Arrow) or `db.reader` (already a frame)."""
    if isinstance(batch, pl.DataFrame):
        return batch
    frame = pl.from_arrow(batch)
    assert isinstance(frame, pl.DataFrame)
    return frame


def _to_readings(frame: pl.DataFrame) -> pl.DataFrame:
    """`ts` (epoch ms) -> `timestamp`; enforce the contract dtypes whatever the driver inferred."""
    if frame.is_empty():
        return pl.DataFrame(schema=READING_SCHEMA)
    return frame.select(
        pl.col("station").cast(pl.String),
        epoch_ms("ts").alias("timestamp"),
        *(pl.col(c.key).cast(pl.Float64) for c in CHANNELS),
    )


NO_LIMIT = 2**63 - 1


def _filter_clauses(where: ReadingFilter, sql: list[str]) -> dict[str, object]:
    """Append the filter's conditions (`s` = stations, `p` = readings) to `sql`; its params."""
    params: dict[str, object] = {}
    for name, condition, value in (
        ("station", "AND s.name = :station", where.station),
        ("start", "AND p.ts >= :start", None if where.start is None else _ms(where.start)),
        ("end", "AND p.ts < :end", None if where.end is None else _ms(where.end)),
    ):
        if value is not None:
            sql.append(condition)
            params[name] = value
    return params


def readings(bulk: BulkConnection, where: ReadingFilter = ReadingFilter()) -> pl.DataFrame:
    """Readings matching the filter, ordered by station name then time."""
    return pl.concat(
        [pl.DataFrame(schema=READING_SCHEMA), *iter_readings(bulk, where)], how="vertical"
    )


def iter_readings(
    bulk: BulkConnection, where: ReadingFilter = ReadingFilter()
) -> Iterator[pl.DataFrame]:
    """Stream readings as frames of bounded size (for exports of any length).

    Rows carry the small integer station id, not its name: names are attached
    afterwards from the stations table (materialising a string per row costs
    more than the rest of the row). The stations table is the outer loop, in
    name order, so rows come out ordered without a sort.
    """
    sql = [
        f"SELECT p.station_id, p.ts, {_SELECT_VALUES} FROM {STATIONS} s "
        f"CROSS JOIN {POWER_READINGS} p WHERE p.station_id = s.id"
    ]
    params = _filter_clauses(where, sql)
    direction = "DESC" if where.order == "desc" else "ASC"
    sql.append(f"ORDER BY s.name {direction}, p.ts {direction}")
    if where.limit is not None or where.offset:
        # No limit is the largest one: the same text on both databases (SQLite's "no
        # limit" is -1, PostgreSQL's is NULL or ALL, neither taken by the other).
        sql.append("LIMIT :limit OFFSET :offset")
        params |= {"limit": where.limit if where.limit is not None else NO_LIMIT}
        params |= {"offset": where.offset}
    names = bulk.frame(f"SELECT id AS station_id, name AS station FROM {STATIONS}").cast(
        {"station_id": pl.Int64, "station": pl.String}
    )
    for batch in bulk.batches(" ".join(sql), params, rows=STREAM_BATCH_ROWS):
        frame = _frame(batch).with_columns(pl.col("station_id").cast(pl.Int64))
        yield _to_readings(frame.join(names, on="station_id", how="left", maintain_order="left"))


def station_day(bulk: BulkConnection, station: str, day_start: datetime) -> pl.DataFrame:
    """One station's readings over 24 hours from `day_start` (the dashboard's common query)."""
    end = datetime.fromtimestamp(day_start.timestamp() + 86_400, tz=day_start.tzinfo)
    return readings(bulk, ReadingFilter(station=station, start=day_start, end=end))


def latest(bulk: BulkConnection, station: str | None = None) -> pl.DataFrame:
    """The newest reading of every station (or one), by one index seek per station."""
    sql = (
        f"SELECT s.name AS station, p.ts, {_SELECT_VALUES} FROM {STATIONS} s "
        f"JOIN {POWER_READINGS} p ON p.station_id = s.id AND p.ts = "
        f"(SELECT q.ts FROM {POWER_READINGS} q WHERE q.station_id = s.id "
        "ORDER BY q.ts DESC LIMIT 1)"
    )
    params: dict[str, object] = {}
    if station is not None:
        sql += " WHERE s.name = :station"
        params["station"] = station
    return _to_readings(bulk.frame(sql + " ORDER BY s.name", params)).sort("station")


def aggregates(
    bulk: BulkConnection,
    interval_seconds: int,
    where: ReadingFilter = ReadingFilter(),
) -> pl.DataFrame:
    """avg/min/max of every channel and the sample count per station per interval."""
    if interval_seconds <= 0:
        raise ValueError("interval must be positive")
    width = interval_seconds * 1000
    stats = ", ".join(
        f"avg(p.{c}) AS {c}_avg, min(p.{c}) AS {c}_min, max(p.{c}) AS {c}_max"
        for c in READING_VALUE_COLUMNS
    )
    sql = [
        f"SELECT s.name AS station, (p.ts / {width}) * {width} AS bucket, count(*) AS samples, "
        f"{stats} FROM {POWER_READINGS} p JOIN {STATIONS} s ON s.id = p.station_id "
        "WHERE 1 = 1"
    ]
    params = _filter_clauses(where, sql)
    sql.append(f"GROUP BY s.name, (p.ts / {width}) ORDER BY s.name, bucket")
    frame = bulk.frame(" ".join(sql), params)
    if frame.is_empty():
        return frame
    return frame.with_columns(
        epoch_ms("bucket").alias("bucket"),
        pl.col("samples").cast(pl.Int64),
        pl.exclude("station", "bucket", "samples").cast(pl.Float64),
    )


def station_summary(bulk: BulkConnection) -> pl.DataFrame:
    """Every registered station with its newest reading time and its readings count."""
    sql = (
        f"SELECT s.name AS station, s.uuid, s.scene, s.url, "
        f"(SELECT max(p.ts) FROM {POWER_READINGS} p WHERE p.station_id = s.id) AS last_ts, "
        f"(SELECT count(*) FROM {POWER_READINGS} p WHERE p.station_id = s.id) AS readings "
        f"FROM {STATIONS} s ORDER BY s.name"
    )
    frame = bulk.frame(sql)
    if frame.is_empty():
        return frame
    return frame.with_columns(
        epoch_ms("last_ts").alias("last_reading"),
        pl.col("readings").cast(pl.Int64),
    ).drop("last_ts")


def conflicts(bulk: BulkConnection, station: str | None = None) -> pl.DataFrame:
    """Readings that arrived again with different values: both versions, for an operator."""
    sql = (
        f"SELECT s.name AS station, c.ts, c.batch_id, c.stored_values, c.incoming_values "
        f"FROM reading_conflicts c JOIN {STATIONS} s ON s.id = c.station_id"
    )
    params: dict[str, object] = {}
    if station is not None:
        sql += " WHERE s.name = :station"
        params["station"] = station
    frame = bulk.frame(sql + " ORDER BY s.name, c.ts, c.id", params)
    if frame.is_empty():
        return frame
    return frame.with_columns(epoch_ms("ts").alias("timestamp")).drop("ts")
