"""Energy accounting (issue 13) on SQLite and PostgreSQL, through the real load path and
refresh: every class of meter delta with hand-computed figures, the statement (month in
the site's zone, revisions, files read back equal)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from db.engine import bulk_connection, make_engine
from db.rollups import refresh_rollups, rollups
from db.stations import sync_stations
from db.statements import compute_statement, issue_statement, read_statement_csv
from powerwatch import landing
from powerwatch.loader import load_chunk
from powerwatch.registry import load_registry
from powerwatch.settings import get_settings
from schemas.channels import CHANNEL_KEYS, TIMESTAMP_DTYPE
from tests.conftest import STATIONS_YAML, T0, Database, write_chunk

MINUTE, HOUR, DAY = 60, 3600, 86400
_chunks = iter(range(10**6))


def meter(
    seconds: Sequence[int], values: Sequence[float], station: str = "KhonKaen", start: datetime = T0
) -> pl.DataFrame:
    """Readings at `start` + each second; muxPower1 follows `values`, the other meters null."""
    frame = pl.DataFrame(
        {
            "station": [station] * len(seconds),
            "timestamp": [start + timedelta(seconds=s) for s in seconds],
            "v": [float(v) for v in values],
        }
    ).with_columns(pl.col("timestamp").cast(TIMESTAMP_DTYPE))
    return frame.select(
        "station",
        "timestamp",
        *(
            (
                pl.col("v")
                if key == "muxPower1"
                else pl.lit(None, pl.Float64)
                if key.startswith("mux")
                else pl.lit(1000.0)
            ).alias(key)
            for key in CHANNEL_KEYS
        ),
    )


def load(db: Database, frame: pl.DataFrame) -> None:
    """Through the real load path (landing chunk -> load_chunk), then a refresh."""
    write_chunk(frame, db.data_dir / "landing", f"chunk-{next(_chunks):06d}.parquet")
    settings = get_settings()
    with bulk_connection() as bulk:
        for chunk in landing.list_chunks(settings.landing_dir):
            load_chunk(bulk, chunk, settings)
        refresh_rollups(bulk)


def table(interval: str = "hour", station: str = "KhonKaen") -> pl.DataFrame:
    with bulk_connection() as bulk:
        return rollups(bulk, "hour" if interval == "hour" else "day", station=station)


def events() -> pl.DataFrame:
    with bulk_connection() as bulk:
        return bulk.frame("SELECT * FROM energy_events ORDER BY station_id, meter, ts")


def statement(month: str, tz: str = "Asia/Bangkok") -> pl.DataFrame:
    with bulk_connection() as bulk:
        frame = compute_statement(bulk, month, tz)
    return frame.filter(pl.col("broadcaster") == "TV5")


def one_kwh_a_minute(seconds: Sequence[int], base: float = 1000.0) -> list[float]:
    return [round(base + s / 60, 6) for s in seconds]


def test_issue_example_outage_inside_a_day_is_counted_exactly(synced: Database) -> None:
    # 00:00-01:00 and 03:00-04:00 every 10 s, 1 kWh a minute straight through the outage.
    seconds = [*range(0, HOUR, 10), *range(3 * HOUR, 4 * HOUR, 10)]
    load(synced, meter(seconds, one_kwh_a_minute(seconds)))
    [day] = table("day").to_dicts()
    assert day["muxPower1_kwh"] == pytest.approx(1239.8333 - 1000, abs=1e-3)
    assert day["muxPower1_estimated_kwh"] == 0  # the whole gap lies inside the day
    assert day["muxPower1_gaps"] == 1
    hours = table("hour")
    # Hourly, the 120.17 kWh across the gap are spread over its 7,210 s: estimated there.
    assert hours["start"].dt.hour().to_list() == [0, 1, 2, 3]
    assert hours["muxPower1_estimated_kwh"].to_list() == pytest.approx(
        [10 / 60, 60.0, 60.0, 0.0], abs=1e-6
    )
    assert hours["samples"].to_list() == [360, 0, 0, 360]
    total = hours["muxPower1_kwh"].sum() + hours["muxPower1_estimated_kwh"].sum()
    assert total == pytest.approx(day["muxPower1_kwh"])
    [gap] = events().to_dicts()
    assert (gap["kind"], gap["gap"], gap["spread"]) == ("normal", 1, 1)
    assert gap["kwh"] == pytest.approx(7210 / 60)
