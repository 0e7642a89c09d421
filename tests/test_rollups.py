"""Rollups on SQLite and PostgreSQL: meter resets, gaps, late and out-of-order data,
rollups surviving the deletion (archiving) of their raw rows, the schema migration."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

import polars as pl
import pytest
import sqlalchemy
from polars.testing import assert_frame_equal

from db import migrate
from db.engine import bulk_connection, make_engine
from db.rollup_queue import pending_hours
from powerwatch.rollups.queries import rollups
from powerwatch.rollups.refresh import RefreshResult, refresh_rollups
from schemas.channels import CHANNEL_KEYS, TIMESTAMP_DTYPE
from tests.conftest import T0, Database
from tests.conftest import load_frame as load  # the real load path, in this process

HOUR = 3600


def readings(
    station: str, seconds: Sequence[float], mux: Sequence[float] | None = None
) -> pl.DataFrame:
    """One station's readings at T0 + each second; meters follow `mux` (default: 0.01 kWh/s
    from 1000), active power = the second, so every statistic is easy to predict."""
    values = mux if mux is not None else [1000.0 + 0.01 * s for s in seconds]
    frame = pl.DataFrame(
        {
            "station": [station] * len(seconds),
            "timestamp": [T0 + timedelta(seconds=s) for s in seconds],
            "second": [float(s) for s in seconds],
            "meter": values,
        }
    ).with_columns(pl.col("timestamp").cast(TIMESTAMP_DTYPE))
    return frame.select(
        "station",
        "timestamp",
        *(
            (pl.col("meter") if key.startswith("mux") else pl.col("second")).alias(key)
            for key in CHANNEL_KEYS
        ),
    )


def refresh() -> RefreshResult:
    with bulk_connection() as bulk:
        return refresh_rollups(bulk)


def hourly(station: str, interval: str = "hour") -> pl.DataFrame:
    with bulk_connection() as bulk:
        return rollups(bulk, "hour" if interval == "hour" else "day", station=station)


def test_consumption_across_a_meter_reset(synced: Database) -> None:
    seconds = list(range(1200))
    mux = [1000.0 + 0.01 * s if s < 600 else 0.5 + 0.01 * (s - 600) for s in seconds]
    load(synced, readings("KhonKaen", seconds, mux))
    refresh()
    [hour] = hourly("KhonKaen").to_dicts()
    # 599 normal deltas before the reset, the new cycle's first value (0.5: it counts
    # from 0), 599 after it (issue 13: a reset's new cycle is consumption, not lost).
    assert hour["muxPower1_kwh"] == pytest.approx(12.48)
    assert (hour["muxPower1_resets"], hour["muxPower1_gaps"]) == (1, 0)
    assert hour["samples"] == 1200
    assert hour["activePower1_avg"] == pytest.approx(599.5)
    assert (hour["activePower1_min"], hour["activePower1_max"]) == (0.0, 1199.0)


def test_a_gap_inside_the_hour_is_counted_exactly(synced: Database) -> None:
    seconds = [*range(600), *range(1200, 1800)]  # ten minutes missing at 1 Hz
    load(synced, readings("KhonKaen", seconds))
    refresh()
    [hour] = hourly("KhonKaen").to_dicts()
    # The 6.01 kWh across the gap are counted (the meter kept counting), and exactly: the
    # whole gap is inside the hour, nothing is estimated (issue 13).
    assert hour["muxPower4_kwh"] == pytest.approx(2 * 5.99 + 6.01)
    assert hour["muxPower4_estimated_kwh"] == 0
    assert (hour["muxPower4_resets"], hour["muxPower4_gaps"]) == (0, 1)
    assert hour["normal_interval_s"] == 1.0


def test_deltas_across_the_hour_boundary_and_days_from_hours(synced: Database) -> None:
    load(synced, readings("KhonKaen", list(range(3000, 2 * HOUR + 600))))
    refresh()
    hours = hourly("KhonKaen")
    # Each delta belongs to the hour of its later reading: nothing lost at the boundaries.
    assert hours["muxPower2_kwh"].to_list() == pytest.approx([5.99, 36.0, 6.0])
    assert hours["muxPower2_gaps"].to_list() == [0, 0, 0]
    [day] = hourly("KhonKaen", "day").to_dicts()
    assert day["muxPower2_kwh"] == pytest.approx(47.99)
    assert day["samples"] == hours["samples"].sum() == 2 * HOUR + 600 - 3000
    assert day["activePower3_max"] == 2 * HOUR + 599


def _scenario() -> pl.DataFrame:
    """Three hours with a reset, a gap and readings on both sides of hour boundaries."""
    seconds = [s for s in range(0, 3 * HOUR, 2) if not 5000 <= s < 5600]
    mux = [1000.0 + 0.01 * s if s < 8000 else 3.0 + 0.01 * (s - 8000) for s in seconds]
    return readings("X", seconds, mux)


def _as(frame: pl.DataFrame, station: str) -> pl.DataFrame:
    return frame.with_columns(pl.lit(station).alias("station"))


def test_late_and_out_of_order_loads_give_the_in_order_rollups(synced: Database) -> None:
    data = _scenario()
    load(synced, _as(data, "KhonKaen"))  # reference: everything at once, in order
    refresh()
    # The same readings for ChiangMai: the last hour first, then the first, then the middle
    # hour's odd readings, then (late) its even ones, shuffled; refreshing in between.
    late = _as(data, "ChiangMai").with_row_index("i")
    hour_of = pl.col("timestamp").dt.hour()
    pieces = [
        late.filter(hour_of == 2),
        late.filter(hour_of == 0),
        late.filter((hour_of == 1) & (pl.col("i") % 2 == 1)),
        late.filter((hour_of == 1) & (pl.col("i") % 2 == 0)).sample(fraction=1.0, seed=1),
    ]
    for piece in pieces:
        load(synced, piece.drop("i"))
        refresh()
    expected = hourly("KhonKaen").drop("station")
    assert expected["muxPower1_resets"].sum() == 1 and expected["muxPower1_gaps"].sum() == 1
    assert_frame_equal(hourly("ChiangMai").drop("station"), expected, check_exact=False)
    assert_frame_equal(
        hourly("ChiangMai", "day").drop("station"),
        hourly("KhonKaen", "day").drop("station"),
        check_exact=False,
    )


def _delete_raw(station: str, before_seconds: int) -> None:
    """What the archive does after exporting: delete the raw readings."""
    engine = make_engine()
    with engine.begin() as conn:
        conn.execute(
            sqlalchemy.text(
                "DELETE FROM power_readings WHERE ts < :ts AND station_id = "
                "(SELECT id FROM stations WHERE name = :name)"
            ),
            {"ts": int(T0.timestamp() * 1000) + before_seconds * 1000, "name": station},
        )
    engine.dispose()


def test_rollups_survive_archiving_and_take_late_data_afterwards(synced: Database) -> None:
    data = _scenario()
    # Late readings between the stored ones (meters interpolated), in hours 0 and 2.
    extra = readings("X", [100.5, 101.5, 2 * HOUR + 0.5, 2 * HOUR + 7.5]).with_columns(
        pl.lit(99_999.0).alias("activePower1")
    )
    load(synced, _as(data, "KhonKaen"))
    refresh()
    before = hourly("KhonKaen")
    _delete_raw("KhonKaen", 2 * HOUR)  # hours 0 and 1 archived
    assert refresh().marks == 0
    assert_frame_equal(hourly("KhonKaen"), before)

    load(synced, _as(extra, "KhonKaen"))
    result = refresh()
    assert (result.merged, result.recomputed) == (1, 1)  # hour 0 merged, hour 2 recomputed
    # Reference: the same readings, never archived.
    load(synced, _as(pl.concat([data, extra]), "ChiangMai"))
    refresh()
    after = hourly("KhonKaen")
    assert after["samples"].to_list() == [
        before["samples"][0] + 2,
        before["samples"][1],
        before["samples"][2] + 2,
    ]
    assert after["activePower1_max"].to_list()[0] == 99_999.0
    assert_frame_equal(
        after.drop("station"), hourly("ChiangMai").drop("station"), check_exact=False
    )
    assert_frame_equal(
        hourly("KhonKaen", "day").drop("station"),
        hourly("ChiangMai", "day").drop("station"),
        check_exact=False,
    )


def test_pending_hours_until_refreshed(synced: Database) -> None:
    load(synced, readings("KhonKaen", list(range(0, 2 * HOUR, 10))))
    with bulk_connection() as bulk:
        assert pending_hours(bulk) == 2
        assert rollups(bulk, "hour").is_empty()
    assert refresh() == RefreshResult(marks=2, recomputed=2, merged=0, days=1)
    with bulk_connection() as bulk:
        assert pending_hours(bulk) == 0


def test_refresh_in_small_batches_gives_the_same_rollups(synced: Database) -> None:
    data = _scenario()
    load(synced, _as(data, "KhonKaen"))
    # Each transaction takes one queued hour (plus the next hour, which it recomputes and
    # whose marks it consumes): two transactions for three hours, each rebuilding the day.
    with bulk_connection() as bulk:
        assert refresh_rollups(bulk, batch_readings=1).days == 2
    load(synced, _as(data, "ChiangMai"))
    with bulk_connection() as bulk:
        result = refresh_rollups(bulk, batch_hours=1)
        assert refresh_rollups(bulk, batch_readings=1).marks == 0
    assert (result.marks, result.days) == (3, 2)
    assert_frame_equal(
        hourly("ChiangMai").drop("station"), hourly("KhonKaen").drop("station"), check_exact=False
    )


def test_migration_queues_existing_readings_and_downgrades(synced: Database) -> None:
    load(synced, readings("KhonKaen", list(range(0, 2 * HOUR, 5))))
    refresh()
    expected = hourly("KhonKaen")
    engine = make_engine()
    migrate.downgrade(engine, "0001")
    with engine.connect() as conn:
        tables = set(sqlalchemy.inspect(conn).get_table_names())
    assert not {"rollup_hourly", "rollup_daily", "rollup_dirty"} & tables
    assert "power_readings" in tables
    migrate.upgrade(engine)
    engine.dispose()
    with bulk_connection() as bulk:
        assert pending_hours(bulk) == 2  # the readings already stored are queued
    refresh()
    assert_frame_equal(hourly("KhonKaen"), expected)


def test_meter_without_a_value_steps_over_short_holes_and_gaps_long_ones(
    synced: Database,
) -> None:
    seconds = list(range(HOUR))
    frame = readings("KhonKaen", seconds).with_columns(
        # muxPower2: N/A for 30 s (under the 60 s threshold), muxPower3: N/A for 10 minutes,
        # muxPower4: never reported.
        pl.when(pl.col("activePower1").is_between(1000, 1029))
        .then(None)
        .otherwise(pl.col("muxPower2"))
        .alias("muxPower2"),
        pl.when(pl.col("activePower1").is_between(1000, 1599))
        .then(None)
        .otherwise(pl.col("muxPower3"))
        .alias("muxPower3"),
        pl.lit(None, pl.Float64).alias("muxPower4"),
    )
    load(synced, frame)
    refresh()
    [hour] = hourly("KhonKaen").to_dicts()
    assert (hour["muxPower2_kwh"], hour["muxPower2_gaps"]) == (pytest.approx(35.99), 0)
    # 999 s -> 1600 s is a gap inside the hour: its 6.01 kWh are counted, exactly.
    assert (hour["muxPower3_kwh"], hour["muxPower3_gaps"]) == (pytest.approx(35.99), 1)
    assert (hour["muxPower4_kwh"], hour["muxPower4_gaps"], hour["muxPower4_count"]) == (0, 0, 0)
    assert hour["muxPower4_avg"] is None


def test_archive_protocol_refresh_pending_then_delete(synced: Database) -> None:
    """The archive refreshes what is queued inside its delete transaction: nothing lost."""
    from db.tables import power_readings
    from powerwatch.rollups.refresh import refresh_pending

    load(synced, readings("KhonKaen", list(range(0, 2 * HOUR, 10))))
    with bulk_connection() as bulk:
        with bulk.transaction(lock_tables=(power_readings.name,)):
            assert refresh_pending(bulk).marks == 2
            bulk.execute("DELETE FROM power_readings")
        assert pending_hours(bulk) == 0
    assert hourly("KhonKaen")["samples"].to_list() == [360, 360]
