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
from db.stations import sync_stations
from powerwatch.core.settings import get_settings
from powerwatch.rollups.queries import rollups
from powerwatch.rollups.refresh import refresh_rollups
from powerwatch.rollups.statements import compute_statement, issue_statement, read_statement_csv
from schemas.channels import CHANNEL_KEYS, TIMESTAMP_DTYPE
from schemas.registry import load_registry
from tests.conftest import STATIONS_YAML, T0, Database, load_frame

MINUTE, HOUR, DAY = 60, 3600, 86400


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
    """Through the real load path (tests/conftest.load_frame), then a refresh."""
    load_frame(db, frame)
    with bulk_connection() as bulk:
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
    total = float(hours["muxPower1_kwh"].sum()) + float(hours["muxPower1_estimated_kwh"].sum())
    assert total == pytest.approx(day["muxPower1_kwh"])
    [gap] = events().to_dicts()
    assert (gap["kind"], gap["gap"], gap["spread"]) == ("normal", 1, 1)
    assert gap["kwh"] == pytest.approx(7210 / 60)
    # The month's statement (November in Bangkok): the whole register difference, measured.
    [tv5] = statement("2026-11").to_dicts()
    assert (tv5["opening_kwh"], tv5["closing_kwh"]) == (1000.0, pytest.approx(1239.8333, 1e-6))
    assert tv5["consumption_kwh"] == pytest.approx(1239.8333 - 1000, abs=1e-3)
    assert tv5["estimated_kwh"] == 0.0 and tv5["resets"] == tv5["flagged"] == 0
    assert tv5["completeness"] == pytest.approx((14390 - 7210) / (30 * DAY))


def test_gap_across_midnight_is_spread_and_the_days_telescope(synced: Database) -> None:
    # 22:00-23:00 on day 1, 01:00-02:00 on day 2; the register counts 1 kWh a minute.
    seconds = [*range(22 * HOUR, 23 * HOUR, 10), *range(25 * HOUR, 26 * HOUR, 10)]
    values = one_kwh_a_minute(seconds)
    load(synced, meter(seconds, values))
    days = table("day")
    # The gap: 22:59:50 -> 01:00:00 (7,210 s, 120.17 kWh); 10 s + 3,600 s of it fall on
    # day 1, 3,600 s on day 2: those parts are estimated, both days' rest is measured.
    assert days["muxPower1_estimated_kwh"].to_list() == pytest.approx(
        [3610 / 60, 3600 / 60], abs=1e-6
    )
    assert days["muxPower1_kwh"].to_list() == pytest.approx([3590 / 60, 3590 / 60], abs=1e-6)
    consumption = float(days["muxPower1_kwh"].sum()) + float(days["muxPower1_estimated_kwh"].sum())
    assert consumption == pytest.approx(values[-1] - values[0], abs=1e-6)  # telescopes


# Bangkok (UTC+7): October ends at 2026-10-31T17:00Z. Readings 16:00-16:30Z and
# 17:30-18:00Z, one a minute, 1 kWh a minute: the 61-minute gap straddles the month.
MONTH_END = datetime(2026, 10, 31, 16, tzinfo=UTC)
BEFORE = list(range(0, 30 * MINUTE + 1, MINUTE))
OUTAGE = list(range(31 * MINUTE, 91 * MINUTE, MINUTE))
AFTER = list(range(91 * MINUTE, 120 * MINUTE + 1, MINUTE))


def test_gap_across_a_month_boundary_in_the_sites_zone(synced: Database) -> None:
    seconds = BEFORE + AFTER
    load(synced, meter(seconds, one_kwh_a_minute(seconds, base=5000.0), start=MONTH_END))
    [oct_] = statement("2026-10").to_dicts()
    [nov] = statement("2026-11").to_dicts()
    assert oct_["period_end"] == datetime(2026, 10, 31, 17, tzinfo=UTC)
    assert (oct_["opening_kwh"], oct_["closing_kwh"]) == (5000.0, 5030.0)
    # 30 kWh measured, 30 of the gap's 61 in October (estimated), 31 in November.
    assert oct_["consumption_kwh"] == pytest.approx(60.0)
    assert oct_["estimated_kwh"] == pytest.approx(30.0)
    assert nov["opening_kwh"] == 5030.0 and nov["closing_kwh"] == 5120.0
    assert nov["consumption_kwh"] == pytest.approx(31.0 + 29.0)
    assert nov["estimated_kwh"] == pytest.approx(31.0)
    # The months telescope to the register's whole difference.
    assert oct_["consumption_kwh"] + nov["consumption_kwh"] == pytest.approx(120.0)
    assert oct_["share"] == 1.0  # the only meter with data at this station


@pytest.mark.parametrize(
    ("values", "counted", "resets"),
    [
        ([60.0, 62.4, 64.8, 0.0, 1.2, 2.4], 64.8 - 60.0 + 0.0 + 2.4, 1),  # reset to 0
        ([60.0, 62.4, 64.8, 12.3, 13.5, 14.7], 64.8 - 60.0 + 12.3 + 2.4, 1),  # replacement
    ],
    ids=["reset-to-0", "replacement-non-zero-start"],
)
def test_a_new_meter_cycle_counts_from_zero(
    synced: Database, values: list[float], counted: float, resets: int
) -> None:
    seconds = [i * MINUTE for i in range(len(values))]
    load(synced, meter(seconds, values))
    [hour] = table().to_dicts()
    assert hour["muxPower1_kwh"] == pytest.approx(counted)
    assert (hour["muxPower1_resets"], hour["muxPower1_flagged"]) == (resets, 0)
    [reset] = events().to_dicts()
    assert (reset["kind"], reset["prev_kwh"], reset["value_kwh"]) == ("reset", 64.8, values[3])


def test_wrap_at_the_declared_modulus(synced: Database, registry_file: Path) -> None:
    registry_file.write_text(
        STATIONS_YAML.replace("scene: northeast", "scene: northeast\n    meter_modulus: 1000000")
    )
    engine = make_engine(synced.url)
    sync_stations(engine, load_registry(registry_file))
    engine.dispose()
    values = [999_999.0, 999_999.5, 999_999.99, 0.42, 0.9]
    load(synced, meter([i * MINUTE for i in range(5)], values))
    [hour] = table().to_dicts()
    assert hour["muxPower1_kwh"] == pytest.approx(0.99 + 0.43 + 0.48)
    assert (hour["muxPower1_wraps"], hour["muxPower1_resets"]) == (1, 0)
    # Without the modulus the same drop would be a new cycle: ChiangMai has none.
    load(synced, meter([i * MINUTE for i in range(5)], values, station="ChiangMai"))
    [other] = table(station="ChiangMai").to_dicts()
    assert (other["muxPower1_wraps"], other["muxPower1_resets"]) == (0, 1)
    assert other["muxPower1_kwh"] == pytest.approx(0.99 + 0.42 + 0.48)


def test_a_glitch_is_flagged_listed_and_invents_nothing(synced: Database) -> None:
    load(synced, meter([0, 60, 120, 180], [5000.0, 4990.0, 5001.0, 5002.0]))
    [hour] = table().to_dicts()
    assert hour["muxPower1_kwh"] == pytest.approx(2.0)  # 5000 -> 5002, the dip ignored
    assert (hour["muxPower1_flagged"], hour["muxPower1_resets"]) == (1, 0)
    [glitch] = events().to_dicts()
    assert (glitch["kind"], glitch["value_kwh"], glitch["kwh"]) == ("glitch", 4990.0, 0.0)
    assert "neither a reset nor a wrap" in glitch["reason"]


def test_an_implausible_jump_is_flagged_and_excluded_with_the_reason(synced: Database) -> None:
    # 9 GWh in a minute: far above 2 MW (the default plausible power of one meter).
    load(synced, meter([0, 60, 120, 180], [5000.0, 9_000_000.0, 5001.0, 5002.0]))
    [hour] = table().to_dicts()
    assert hour["muxPower1_kwh"] == pytest.approx(2.0)
    assert hour["muxPower1_flagged"] == 1
    [jump] = events().to_dicts()
    assert jump["kind"] == "implausible" and jump["kwh"] == 0.0
    assert "> 2000.0 kW" in jump["reason"]


def test_late_data_restates_a_closed_month_as_a_new_revision(synced: Database) -> None:
    seconds = BEFORE + AFTER
    load(synced, meter(seconds, one_kwh_a_minute(seconds, base=5000.0), start=MONTH_END))
    directory = get_settings().statements_dir
    with bulk_connection() as bulk:
        one = issue_statement(bulk, "2026-10", "Asia/Bangkok", directory)
        again = issue_statement(bulk, "2026-10", "Asia/Bangkok", directory)
    assert (one.revision, one.new, again.revision, again.new) == (1, True, 1, False)
    tv5 = one.statement.filter(pl.col("station") == "KhonKaen", pl.col("broadcaster") == "TV5")
    assert tv5["estimated_kwh"][0] == pytest.approx(30.0)
    # The statement files read back equal to what was issued.
    assert [f.name for f in one.files] == [
        "statement-2026-10-r1.csv",
        "statement-2026-10-r1.parquet",
    ]
    assert_frame_equal(read_statement_csv(one.files[0]), one.statement)
    assert_frame_equal(pl.read_parquet(one.files[1]), one.statement)

    # The outage's readings arrive late: the gap is filled, estimated turns measured.
    load(synced, meter(OUTAGE, one_kwh_a_minute(OUTAGE, base=5000.0), start=MONTH_END))
    with bulk_connection() as bulk:
        two = issue_statement(bulk, "2026-10", "Asia/Bangkok", directory)
        revisions = bulk.frame(
            "SELECT e.revision, e.estimated_kwh, e.consumption_kwh FROM energy_statements e "
            "JOIN stations s ON s.id = e.station_id "
            "WHERE e.broadcaster = 'TV5' AND s.name = 'KhonKaen' ORDER BY e.revision"
        )
    assert (two.revision, two.new) == (2, True)
    [change] = two.changes
    assert change == (
        "KhonKaen TV5: closing_kwh 5030.0 -> 5059.0, consumption_kwh 60.0 -> 59.0, "
        "estimated_kwh 30.0 -> 0.0"
    )
    tv5 = two.statement.filter(pl.col("station") == "KhonKaen", pl.col("broadcaster") == "TV5")
    assert tv5["estimated_kwh"][0] == 0.0
    # 16:00 -> 16:59Z, all measured (16:59 -> 17:00 belongs to November's first reading).
    assert tv5["consumption_kwh"][0] == pytest.approx(59.0)
    assert revisions["revision"].to_list() == [1, 2]  # the first revision is kept
    assert revisions["estimated_kwh"].to_list() == pytest.approx([30.0, 0.0])
    assert all(f.exists() for f in one.files + two.files)


def test_the_delta_across_archived_days_is_counted_from_the_stored_register(
    synced: Database,
) -> None:
    """Day 1's raw readings are archived (deleted); readings resume on day 3: the first
    delta steps from day 1's last register kept in the rollups, spread over the gap."""
    from tests.test_rollups import _delete_raw

    first = list(range(0, HOUR, MINUTE))
    load(synced, meter(first, one_kwh_a_minute(first)))
    _delete_raw("KhonKaen", DAY)
    later = list(range(2 * DAY, 2 * DAY + HOUR, MINUTE))
    load(synced, meter(later, one_kwh_a_minute(later)))
    days = table("day")
    assert days["start"].dt.day().to_list() == [1, 2, 3]
    total = float(days["muxPower1_kwh"].sum()) + float(days["muxPower1_estimated_kwh"].sum())
    assert total == pytest.approx(later[-1] / 60, abs=1e-6)  # the register's whole difference
    # The gap 00:59 day 1 -> 00:00 day 3 (2,821 min): day 2 all estimated (1,440 kWh).
    assert days["muxPower1_estimated_kwh"].to_list() == pytest.approx([1381.0, 1440.0, 0.0])
    [gap] = events().to_dicts()
    assert (gap["prev_ts"] - gap["ts"]) // 1000 == -(2 * DAY - 59 * MINUTE)


@pytest.mark.parametrize("bad", ["-5", "'lots'", "true"])
def test_a_bad_meter_modulus_is_refused_naming_the_entry(tmp_path: Path, bad: str) -> None:
    from powerwatch.core.errors import RegistryError

    path = tmp_path / "stations.yaml"
    path.write_text(
        STATIONS_YAML.replace("scene: north\n", f"scene: north\n    meter_modulus: {bad}\n")
    )
    with pytest.raises(RegistryError, match=r"registry entry 2 \(ChiangMai\): meter_modulus must"):
        load_registry(path)
    path.write_text(
        STATIONS_YAML.replace("scene: north\n", "scene: north\n    meter_modulus: 1000000\n")
    )
    assert [s.meter_modulus for s in load_registry(path)] == [None, 1e6, None]
