"""Completeness per station-day on SQLite and PostgreSQL, from the database and the archive."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import polars as pl
import pytest

from db.engine import bulk_connection
from powerwatch.core.errors import UnknownStationError
from powerwatch.rollups.completeness import completeness
from tests.conftest import T0, Database
from tests.conftest import load_frame as load
from tests.test_rollups import readings, refresh

DAY = date(2026, 11, 1)  # T0's day
LATER = datetime(2026, 12, 1, tzinfo=UTC)


def _at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def _day_with_holes() -> pl.DataFrame:
    """Every 10 s from 00:05, a 30-minute outage at 06:00, a 50 s hiccup (shorter than the
    gap threshold of max(5 x 10 s, 60 s)) at 12:00, silent after 23:50."""
    seconds = [
        s
        for s in range(300, 23 * 3600 + 50 * 60 + 1, 10)
        if not 6 * 3600 < s < 6 * 3600 + 1800 and not 12 * 3600 < s < 12 * 3600 + 50
    ]
    return readings("KhonKaen", seconds)


def test_received_expected_and_missing_ranges(synced: Database) -> None:
    frame = _day_with_holes()
    load(synced, frame)
    with bulk_connection() as bulk:
        result = completeness(bulk, "KhonKaen", DAY, now=LATER)
    assert result.received == frame.height
    assert result.normal_interval_s == 10.0
    # The station's first day: counted from its first reading at 00:05, not midnight.
    assert result.counted_from == _at(300)
    assert result.expected == 8640 - 30
    assert result.ratio == pytest.approx(frame.height / 8610)
    assert result.missing.rows() == [
        (_at(6 * 3600), _at(6 * 3600 + 1800), 1800.0),
        (_at(23 * 3600 + 3000), _at(86400), 600.0),  # nothing after 23:50
    ]


def test_a_station_added_during_the_day_counts_from_its_first_reading(
    synced: Database,
) -> None:
    # Added at 08:51, every 10 s until 10:51; the next day it is counted from midnight.
    first = 8 * 3600 + 51 * 60
    load(synced, readings("KhonKaen", [*range(first, first + 7200, 10), 86400, 86410]))
    with bulk_connection() as bulk:
        result = completeness(bulk, "KhonKaen", DAY, now=_at(first + 7200))
        nextday = completeness(bulk, "KhonKaen", DAY + timedelta(days=1), now=_at(86420))
    assert result.counted_from == _at(first)
    assert (result.received, result.expected) == (720, 720)
    assert result.ratio == 1.0
    # Nothing missing but the 10 s since its last reading (no 08:51 from midnight).
    assert result.missing.rows() == [(_at(first + 7190), _at(first + 7200), 10.0)]
    assert nextday.counted_from == _at(86400)


def test_gap_over_midnight_is_clipped_to_the_day(synced: Database) -> None:
    # Readings every 10 s until 23:55 the day before, then from 00:10.
    load(synced, readings("KhonKaen", [*range(-3600, -300, 10), *range(600, 1200, 10)]))
    with bulk_connection() as bulk:
        result = completeness(bulk, "KhonKaen", DAY, now=_at(1200))
        before = completeness(bulk, "KhonKaen", DAY - timedelta(days=1), now=_at(1200))
    assert result.missing.rows() == [(_at(0), _at(600), 600.0)]
    assert result.expected == 120  # the day so far: 20 minutes at 10 s
    assert before.missing.rows()[-1] == (_at(-310), _at(0), 310.0)


def test_a_day_without_readings_uses_the_stations_known_rate(synced: Database) -> None:
    load(synced, readings("KhonKaen", list(range(-86400, 0, 30))))
    refresh()  # the daily rollup knows the station's normal interval
    with bulk_connection() as bulk:
        result = completeness(bulk, "KhonKaen", DAY, now=LATER)
    assert (result.received, result.expected, result.normal_interval_s) == (0, 2880, 30.0)
    assert result.missing.rows() == [(_at(0), _at(86400), 86400.0)]


def test_archived_readings_still_count(synced: Database) -> None:
    frame = _day_with_holes()
    load(synced, frame)
    with bulk_connection() as bulk:
        expected = completeness(bulk, "KhonKaen", DAY, now=LATER)
    # What the archive does: write the readings as hive-partitioned Parquet (its layout:
    # one file per UTC day), then delete them from the database.
    archive = synced.data_dir / "archive"
    for day, rows in frame.group_by(pl.col("timestamp").dt.date().alias("day")):
        folder = archive / f"date={day[0]}"
        folder.mkdir(parents=True)
        rows.write_parquet(folder / "readings.parquet")
    with bulk_connection() as bulk:
        bulk.execute("DELETE FROM power_readings")
        gone = completeness(bulk, "KhonKaen", DAY, now=LATER)
        archived = completeness(bulk, "KhonKaen", DAY, archive_dir=archive, now=LATER)
    assert gone.received == 0
    assert archived.summary() == expected.summary()
    assert archived.missing.equals(expected.missing)


def test_unknown_station_is_refused(synced: Database) -> None:
    with bulk_connection() as bulk, pytest.raises(UnknownStationError, match="Nowhere"):
        completeness(bulk, "Nowhere", DAY)
