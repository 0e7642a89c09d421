"""Reading the rollups: per station, per hour or day, with the energy of meter deltas
across gaps spread over the gap (`energy_events`)."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

import polars as pl

from db.names import (
    ENERGY_EVENTS,
    MUX_COLUMNS,
    READING_VALUE_COLUMNS,
    ROLLUP_DAILY,
    ROLLUP_HOURLY,
    STATIONS,
)
from powerwatch.core.errors import UnknownStationError
from powerwatch.rollups import energy
from powerwatch.rollups.compute import METER_COUNTS, ROLLUP_SCHEMA, Interval
from schemas.channels import CHANNELS, DAY_MS, HOUR_MS

if TYPE_CHECKING:  # not at run time: a query on `db.reader` loads no ADBC
    from db.bulk import BulkConnection


def typed_frame(bulk: BulkConnection, sql: str, schema: dict[str, pl.DataType]) -> pl.DataFrame:
    """A query's result with the given dtypes whatever the driver inferred (or if empty)."""
    frame = bulk.frame(sql)
    if frame.is_empty():
        return pl.DataFrame(schema=schema)
    return frame.select(pl.col(name).cast(dtype) for name, dtype in schema.items())


# --- queries -------------------------------------------------------------------------------


def require_station_id(bulk: BulkConnection, station: str) -> int:
    """The id of a registered station; an unknown name is bad input."""
    found = bulk.scalar(f"SELECT id FROM {STATIONS} WHERE name = :name", {"name": station})
    if found is None:
        raise UnknownStationError(f"unknown station: {station!r}")
    return int(found)


def rollups(
    bulk: BulkConnection,
    interval: Interval = "hour",
    *,
    station: str | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
) -> pl.DataFrame:
    """Stored rollups, ordered by station then time: per channel avg/min/max/count, per
    meter consumption: measured and estimated kWh (`powerwatch.rollups.energy`: a gap across the
    interval's bounds is spread over its time, that part estimated) with the counts of
    resets, wraps, gaps and flagged deltas. `start` inclusive, `end` exclusive, both
    matched against the interval's start. An interval inside an outage has no readings
    but its share of the spread kWh: it is listed with 0 samples."""
    from db.queries import epoch_ms

    table = ROLLUP_HOURLY if interval == "hour" else ROLLUP_DAILY
    length = HOUR_MS if interval == "hour" else DAY_MS
    station_id = None if station is None else require_station_id(bulk, station)
    start_ms = None if start is None else int(start.timestamp() * 1000)
    end_ms = None if end is None else int(end.timestamp() * 1000)
    sql = [
        f"SELECT s.name AS station, r.* FROM {table} r "
        f"JOIN {STATIONS} s ON s.id = r.station_id WHERE 1 = 1"
    ]
    params: dict[str, object] = {}
    if station_id is not None:
        sql.append("AND r.station_id = :station")
        params["station"] = station_id
    if start_ms is not None:
        sql.append("AND r.start_ts >= :start")
        params["start"] = start_ms
    if end_ms is not None:
        sql.append("AND r.start_ts < :end")
        params["end"] = end_ms
    frame = bulk.frame(" ".join(sql), params)
    if frame.is_empty():
        frame = pl.DataFrame(schema={"station": pl.String(), **ROLLUP_SCHEMA})
    frame = frame.select(
        pl.col("station").cast(pl.String),
        *(pl.col(n).cast(t) for n, t in ROLLUP_SCHEMA.items()),
    )
    frame = _with_spread(bulk, frame, length, station_id, start_ms, end_ms).sort(
        "station", "start_ts"
    )
    columns: list[pl.Expr] = [
        pl.col("station"),
        epoch_ms("start_ts").alias("start"),
        pl.col("samples"),
        epoch_ms("first_ts").alias("first"),
        epoch_ms("last_ts").alias("last"),
        (pl.col("normal_interval_ms") / 1000).alias("normal_interval_s"),
    ]
    for c in CHANNELS:
        n = pl.col(f"{c.column}_count")
        columns += [
            (pl.col(f"{c.column}_sum") / pl.when(n > 0).then(n)).alias(f"{c.key}_avg"),
            pl.col(f"{c.column}_min").alias(f"{c.key}_min"),
            pl.col(f"{c.column}_max").alias(f"{c.key}_max"),
            n.alias(f"{c.key}_count"),
        ]
    for c in CHANNELS:
        if c.column in MUX_COLUMNS:
            columns += [
                pl.col(f"{c.column}_kwh").alias(f"{c.key}_kwh"),
                pl.col(f"{c.column}_estimated_kwh").alias(f"{c.key}_estimated_kwh"),
                *(pl.col(f"{c.column}_{k}").alias(f"{c.key}_{k}") for k in METER_COUNTS),
            ]
    return frame.select(columns)


def _with_spread(
    bulk: BulkConnection,
    frame: pl.DataFrame,
    length: int,
    station_id: int | None,
    start_ms: int | None,
    end_ms: int | None,
) -> pl.DataFrame:
    """Add the spread gaps' parts to the rollup rows: `*_kwh` gains the parts of gaps
    lying wholly inside the interval, `*_estimated_kwh` holds the others; intervals
    that only an outage covers are added (0 samples)."""
    sql = [
        f"SELECT station_id, meter, prev_ts, ts, kwh FROM {ENERGY_EVENTS} "
        "WHERE spread = 1 AND kwh > 0"
    ]
    # Integers only (ids and epoch ms), so inlined.
    if station_id is not None:
        sql.append(f"AND station_id = {int(station_id)}")
    if start_ms is not None:
        sql.append(f"AND ts >= {int(start_ms)}")
    if end_ms is not None:
        sql.append(f"AND prev_ts < {int(end_ms + length)}")
    spread = typed_frame(
        bulk,
        " ".join(sql),
        {
            "station_id": pl.Int32(),
            "meter": pl.Int32(),
            "prev_ts": pl.Int64(),
            "ts": pl.Int64(),
            "kwh": pl.Float64(),
        },
    )
    estimated = [pl.lit(0.0).alias(f"{m}_estimated_kwh") for m in MUX_COLUMNS]
    if spread.is_empty():
        return frame.with_columns(estimated)
    parts = energy.spread_hours_or_days(spread, length)
    if start_ms is not None:
        parts = parts.filter(pl.col("start_ts") >= start_ms)
    if end_ms is not None:
        parts = parts.filter(pl.col("start_ts") < end_ms)
    per_interval = parts.group_by("station_id", "start_ts").agg(
        expr
        for number, m in enumerate(MUX_COLUMNS, start=1)
        for expr in (
            pl.col("part")
            .filter((pl.col("meter") == number) & ~pl.col("estimated"))
            .sum()
            .alias(f"{m}_inside"),
            pl.col("part")
            .filter((pl.col("meter") == number) & pl.col("estimated"))
            .sum()
            .alias(f"{m}_estimated_kwh"),
        )
    )
    names = typed_frame(
        bulk,
        f"SELECT id AS station_id, name AS station FROM {STATIONS}",
        {"station_id": pl.Int32(), "station": pl.String()},
    )
    missing = (
        per_interval.select("station_id", "start_ts")
        .join(frame, on=["station_id", "start_ts"], how="anti")
        .join(names, on="station_id")
        .with_columns(
            pl.lit(0, pl.Int64).alias("samples"),
            pl.col("start_ts").alias("first_ts"),
            pl.col("start_ts").alias("last_ts"),
            *(pl.lit(0, pl.Int64).alias(f"{c}_count") for c in READING_VALUE_COLUMNS),
            *(pl.lit(0.0).alias(f"{m}_kwh") for m in MUX_COLUMNS),
            *(pl.lit(0, pl.Int32).alias(f"{m}_{k}") for m in MUX_COLUMNS for k in METER_COUNTS),
        )
    )
    return (
        pl.concat([frame, missing], how="diagonal_relaxed")
        .join(per_interval, on=["station_id", "start_ts"], how="left")
        .with_columns(
            *(
                (pl.col(f"{m}_kwh") + pl.col(f"{m}_inside").fill_null(0.0)).alias(f"{m}_kwh")
                for m in MUX_COLUMNS
            ),
            *(pl.col(f"{m}_estimated_kwh").fill_null(0.0) for m in MUX_COLUMNS),
        )
        .drop(f"{m}_inside" for m in MUX_COLUMNS)
    )
