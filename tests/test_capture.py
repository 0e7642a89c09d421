"""Live capture against real WebSocket servers (the simulator and hand-made ones), real files,
and the real load path into SQLite and PostgreSQL.

The simulator's ground-truth record (every frame whose send succeeded, per connection)
is the expectation: the database must hold exactly its valid readings, and every
rejected frame must be in the dead-letter file with its reason class.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import polars as pl
import pytest
from websockets.asyncio.server import ServerConnection, serve

from db.engine import bulk_connection, make_engine
from db.queries import readings
from db.stations import sync_stations
from powerwatch.capture.frames import check_frames, reason_class
from powerwatch.capture.runner import Capture, CaptureReport
from powerwatch.core.settings import get_settings
from powerwatch.devtools.simulator import (
    FRAME_FAULTS,
    MAX_FRAME,
    FaultPlan,
    Simulator,
    expected_readings,
    read_record,
)
from powerwatch.load import landing
from powerwatch.load.chunks import ChunkReport, load_chunk
from schemas.reading import CHANNEL_KEYS, REASON
from schemas.registry import Station
from tests.conftest import Database

pytestmark = [pytest.mark.timeout(60), pytest.mark.anyio]

ALL_FAULTS = FaultPlan(
    frame_rate=0.3,
    weights={**dict.fromkeys(FRAME_FAULTS, 1.0), "missing_timestamp": 0.0},
    drop_every=1.5,
    restart_every=0,
)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def capture_for(stations: list[Station], tmp: Path, flush_rows: int = 200) -> Capture:
    return Capture(
        stations, tmp / "landing", tmp / "dead-letter", flush_seconds=0.5, flush_rows=flush_rows
    )


def register(db: Database, stations: list[Station]) -> None:
    engine = make_engine(db.url)
    sync_stations(engine, stations)
    engine.dispose()


def load_all(landing_dir: Path) -> list[ChunkReport]:
    settings = get_settings()
    reports = []
    for chunk in landing.list_chunks(landing_dir):
        with bulk_connection(settings.database_url) as bulk:
            reports.append(load_chunk(bulk, chunk, settings))
    return reports


def stored() -> pl.DataFrame:
    with bulk_connection(get_settings().database_url) as bulk:
        return readings(bulk)


def dead_letters(report: CaptureReport) -> pl.DataFrame:
    if report.dead_letter is None:
        return pl.DataFrame(schema={"station": pl.String, "reason": pl.String})
    return pl.read_ndjson(Path(report.dead_letter))


def rejected_classes(record: Path) -> Counter[str]:
    frames = read_record(record).filter(pl.col("expect") == "rejected")
    return Counter(frames["reason"].to_list())


def assert_same_readings(got: pl.DataFrame, expected: pl.DataFrame) -> None:
    assert got.height == expected.height
    assert got.select(expected.columns).equals(expected)


# --- the batch check, without the network ------------------------------------------------


def test_every_fault_class_is_judged_as_the_simulator_meant() -> None:
    sim = Simulator(3, 10, seed=5, faults=True, fault_plan=ALL_FAULTS)
    names, texts, want = [], [], Counter[str]()
    for station in sim._stations:
        for tick in sim.ticks(station.name, range(1500)):
            for frame in tick.frames:
                if frame.binary or len(frame.payload) > MAX_FRAME:
                    continue  # rejected on arrival, never part of a batch
                names.append(station.name)
                texts.append(frame.payload.decode())
                want[frame.reason or frame.expect] += 1
    received = int(time.time() * 1000) + 60_000
    frames = pl.DataFrame(
        {"station": names, "received_at": [received] * len(names), "raw": texts},
        schema_overrides={"received_at": pl.Datetime("ms", "UTC")},
    )
    uuids = pl.DataFrame(
        {"station": [s.name for s in sim.stations], "uuid": [s.uuid for s in sim.stations]}
    )
    checked = check_frames(frames, uuids)
    got = Counter(checked.rejected.select(reason_class(pl.col(REASON))).to_series().to_list())
    got["reading"] = checked.readings.height - want["duplicate"]
    got["duplicate"] = want["duplicate"]
    got["heartbeat"] = int(checked.heartbeats["count"].sum())
    got["hello"] = int(checked.hellos["count"].sum())
    assert got == want
    # the reason says what exactly: the class, then the detail
    assert checked.rejected[REASON].str.contains(": ").all()
    assert checked.readings["station"].is_in(names).all()


# --- end to end over the network ---------------------------------------------------------


async def run_until(sim: Simulator, capture: Capture, seconds: float) -> CaptureReport:
    """Capture while the simulator runs for `seconds`; stop the simulator first, so
    every frame it sent has arrived when the capture stops."""
    task = asyncio.create_task(capture.run())
    await asyncio.sleep(seconds)
    await sim.stop()
    await asyncio.sleep(0.3)
    capture.stop()
    return await task


@pytest.mark.slow
async def test_simulator_to_database_is_exactly_the_delivered_valid_readings(
    database: Database, tmp_path: Path
) -> None:
    record = tmp_path / "record.ndjson"
    sim = Simulator(4, 40, seed=7, faults=True, fault_plan=ALL_FAULTS, record_path=record)
    await sim.start()
    register(database, sim.stations)
    capture = capture_for(sim.stations, database.data_dir, flush_rows=150)
    report = await run_until(sim, capture, 4.0)

    assert len(report.chunks) >= 4
    sizes = [landing.read_chunk(database.data_dir / "landing" / c).height for c in report.chunks]
    assert max(sizes) <= 2 * 150  # the buffer is bounded by flush_rows
    loads = load_all(database.data_dir / "landing")
    assert all(r.status == "loaded" and not r.rejected_by_reason for r in loads)

    truth = expected_readings(record)
    assert truth.height > 200
    assert_same_readings(stored(), truth)
    # every rejected frame accounted for, by reason class, in the report and the dead letters
    expected_rejects = rejected_classes(record)
    assert report.rejects == dict(expected_rejects)
    letters = dead_letters(report)
    assert Counter(letters.select(reason_class(pl.col(REASON))).to_series()) == expected_rejects
    assert set(letters.columns) == {"station", "received_at", "reason", "raw", "raw_base64"}
    sent = read_record(record).filter(pl.col("event").is_null())
    assert report.frames == sent.height
    assert sum(r.duplicates for r in loads) == sent.filter(pl.col("expect") == "duplicate").height
    assert sum(s.gaps for s in report.stations) > 0  # drops happened and were survived


@pytest.mark.slow
async def test_restarts_and_a_station_that_never_answers_do_not_touch_the_others(
    sqlite_database: Database, tmp_path: Path
) -> None:
    record = tmp_path / "record.ndjson"
    silent = socket.create_server(("127.0.0.1", 0))  # accepts TCP, never speaks WebSocket
    port = silent.getsockname()[1]
    dead = Station("Silent", "0b6c7c9e-3f0e-4b8e-9f5e-2d1f7a0c1a11", "127.0.0.1", "x",
                   f"ws://127.0.0.1:{port}/")  # fmt: skip
    sim = Simulator(3, 30, seed=2, hello=False, record_path=record)
    await sim.start()
    stations = [dead, *sim.stations]
    register(sqlite_database, stations)
    capture = capture_for(stations, sqlite_database.data_dir)
    task = asyncio.create_task(capture.run())
    await asyncio.sleep(1.0)
    await sim.restart_station("SIM-0002", 0.8)  # down for 0.8 s, back on the same port
    await asyncio.sleep(2.0)
    await sim.stop()
    await asyncio.sleep(0.3)
    capture.stop()
    report = await task
    silent.close()

    by_name = {s.name: s for s in report.stations}
    assert by_name["Silent"].connects == 0 and by_name["Silent"].frames == 0
    assert by_name["SIM-0002"].reconnects >= 1 and by_name["SIM-0002"].gaps >= 1
    assert by_name["SIM-0001"].reconnects == 0
    load_all(sqlite_database.data_dir / "landing")
    assert_same_readings(stored(), expected_readings(record))
    per_station = stored().group_by("station").len()
    assert dict(per_station.iter_rows())["SIM-0001"] >= 80  # ~3 s at 30 Hz, undisturbed


@pytest.fixture
async def odd_station() -> AsyncIterator[tuple[Station, list[str | bytes]]]:
    """A hand-made station: valid, foreign, oversized and binary frames, then valid again."""
    name, uuid = "Odd", "a3b4f9db-5a66-4019-aebb-6c47f99e1f95"
    now = int(time.time() * 1000)

    def reading(ts: int, **claims: str) -> str:
        data = dict.fromkeys(CHANNEL_KEYS, 1.5)
        return json.dumps({"type": "reading", "timestamp": ts, "data": data, **claims})

    frames: list[str | bytes] = [
        reading(now - 3000, station=name, uuid=uuid),
        reading(now - 2000, station="SIM-0001"),  # claims another station
        reading(now - 1900, uuid="0b6c7c9e-3f0e-4b8e-9f5e-2d1f7a0c1a11"),  # another uuid
        json.dumps({"type": "reading", "timestamp": now - 1800, "pad": "x" * (MAX_FRAME + 10)}),
        reading(now - 1700).encode(),  # binary
        "\u0e01" * (MAX_FRAME // 3 + 10),  # 3-byte characters: > 64 KiB, fewer chars
        reading(now - 1000),
    ]

    async def handler(ws: ServerConnection) -> None:
        for frame in frames:
            await ws.send(frame)
        await ws.wait_closed()

    async with serve(handler, "127.0.0.1", 0, compression=None, max_size=None) as server:
        port = server.sockets[0].getsockname()[1]
        yield Station(name, uuid, "127.0.0.1", "test", f"ws://127.0.0.1:{port}/"), frames


async def test_foreign_oversized_and_binary_frames_are_rejected_and_the_connection_stays(
    sqlite_database: Database, tmp_path: Path, odd_station: tuple[Station, list[str | bytes]]
) -> None:
    station, frames = odd_station
    async with Simulator(1, 20, seed=1, hello=False) as sim:
        stations = [station, *sim.stations]
        capture = capture_for(stations, tmp_path)
        task = asyncio.create_task(capture.run())
        await asyncio.sleep(1.5)
        capture.stop()
        report = await task
    odd, other = report.stations
    assert (odd.connects, odd.gaps, odd.frames, odd.readings) == (1, 0, len(frames), 2)
    assert dict(odd.rejects) == {"station mismatch": 2, "oversized frame": 2, "binary frame": 1}
    assert other.readings >= 20 and not other.rejects and other.gaps == 0
    letters = dead_letters(report).filter(pl.col("station") == "Odd")
    assert letters.height == 5
    assert letters["reason"].str.starts_with("station mismatch: claims ").sum() == 2
    big = letters.filter(pl.col("reason").str.starts_with("oversized frame"))
    assert (big["raw"].str.len_bytes() > MAX_FRAME).all()  # kept whole for the operator


@pytest.mark.slow
async def test_two_overlapping_captures_lose_nothing_and_store_each_reading_once(
    database: Database, tmp_path: Path
) -> None:
    record = tmp_path / "record.ndjson"
    sim = Simulator(3, 40, seed=4, hello=False, record_path=record)
    await sim.start()
    register(database, sim.stations)
    first = capture_for(sim.stations, database.data_dir)
    second = capture_for(sim.stations, database.data_dir)
    a = asyncio.create_task(first.run(duration=2.0))
    await asyncio.sleep(1.2)
    b = asyncio.create_task(second.run())
    first_report = await a  # ends while the second is running: the overlap is ~0.8 s
    await asyncio.sleep(1.0)
    await sim.stop()
    await asyncio.sleep(0.3)
    second.stop()
    second_report = await b
    assert first_report.ended_by == "duration"
    names = first_report.chunks + second_report.chunks
    assert len(set(names)) == len(names)  # unique names: nobody overwrote anybody

    loads = load_all(database.data_dir / "landing")
    truth = expected_readings(record)
    assert_same_readings(stored(), truth)
    overlap = first_report.readings + second_report.readings - truth.height
    assert overlap > 0  # both held the overlap's readings ...
    assert sum(r.duplicates for r in loads) == overlap  # ... and the load stored them once
    assert sum(r.conflicts for r in loads) == 0


def test_a_stations_state_says_what_happened_over_the_window() -> None:
    """The capture table's state is the window's story, not a snapshot after it closed
    (every station is disconnected by the stop itself)."""
    from powerwatch.capture.connections import StationState

    def station(*events: str) -> str:
        state = StationState("S", "ws://127.0.0.1:1/")
        for event in events:
            if event == "fail":
                state.failed_attempts += 1
                state.mark_lost("cannot connect: refused", stopping=False)
            elif event == "up":
                state.mark_connected()
            else:
                state.mark_lost("closed", stopping=event == "stop")
        return state.window_state()

    assert station("up", "stop") == "up the whole time"
    assert station("fail", "fail", "stop") == "never connected"
    assert station("fail", "up", "stop").startswith("up from ")
    assert station("up", "lost", "up", "lost", "up", "stop").startswith("2 reconnects, down ")
    assert station("up", "lost", "stop").startswith("down since ")
    assert station("up", "lost", "up", "lost", "stop").endswith("Z (1 reconnect)")
