"""Queries and the CSV export, on both backends."""

from __future__ import annotations

import io
from datetime import timedelta

import polars as pl

from db import queries
from db.engine import bulk_connection
from db.queries import ReadingFilter
from powerwatch.site.output import write_csv
from tests.conftest import T0, Database, load_frame, make_readings

STATIONS = ["KhonKaen", "ChiangMai", "Songkhla"]


def test_readings_filters(synced: Database) -> None:
    frame = make_readings(STATIONS, 100)
    load_frame(synced, frame)
    with bulk_connection() as bulk:
        one = queries.readings(
            bulk,
            ReadingFilter(
                station="ChiangMai",
                start=T0 + timedelta(seconds=10),
                end=T0 + timedelta(seconds=20),
            ),
        )
        page = queries.readings(bulk, ReadingFilter(station="Songkhla", limit=5, offset=3))
        rest = queries.readings(bulk, ReadingFilter(station="Songkhla", offset=97))
        newest_first = queries.readings(
            bulk, ReadingFilter(station="Songkhla", order="desc", limit=2)
        )
        everything = queries.readings(bulk)
    expected = frame.filter(
        (pl.col("station") == "ChiangMai")
        & pl.col("timestamp").is_between(
            T0 + timedelta(seconds=10), T0 + timedelta(seconds=20), closed="left"
        )
    )
    assert one.equals(expected)
    songkhla = frame.filter(pl.col("station") == "Songkhla")
    assert page.equals(songkhla.slice(3, 5))
    assert rest.equals(songkhla.slice(97))  # an offset without a limit: all the rest
    assert newest_first.equals(songkhla.reverse().head(2))
    assert everything.equals(frame.sort("station", "timestamp"))


def test_latest_reading_per_station(synced: Database) -> None:
    frame = make_readings(STATIONS[:2], 50)
    load_frame(synced, frame)
    with bulk_connection() as bulk:
        newest = queries.latest(bulk)
        one = queries.latest(bulk, "KhonKaen")
    expected = frame.sort("timestamp").group_by("station").last().sort("station")
    assert newest.equals(expected)
    assert one.equals(expected.filter(pl.col("station") == "KhonKaen"))


def test_interval_aggregates(synced: Database) -> None:
    frame = make_readings(["KhonKaen"], 180)
    load_frame(synced, frame)
    with bulk_connection() as bulk:
        per_minute = queries.aggregates(bulk, 60)
    expected = frame.group_by_dynamic("timestamp", every="1m").agg(
        pl.len().alias("samples"),
        pl.col("activePower1").mean().alias("active_power1_avg"),
        pl.col("activePower1").min().alias("active_power1_min"),
        pl.col("muxPower4").max().alias("mux_power4_max"),
    )
    assert (
        per_minute["samples"].to_list() == expected["samples"].cast(pl.Int64).to_list() == [60] * 3
    )
    assert per_minute["bucket"].to_list() == expected["timestamp"].to_list()
    for column in ("active_power1_avg", "active_power1_min", "mux_power4_max"):
        assert per_minute[column].to_list() == expected[column].to_list()


def test_station_summary_counts_and_last_reading(synced: Database) -> None:
    frame = make_readings(["KhonKaen"], 7)
    load_frame(synced, frame)
    with bulk_connection() as bulk:
        summary = queries.station_summary(bulk)
    rows = {r["station"]: r for r in summary.iter_rows(named=True)}
    assert rows["KhonKaen"]["readings"] == 7
    assert rows["KhonKaen"]["last_reading"] == frame["timestamp"].max()
    assert rows["Songkhla"]["readings"] == 0 and rows["Songkhla"]["last_reading"] is None


def test_csv_export_is_format_c_and_reads_back_equal(synced: Database) -> None:
    frame = make_readings(STATIONS, 5).with_columns(
        pl.when(pl.col("station") == "ChiangMai")
        .then(None)
        .otherwise(pl.col("activePower3"))
        .alias("activePower3"),
        (pl.col("muxPower1") + 0.1 + 1e-9).alias("muxPower1"),  # awkward binary fractions
    )
    load_frame(synced, frame)
    out = io.StringIO()
    with bulk_connection() as bulk:
        write_csv(queries.iter_readings(bulk), out)
    text = out.getvalue()
    header, first = text.splitlines()[:2]
    assert header == (
        "timestamp,station,activePower1,activePower2,activePower3,activePower4,activePower5,"
        "activePower6,muxPower1,muxPower2,muxPower3,muxPower4"
    )
    assert first.startswith("2026-11-01T00:00:00.000Z,ChiangMai,")
    assert ",," in first  # NULL is an empty cell
    back = pl.read_csv(io.StringIO(text), schema_overrides={"timestamp": pl.String}).with_columns(
        pl.col("timestamp").str.to_datetime(
            "%Y-%m-%dT%H:%M:%S%.3fZ", time_unit="ms", time_zone="UTC"
        )
    )
    assert back.select(frame.columns).equals(frame.sort("station", "timestamp"))
