"""The station simulator: real servers on 127.0.0.1, read by a real websockets client.

Frame content is a pure function of (seed, station, seq), so content rules are checked
exactly on thousands of generated seqs (`Simulator.ticks`); transport behaviour
(rate, broadcast, drops, restarts, the ground-truth record) over real connections.
Every frame's expected classification is re-derived here by an independent reading
of spec/station-protocol.md (`classify`), never taken from the simulator's word.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from powerwatch.core.errors import InputError
from powerwatch.devtools.simulator import (
    FRAME_FAULTS,
    MAX_FRAME,
    FaultPlan,
    Frame,
    Simulator,
    expected_readings,
    read_record,
    run_simulator,
)
from schemas.reading import ACTIVE_CHANNELS, CHANNEL_KEYS, CHANNELS, MUX_CHANNELS
from schemas.registry import load_registry

pytestmark = pytest.mark.timeout(20)
ROOT = Path(__file__).resolve().parents[1]

EPOCH_MS = 1_795_000_000_000  # 2026-11-18, fixed so generated content is reproducible
ALL_FAULTS = FaultPlan(
    frame_rate=0.4,
    weights=dict.fromkeys(FRAME_FAULTS, 1.0),
    drop_every=20.0,
    restart_every=0,
)
NO_DROPS = FaultPlan(frame_rate=0.4, weights=ALL_FAULTS.weights, drop_every=0, restart_every=0)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# --- an independent reading of the protocol ---------------------------------------------


def parse_timestamp(value: Any) -> int | None:
    """Epoch ms, or None when it does not parse."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    if moment.tzinfo is None:
        return None
    return round(moment.timestamp() * 1000)


def classify(frame: Frame, name: str, uuid: str, now_ms: int) -> tuple[str, str | None]:
    """(expect, reason) for a frame, from the spec alone."""
    if frame.binary:
        return "rejected", "binary frame"
    if len(frame.payload) > MAX_FRAME:
        return "rejected", "oversized frame"
    try:
        message = json.loads(frame.payload)  # accepts NaN/Infinity: judged as values below
    except ValueError:
        return "rejected", "malformed frame"
    if not isinstance(message, dict):
        return "rejected", "malformed frame"
    kind = message.get("type")
    if kind in ("heartbeat", "hello"):
        return kind, None
    if kind != "reading":
        return "rejected", "unknown type"
    if message.get("station", name) != name or message.get("uuid", uuid) != uuid:
        return "rejected", "station mismatch"
    if "timestamp" in message:
        ts = parse_timestamp(message["timestamp"])
        if ts is None:
            return "rejected", "bad timestamp"
        if ts < 946_684_800_000:
            return "rejected", "timestamp before 2000-01-01"
        if ts > now_ms + 5 * 60_000:
            return "rejected", "timestamp in the future"
    data = message["data"]
    for channel in CHANNELS:
        value = data.get(channel.key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            return "rejected", "invalid value"
        if not math.isfinite(value):
            return "rejected", "invalid value"
        too_big = value > channel.maximum if channel.maximum_inclusive else value >= channel.maximum
        if value < channel.minimum or too_big:
            return "rejected", "out of range"
    return "reading", None


def stored_values(frame: Frame) -> tuple[int | None, tuple[float | None, ...]]:
    """What a database would store for a valid reading frame."""
    message = json.loads(frame.payload)
    ts = parse_timestamp(message["timestamp"]) if "timestamp" in message else None
    data = message["data"]
    return ts, tuple(None if data.get(k) is None else float(data[k]) for k in CHANNEL_KEYS)


# --- helpers ---------------------------------------------------------------------------


def timestamp_of(message: str | bytes) -> int:
    ts = parse_timestamp(json.loads(message)["timestamp"])
    assert ts is not None
    return ts


def gaps(stamps: list[int]) -> list[int]:
    return [b - a for a, b in itertools.pairwise(stamps)]


async def collect(
    url: str, seconds: float, sink: list[Any] | None = None, **kwargs: Any
) -> list[str | bytes]:
    """Every message of one connection for `seconds` (or until the server closes it)."""
    received: list[str | bytes] = [] if sink is None else sink
    async with connect(url, compression=None, max_size=None, **kwargs) as ws:
        try:
            async with asyncio.timeout(seconds):
                async for message in ws:
                    received.append(message)
        except TimeoutError:
            pass
    return received


async def drain_until_closed(ws: ClientConnection, sink: list[str | bytes]) -> int | None:
    """Read until the server closes; the close code (1006 when no close frame came)."""
    try:
        async for message in ws:
            sink.append(message)
    except ConnectionClosed as exc:
        return exc.rcvd.code if exc.rcvd else 1006
    return ws.close_code


def free_port_pair() -> int:
    for _ in range(50):
        with socket.socket() as a:
            a.bind(("127.0.0.1", 0))
            port = int(a.getsockname()[1])
            if port >= 65535:
                continue
            with socket.socket() as b:
                try:
                    b.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
            return port
    raise RuntimeError("no two consecutive free ports")


@pytest.fixture
def record(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "record.ndjson"


# --- content (pure, exact) -------------------------------------------------------------


def test_without_faults_every_frame_is_a_valid_reading() -> None:
    sim = Simulator(3, 10, seed=7, epoch_ms=EPOCH_MS)
    forms: Counter[str] = Counter()
    nulls = 0
    for station in sim.stations:
        ticks = sim.ticks(station.name, range(3000))
        assert all(t.drop is None and len(t.frames) == 1 for t in ticks)
        previous_ts = -1
        meters: list[float] = [0.0] * len(MUX_CHANNELS)
        for seq, tick in enumerate(ticks):
            frame = tick.frames[0]
            message = json.loads(frame.payload)
            assert set(message) == {"type", "station", "uuid", "timestamp", "data"}
            assert (message["type"], message["station"], message["uuid"]) == (
                "reading",
                station.name,
                station.uuid,
            )
            assert list(message["data"]) == list(CHANNEL_KEYS)
            received_ms = EPOCH_MS + seq * 100 + 100
            assert classify(frame, station.name, station.uuid, received_ms) == ("reading", None)
            forms["int" if isinstance(message["timestamp"], int) else "iso"] += 1
            if isinstance(message["timestamp"], str):
                assert len(message["timestamp"]) == 24 and message["timestamp"].endswith("Z")
            ts, values = stored_values(frame)
            assert ts is not None and ts > previous_ts
            assert abs(ts - (EPOCH_MS + seq * 100)) <= 100  # 10 Hz from the epoch, plus phase
            assert (frame.expect, frame.reason, frame.timestamp_ms, frame.values) == (
                "reading",
                None,
                ts,
                values,
            )
            previous_ts = ts
            nulls += values.count(None)
            for i, value in enumerate(values[len(ACTIVE_CHANNELS) :]):
                if value is not None:
                    assert value >= meters[i], "a kWh meter went backwards"
                    meters[i] = value
    assert forms["int"] > 300 and forms["iso"] > 3 * forms["int"]
    assert 0 < nulls < 0.05 * 9000


def test_values_look_like_transmitters_and_meters() -> None:
    sim = Simulator(1, 1, seed=3, epoch_ms=EPOCH_MS)
    frames = [t.frames[0] for t in sim.ticks("SIM-0001", range(86_400 // 60))]  # 24 min
    columns = list(zip(*(f.values or () for f in frames), strict=True))
    main = [c for c in columns[:6] if sum(v or 0 for v in c) / len(c) > 500]
    aux = [c for c in columns[:6] if c not in main]
    assert 2 <= len(main) <= 4 and len(main) + len(aux) == 6
    for column in aux:  # usually 0, sometimes a few watts
        present = [v for v in column if v is not None]
        assert present.count(0) > 0.7 * len(present)
        assert all(0 <= v <= 50 for v in present) and any(v > 0 for v in present)
    for column in columns[6:]:
        present = [v for v in column if v is not None]
        assert present == sorted(present) and present[-1] > present[0]


def test_daily_curve_varies_power_over_the_day() -> None:
    sim = Simulator(1, 1 / 600, seed=3, epoch_ms=EPOCH_MS)  # one frame per 10 min, two days
    frames = [t.frames[0] for t in sim.ticks("SIM-0001", range(288))]
    first = [f.values[0] for f in frames if f.values and f.values[0] is not None]
    assert max(first) > 1.08 * min(first)


def test_same_seed_same_stream_other_seed_other_stations() -> None:
    def stream(seed: int) -> list[bytes | str | None]:
        sim = Simulator(2, 20, seed=seed, faults=True, fault_plan=ALL_FAULTS, epoch_ms=EPOCH_MS)
        out: list[bytes | str | None] = [s.uuid for s in sim.stations]
        for tick in sim.ticks("SIM-0002", range(500)):
            out.append(tick.drop)
            out.extend(f.payload for f in tick.frames)
        return out

    assert stream(11) == stream(11)
    assert stream(11)[:2] != stream(12)[:2]


def test_a_seq_carries_the_same_frames_whatever_was_asked_before() -> None:
    def payloads(sim: Simulator, seqs: range) -> list[bytes]:
        return [f.payload for t in sim.ticks("SIM-0001", seqs) for f in t.frames]

    sequential = Simulator(1, 10, seed=4, faults=True, fault_plan=ALL_FAULTS, epoch_ms=EPOCH_MS)
    jumping = Simulator(1, 10, seed=4, faults=True, fault_plan=ALL_FAULTS, epoch_ms=EPOCH_MS)
    reference = payloads(sequential, range(200))
    for seqs in (range(150, 170), range(37, 41), range(90, 200), range(0, 10)):  # lagging, gaps
        assert payloads(jumping, seqs) == payloads(sequential, seqs)
        assert payloads(jumping, seqs) == payloads(
            Simulator(1, 10, seed=4, faults=True, fault_plan=ALL_FAULTS, epoch_ms=EPOCH_MS),
            seqs,
        )
    assert payloads(jumping, range(200)) == reference


def test_every_fault_class_is_generated_and_classified_as_the_spec_says() -> None:
    sim = Simulator(2, 10, seed=5, faults=True, fault_plan=ALL_FAULTS, epoch_ms=EPOCH_MS)
    station = sim.stations[0]
    seen: Counter[str] = Counter()
    drops = 0
    for seq, tick in enumerate(sim.ticks(station.name, range(4000))):
        received_ms = EPOCH_MS + seq * 100 + 100  # when it reaches the capture side
        if tick.drop is not None:
            assert tick.drop in ("close", "cut") and not tick.frames
            drops += 1
            continue
        previous: Frame | None = None
        for frame in tick.frames:
            seen[frame.fault or "none"] += 1
            expect, reason = frame.expect, frame.reason
            if expect == "duplicate":
                assert previous is not None and previous.payload == frame.payload
                expect = "reading"
            assert classify(frame, station.name, station.uuid, received_ms) == (expect, reason), (
                frame.fault,
                frame.payload[:300],
            )
            if expect == "reading":
                ts, values = stored_values(frame)
                if frame.fault == "missing_timestamp":
                    assert ts is None and frame.timestamp_ms is None
                else:
                    assert ts == frame.timestamp_ms
                assert values == frame.values
            if frame.fault == "oversized":
                assert len(frame.payload) > MAX_FRAME
            else:
                assert len(frame.payload) < 2048
            previous = frame
    assert set(seen) == {*FRAME_FAULTS, "none"}
    assert all(n >= 20 for n in seen.values()), seen
    assert 5 < drops < 50  # one per 20 s at 10 Hz: ~20 in 4000 seqs
    assert seen["none"] > 0.5 * sum(seen.values())


def test_default_fault_rates_are_low() -> None:
    sim = Simulator(1, 10, seed=1, faults=True, epoch_ms=EPOCH_MS)
    ticks = sim.ticks("SIM-0001", range(20_000))
    frames = [f for t in ticks for f in t.frames]
    faulty = sum(f.fault is not None for f in frames)
    assert 0.01 * len(ticks) < faulty < 0.04 * len(ticks)
    assert sum(f.fault == "missing_timestamp" for f in frames) == 0  # opt-in only
    assert sum(t.drop is not None for t in ticks) <= 10


# --- over real connections --------------------------------------------------------------


@pytest.mark.anyio
async def test_stream_over_the_wire_is_protocol_and_near_real_time() -> None:
    async with Simulator(2, 25, seed=1, hello=True) as sim:
        results = await asyncio.gather(*(collect(s.url, 1.2) for s in sim.stations))
    now_ms = int(time.time() * 1000)
    for station, messages in zip(sim.stations, results, strict=True):
        assert json.loads(messages[0]) == {
            "type": "hello",
            "station": {"name": station.name, "uuid": station.uuid, "scene": station.scene},
        }
        readings = messages[1:]
        assert 25 <= len(readings) <= 32
        stamps = []
        for text in readings:
            assert isinstance(text, str)
            message = json.loads(text)
            assert message["station"] == station.name and message["uuid"] == station.uuid
            frame = Frame(station.name, 0, text.encode(), "reading")
            assert classify(frame, station.name, station.uuid, now_ms) == ("reading", None)
            stamps.append(timestamp_of(text))
        assert all(now_ms - 3000 < ts <= now_ms for ts in stamps)
        assert set(gaps(stamps)) <= {39, 40, 41}


@pytest.mark.anyio
@pytest.mark.parametrize(("rate", "seconds"), [(50.0, 2.0), (2.5, 2.4)])
async def test_rate_is_respected(rate: float, seconds: float) -> None:
    async with Simulator(1, rate, seed=2, hello=False) as sim:
        start = time.monotonic()
        messages = await collect(sim.url("SIM-0001"), seconds)
        elapsed = time.monotonic() - start
    expected = elapsed * rate
    assert expected - 2 <= len(messages) <= expected + 1
    period = 1000 / rate
    assert all(abs(gap - period) <= 1 for gap in gaps([timestamp_of(m) for m in messages]))


@pytest.mark.anyio
async def test_registry_file_matches_the_servers(tmp_path: Path) -> None:
    registry = tmp_path / "stations.yaml"
    base = free_port_pair()
    async with Simulator(2, 5, port=base, seed=9, registry_path=registry, hello=True) as sim:
        assert sim.ports == {"SIM-0001": base, "SIM-0002": base + 1}
        entries = load_registry(registry)
        assert entries == sim.stations
        assert [e.url for e in entries] == [
            f"ws://127.0.0.1:{base}/",
            f"ws://127.0.0.1:{base + 1}/",
        ]
        assert len({e.uuid for e in entries}) == 2
        for entry in entries:
            async with connect(entry.url, compression=None) as ws:
                hello = json.loads(await asyncio.wait_for(ws.recv(), 2))
            assert hello["station"] == {
                "name": entry.name,
                "uuid": entry.uuid,
                "scene": entry.scene,
            }


@pytest.mark.anyio
async def test_free_ports_and_a_taken_port_is_refused(tmp_path: Path) -> None:
    async with Simulator(3, 5, seed=9, registry_path=tmp_path / "r.yaml") as sim:
        ports = list(sim.ports.values())
        assert len(set(ports)) == 3 and all(p > 0 for p in ports)
        with pytest.raises(InputError, match=r"cannot listen on 127\.0\.0\.1"):
            await Simulator(1, 5, port=ports[0]).start()


@pytest.mark.anyio
async def test_two_clients_receive_the_same_stream() -> None:
    async with Simulator(1, 40, seed=4, hello=False, faults=True, fault_plan=NO_DROPS) as sim:
        url = sim.url("SIM-0001")
        first: list[str | bytes] = []
        second: list[str | bytes] = []
        a = asyncio.create_task(collect(url, 10, first))
        await asyncio.sleep(0.3)
        b = asyncio.create_task(collect(url, 10, second))
        await asyncio.sleep(1.5)
        a.cancel()
        b.cancel()
        await asyncio.gather(a, b, return_exceptions=True)
    assert len(second) > 40
    matches = [
        i
        for i, message in enumerate(first)
        if message == second[0] and first[i : i + len(second)] == second[: len(first) - i]
    ]
    assert matches and len(first) - matches[0] > 40


@pytest.mark.anyio
async def test_restart_drops_connections_and_comes_back_on_the_same_port(record: Path) -> None:
    async with Simulator(1, 20, seed=6, hello=False, record_path=record) as sim:
        url, port = sim.url("SIM-0001"), sim.ports["SIM-0001"]
        before: list[str | bytes] = []
        async with connect(url, compression=None) as ws:
            await asyncio.sleep(0.3)
            restart = asyncio.create_task(sim.restart_station("SIM-0001", 1.0))
            code = await asyncio.wait_for(drain_until_closed(ws, before), 3)
        assert code == 1012
        assert before
        with pytest.raises(OSError):
            async with connect(url, compression=None, open_timeout=1):
                pass
        down_at = time.monotonic()
        await restart
        assert time.monotonic() - down_at > 0.5
        assert sim.ports["SIM-0001"] == port
        after = await collect(url, 0.5)
        assert len(after) >= 7
    assert (
        timestamp_of(after[0]) - timestamp_of(before[-1]) >= 1000
    )  # the station was down for a second
    events = read_record(record).filter(pl.col("event").is_not_null())["event"].to_list()
    assert events[:3] == ["listen", "connect", "restart"]
    assert events.index("listen", 1) > events.index("disconnect")


@pytest.mark.anyio
async def test_record_is_exactly_what_each_connection_received(record: Path) -> None:
    """Faults on, drops every ~second: the record lists every delivered frame, in order."""
    plan = FaultPlan(frame_rate=0.5, weights=ALL_FAULTS.weights, drop_every=1.0, restart_every=0)
    sim = Simulator(2, 50, seed=8, faults=True, fault_plan=plan, record_path=record)
    received: dict[str, list[str | bytes]] = {}
    codes: Counter[int | None] = Counter()

    async def client(name: str) -> None:
        while not sim.stopping:
            try:
                async with connect(sim.url(name), compression=None, max_size=None) as ws:
                    peer = f"127.0.0.1:{ws.local_address[1]}"
                    codes[await drain_until_closed(ws, received.setdefault(peer, []))] += 1
            except (OSError, InvalidHandshake):  # down, or closing under our handshake
                await asyncio.sleep(0.05)

    await sim.start()
    clients = [asyncio.create_task(client(s.name)) for s in sim.stations]
    await asyncio.sleep(4.0)
    await sim.stop()
    await asyncio.gather(*clients)

    table = read_record(record)
    frames = table.filter(pl.col("event").is_null())
    now_ms = int(time.time() * 1000)
    uuids = {s.name: s.uuid for s in sim.stations}
    assert set(received) == set(frames["peer"].unique())
    for peer, messages in received.items():
        mine = frames.filter(pl.col("peer") == peer)
        expected = [
            r.encode() if b else r for r, b in zip(mine["raw"], mine["binary"], strict=True)
        ]
        assert messages == expected, peer
    faults_seen = set()
    for row in frames.iter_rows(named=True):
        payload = row["raw"].encode()
        frame = Frame(row["station"], 0, payload, row["expect"], binary=row["binary"])
        expect = "reading" if row["expect"] == "duplicate" else row["expect"]
        station = row["station"]
        assert classify(frame, station, uuids[station], now_ms) == (expect, row["reason"])
        faults_seen.add(row["fault"])
    assert faults_seen == {*FRAME_FAULTS, None}
    drops = table.filter(pl.col("event") == "drop")["detail"].value_counts()
    assert set(drops["detail"]) == {"close", "cut"}
    assert codes[1011] > 0 and codes[1006] > 0 and codes[1001] >= 1
    truth = expected_readings(record)
    valid = frames.filter(
        pl.col("expect") == "reading", pl.col("fault").fill_null("") != "missing_timestamp"
    )
    assert truth.height == valid.height  # one timestamp each: nothing to deduplicate
    assert truth.columns == ["station", "timestamp", *CHANNEL_KEYS]


@pytest.mark.anyio
async def test_run_simulator_stops_after_duration(tmp_path: Path, record: Path) -> None:
    registry = tmp_path / "stations.yaml"
    started = time.monotonic()
    await run_simulator(3, 10, 0, True, registry, duration=0.6, seed=1, record_path=record)
    assert 0.6 <= time.monotonic() - started < 3
    assert [s.name for s in load_registry(registry)] == ["SIM-0001", "SIM-0002", "SIM-0003"]
    listens = read_record(record).filter(pl.col("event") == "listen")
    assert listens.height == 3


def test_simulate_stops_cleanly_on_sigterm(tmp_path: Path, record: Path) -> None:
    registry = tmp_path / "stations.yaml"
    code = (
        "from pathlib import Path; from powerwatch.devtools.simulator import simulate; "
        f"simulate(2, 20, 0, False, Path({str(registry)!r}), record_path=Path({str(record)!r}))"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", code],
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        deadline = time.monotonic() + 8
        while not registry.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        stations = load_registry(registry)
        received = asyncio.run(collect(stations[0].url, 0.5))
        assert len(received) >= 8
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=5) == 0
    finally:
        process.kill()
    assert process.stderr is not None and b"Traceback" not in process.stderr.read()
    table = read_record(record)
    assert table.filter(pl.col("event").is_null()).height >= len(received)
    assert table.filter(pl.col("event") == "disconnect")["detail"].to_list() == ["closed:1000"]


@pytest.mark.anyio
async def test_seeded_restarts_happen_on_their_own(record: Path) -> None:
    plan = FaultPlan(frame_rate=0, drop_every=0, restart_every=0.4, restart_down=(0.2, 0.2))
    async with Simulator(1, 20, seed=2, fault_plan=plan, record_path=record) as sim:
        port = sim.ports["SIM-0001"]
        codes: list[int | None] = []
        deadline = time.monotonic() + 2.5
        while time.monotonic() < deadline:
            try:
                async with connect(sim.url("SIM-0001"), compression=None) as ws:
                    codes.append(await drain_until_closed(ws, []))
            except (OSError, InvalidHandshake):
                await asyncio.sleep(0.05)
        assert sim.ports["SIM-0001"] == port
    restarts = read_record(record).filter(pl.col("event") == "restart")
    assert restarts.height >= 2
    assert set(restarts["detail"]) == {"0.200"}
    assert codes.count(1012) >= 2


def test_unknown_fault_classes_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown fault classes: gremlins"):
        FaultPlan(weights={"gremlins": 1.0})
