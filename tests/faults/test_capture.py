"""Live capture under hostile frames, a full disk, crashed station tasks and kill -9.

Real `powerwatch capture` processes connect to real WebSocket servers (`websockets.serve`,
run in a thread of the test): each hand-made station sends its script on every
connection, so the test knows exactly what was delivered. Every case ends by accounting
for every frame sent: a reading in a landing chunk, or a dead letter with its reason
(frames sent = readings in chunks + dead letters), and by checking that no half file is
visible.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import random
import signal
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
import pytest
from websockets.asyncio.server import ServerConnection, serve

from powerwatch.capture.runner import Capture
from powerwatch.core.errors import InputError, RegistryError
from powerwatch.load import landing
from schemas.channels import LANDING_COLUMNS
from schemas.reading import CHANNEL_KEYS
from schemas.registry import Station, load_registry, write_registry
from tests.conftest import Database
from tests.faults.conftest import (
    armed,
    fill,
    free,
    kill_group,
    powerwatch_env,
    run_powerwatch,
    signal_group,
    spawn_powerwatch,
    visible_files,
)

# A capture process starts in ~5 s on an idle machine; the margin is for a loaded one.
pytestmark = pytest.mark.timeout(300, func_only=True)


@pytest.fixture
def api(request: pytest.FixtureRequest) -> str:
    """PREFECT_API_URL for the capture processes: the session's server (`prefect_api`), or
    one already running named by POWERWATCH_TEST_PREFECT_API_URL (saves its start-up when
    running this module alone)."""
    running = os.environ.get("POWERWATCH_TEST_PREFECT_API_URL")
    return running if running else str(request.getfixturevalue("prefect_api"))


@dataclass(frozen=True)
class BadText:
    """A text frame whose payload is these bytes (not valid UTF-8)."""

    payload: bytes


Script = list[str | bytes | BadText]  # str: a text frame; bytes: a binary frame


@dataclass
class StationServer:
    """One hand-made station: sends `script` on every connection, then waits for the close."""

    name: str
    script: Script
    connections: int = 0
    sent: int = 0  # frames whose send completed, over all connections
    uuid: str = field(default_factory=lambda: str(uuid.uuid4()))
    port: int = 0

    async def handle(self, ws: ServerConnection) -> None:
        self.connections += 1
        for frame in self.script:
            if isinstance(frame, BadText):
                await ws.send(frame.payload, text=True)
            else:
                await ws.send(frame)
            self.sent += 1
        await ws.wait_closed()

    @property
    def station(self) -> Station:
        return Station(self.name, self.uuid, "127.0.0.1", "test", f"ws://127.0.0.1:{self.port}/")


class Stations:
    """The stations' servers, in an event loop of their own (a thread of the test)."""

    def __init__(self, servers: list[StationServer]) -> None:
        self.servers = {s.name: s for s in servers}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._closers: list[object] = []

    def __enter__(self) -> Stations:
        self._thread.start()
        for server in self.servers.values():
            asyncio.run_coroutine_threadsafe(self._serve(server), self._loop).result(10)
        return self

    async def _serve(self, station: StationServer) -> None:
        server = await serve(station.handle, "127.0.0.1", 0, compression=None, max_size=None)
        station.port = server.sockets[0].getsockname()[1]
        self._closers.append(server)

    def __exit__(self, *exc: object) -> None:
        async def close() -> None:
            for server in self._closers:
                server.close()  # type: ignore[attr-defined]

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def registry(self, path: Path) -> Path:
        write_registry(path, [s.station for s in self.servers.values()])
        return path


def reading(ts_ms: int, value: float = 1.5) -> str:
    return json.dumps(
        {"type": "reading", "timestamp": ts_ms, "data": dict.fromkeys(CHANNEL_KEYS, value)}
    )


def good_frames(count: int, start_ms: int) -> Script:
    return [reading(start_ms + 1000 * i, float(i)) for i in range(count)]


def capture_env(data_dir: Path, registry: Path, api: str, **extra: str) -> dict[str, str]:
    return powerwatch_env(
        {
            "POWERWATCH_DATA_DIR": str(data_dir),
            "POWERWATCH_STATIONS": str(registry),
            "PREFECT_API_URL": api,
            # These cases read the chunks the capture lands: no live load moving them on
            # (tests/faults/test_load.py races the live load against `powerwatch load`).
            "POWERWATCH_CAPTURE_LOAD": "false",
            **extra,
        }
    )


def chunk_readings(data_dir: Path) -> pl.DataFrame:
    """Every reading in the visible landing chunks, each chunk read whole by the loader's
    reader (raises if a chunk is not complete and conformed)."""
    chunks = visible_files(data_dir / "landing", "*.parquet")
    frames = [landing.read_chunk(path) for path in chunks]
    return pl.concat(frames) if frames else pl.DataFrame(schema=LANDING_COLUMNS)


def dead_letters(data_dir: Path) -> list[dict[str, str | None]]:
    letters: list[dict[str, str | None]] = []
    for path in visible_files(data_dir / "dead-letter", "*.jsonl"):
        letters += [json.loads(line) for line in path.read_text().splitlines()]
    return letters


def leftovers(data_dir: Path) -> list[Path]:
    """Temporary files a capture may have left (hidden `.capture-*.tmp`)."""
    return sorted(data_dir.rglob(".capture-*.tmp"))


def log_lines(log: Path, text: str) -> list[str]:
    return [line for line in log.read_text().splitlines() if text in line] if log.exists() else []


def wait_until(condition: object, proc: subprocess.Popen[str], what: str, timeout: float) -> None:
    """Poll `condition()` until true (with a deadline); fails if the process ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        if proc.poll() is not None:
            raise AssertionError(f"capture ended ({proc.returncode}) before {what}")
        time.sleep(0.1)
    raise AssertionError(f"not within {timeout} s: {what}")


def hostile_script(start_ms: int, rng: random.Random) -> tuple[Script, int]:
    """Good readings with every kind of frame a decoder could choke on in between; the
    number of good ones."""
    good = good_frames(12, start_ms)
    bad: Script = [
        "[" * 10_000 + "]" * 10_000,  # 10,000-level nested array (json: RecursionError)
        # 20,000 levels inside a reading: polars' decoder overflows its stack (segfault)
        '{"type":"reading","data":{"x":' + "[" * 20_000 + "]" * 20_000 + "}}",
        BadText(b'{"type":"reading","data":{"activePower1":1}}\xff\xfe'),  # invalid UTF-8
        BadText(rng.randbytes(200)),  # random bytes as a text frame
        rng.randbytes(300),  # random bytes as a binary frame
        "".join(chr(rng.randrange(32, 0x2FFF)) for _ in range(500)),  # garbage text
        '{"type": "reading", "data": ',  # cut off
    ]
    script: Script = []
    for i, frame in enumerate(good):
        script.append(frame)
        if i < len(bad):
            script.append(bad[i])
    return script, len(good)


def test_hostile_frames_are_dead_lettered_and_every_good_frame_of_every_station_is_kept(
    tmp_path: Path, api: str
) -> None:
    rng = random.Random(7)
    now = int(time.time() * 1000) - 60_000
    evil_script, evil_good = hostile_script(now, rng)
    servers = [
        StationServer("Evil", evil_script),
        StationServer("Calm-1", good_frames(15, now)),
        StationServer("Calm-2", good_frames(9, now + 1)),
    ]
    data = tmp_path / "data"
    with Stations(servers) as stations:
        registry = stations.registry(tmp_path / "stations.yaml")
        done = run_powerwatch(
            "capture", "--duration", "4", "--flush-seconds", "0.5",
            env=capture_env(data, registry, api),
        )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    evil = servers[0]
    assert evil.connections == 1  # invalid UTF-8 did not cost the connection (no 1007)
    readings = chunk_readings(data)
    letters = dead_letters(data)
    per_station = dict(readings.group_by("station").len().iter_rows())
    assert per_station == {"Evil": evil_good, "Calm-1": 15, "Calm-2": 9}
    assert readings.unique(["station", "timestamp"]).height == readings.height
    assert {letter["station"] for letter in letters} == {"Evil"}
    for server in servers:  # every frame sent is accounted for, exactly
        kept = per_station[server.name] + sum(1 for x in letters if x["station"] == server.name)
        assert kept == server.sent == len(server.script)
    reasons = [str(letter["reason"]) for letter in letters]
    assert sum("nested too deeply" in r for r in reasons) == 2, reasons
    assert sum(r.startswith("invalid UTF-8: ") for r in reasons) == 2, reasons
    assert sum(r.startswith("binary frame: ") for r in reasons) == 1, reasons
    assert sum(r.startswith("malformed frame: ") for r in reasons) == 4, reasons
    bad_texts = [f.payload for f in evil_script if isinstance(f, BadText)]
    kept_bytes = [
        base64.b64decode(str(x["raw_base64"])) for x in letters if x["raw_base64"] is not None
    ]
    assert sorted(kept_bytes) == sorted(
        [*bad_texts, *[f for f in evil_script if isinstance(f, bytes)]]
    )
    assert not leftovers(data)


def bad_frames(rng: random.Random) -> Script:
    return ["not json at all", BadText(b"\xc3\x28 broken"), rng.randbytes(64)]


def expected_stored(servers: list[StationServer], start: dict[str, int], good: int) -> pl.DataFrame:
    """`stored_keys`' shape for the good frames each server sends."""
    rows = [
        (server.name, start[server.name] + 1000 * i, float(i), float(i))
        for server in servers
        for i in range(good)
    ]
    return pl.DataFrame(
        rows,
        schema={"station": pl.String, "ts": pl.Int64, "p1": pl.Float64, "m1": pl.Float64},
        orient="row",
    ).sort("station", "ts")


def test_disk_full_keeps_every_frame_and_writes_them_once_space_returns(
    tmp_path: Path, small_disk: Path, api: str
) -> None:
    rng = random.Random(3)
    now = int(time.time() * 1000) - 120_000
    servers = [
        StationServer("Full-1", [*good_frames(400, now), *bad_frames(rng)]),
        StationServer("Full-2", [*good_frames(300, now + 1), *bad_frames(rng)]),
    ]
    data = small_disk / "data"  # landing/ and dead-letter/ on the small disk
    data.mkdir()
    fill(small_disk, 0)
    log = tmp_path / "capture.log"
    total = sum(len(s.script) for s in servers)

    def accounted() -> int:
        return chunk_readings(data).height + len(dead_letters(data))

    with Stations(servers) as stations:
        registry = stations.registry(tmp_path / "stations.yaml")
        env = capture_env(data, registry, api)
        proc = spawn_powerwatch("capture", "--flush-seconds", "0.3", env=env, log=log)
        try:
            wait_until(
                lambda: (
                    all(s.sent == len(s.script) for s in servers)
                    and len(log_lines(log, "flush failed")) >= 3
                ),
                proc,
                "every frame delivered and three failed flushes",
                60,
            )
            assert accounted() == 0  # nothing could be written ...
            assert not leftovers(data)  # ... and no failed write left its temporary file
            free(small_disk)
            wait_until(lambda: accounted() == total, proc, "every frame written", 30)
            seconds = signal_group(proc, signal.SIGTERM, 60)
        finally:
            kill_group(proc)
    readings = chunk_readings(data)
    assert readings.height == 700 and readings.unique(["station", "timestamp"]).height == 700
    assert len(dead_letters(data)) == 6  # zero lost: 706 delivered = 700 readings + 6 letters
    assert not leftovers(data)
    failures = log_lines(log, "flush failed")
    assert len(failures) >= 3
    assert all("kept in memory, retried at the next flush" in line for line in failures)
    assert all("No space left on device" in line for line in failures), failures
    assert "Traceback" not in log.read_text()  # one line per failed flush, no traceback
    assert log_lines(log, "writing works again")
    print(f"failed flushes: {len(failures)}; exit after SIGTERM: {seconds:.1f} s")


def test_below_the_disk_guard_frames_stay_in_memory_until_space_returns(
    tmp_path: Path, small_disk: Path, api: str
) -> None:
    """The guard at its defaults (5 % of 8 MiB: 419 kB) with 100 kB free: room enough to
    write, yet no flush writes; once space is back every frame is written, once."""
    now = int(time.time() * 1000) - 120_000
    servers = [StationServer("Low-1", good_frames(300, now))]
    data = small_disk / "data"
    data.mkdir()
    fill(small_disk, leave_bytes=100_000)
    log = tmp_path / "capture.log"

    with Stations(servers) as stations:
        registry = stations.registry(tmp_path / "stations.yaml")
        env = capture_env(data, registry, api)
        env.pop("POWERWATCH_DISK_MIN_FREE_BYTES", None)  # small_disk turns the guard off
        proc = spawn_powerwatch("capture", "--flush-seconds", "0.3", env=env, log=log)
        try:
            wait_until(
                lambda: servers[0].sent == 300 and len(log_lines(log, "flush failed")) >= 3,
                proc,
                "every frame delivered and three refused flushes",
                60,
            )
            assert chunk_readings(data).height == 0  # space was there; the guard kept it
            free(small_disk)
            wait_until(lambda: chunk_readings(data).height == 300, proc, "frames written", 30)
            signal_group(proc, signal.SIGTERM, 60)
        finally:
            kill_group(proc)
    readings = chunk_readings(data)
    assert readings.height == 300 and readings.unique(["station", "timestamp"]).height == 300
    refused = log_lines(log, "flush failed")
    assert all("disk guard" in line and "kept in memory" in line for line in refused), refused
    assert log_lines(log, "writing works again")


@pytest.mark.parametrize(
    "point", ["capture.batch_taken", "capture.chunk_written", "capture.dead_letters_written"]
)
def test_kill_9_at_each_fault_point_leaves_whole_chunks_and_a_new_capture_carries_on(
    point: str, sqlite_database: Database, tmp_path: Path, api: str
) -> None:
    from tests.faults.conftest import stored_keys
    from tests.test_capture import load_all, register

    rng = random.Random(5)
    now = int(time.time() * 1000) - 120_000
    servers = [
        StationServer("Kill-1", [*good_frames(30, now), *bad_frames(rng)]),
        StationServer("Kill-2", [*good_frames(30, now + 1), *bad_frames(rng)]),
    ]
    data = sqlite_database.data_dir
    with Stations(servers) as stations:
        registry = stations.registry(tmp_path / "stations.yaml")
        register(sqlite_database, [s.station for s in servers])
        env = capture_env(data, registry, api)
        killed = run_powerwatch(
            "capture", "--flush-seconds", "0.3", env=env | armed(point, "kill"), timeout=90
        )
        assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
        first_chunks = visible_files(data / "landing", "*.parquet")
        before = chunk_readings(data)  # every visible chunk reads back whole
        assert before.unique(["station", "timestamp"]).height == before.height
        first_letters = dead_letters(data)  # every dead-letter line is whole JSON
        assert not leftovers(data)
        if point != "capture.batch_taken":  # the flush got as far as its chunk
            assert first_chunks
        if point == "capture.dead_letters_written":
            assert first_letters

        again = run_powerwatch("capture", "--duration", "3", "--flush-seconds", "0.3", env=env)
        assert again.returncode == 0, again.stderr[-2000:]
    new_chunks = set(visible_files(data / "landing", "*.parquet")) - set(first_chunks)
    assert new_chunks
    # the new capture received each script whole: all of it is accounted for once more
    new_readings = pl.concat([landing.read_chunk(path) for path in sorted(new_chunks)])
    new_letters = len(dead_letters(data)) - len(first_letters)
    assert new_readings.height == 60 and new_letters == 6
    loads = load_all(data / "landing")
    assert all(r.status == "loaded" for r in loads)
    got = stored_keys(sqlite_database.url)
    start = {"Kill-1": now, "Kill-2": now + 1}
    assert got.equals(expected_stored(servers, start, 30))  # none missing, none doubled


def test_a_crashed_station_task_is_logged_counted_and_restarted(tmp_path: Path, api: str) -> None:
    now = int(time.time() * 1000) - 60_000
    servers = [
        StationServer("Crash-1", good_frames(20, now)),
        StationServer("Crash-2", good_frames(20, now + 1)),
    ]
    data = tmp_path / "data"
    with Stations(servers) as stations:
        registry = stations.registry(tmp_path / "stations.yaml")
        # the first station task to (re)connect raises an error nobody expects there
        env = capture_env(data, registry, api) | armed("capture.station_connecting", "ioerror")
        done = run_powerwatch("capture", "--duration", "4", "--flush-seconds", "0.3", env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    output = done.stdout + done.stderr
    crashed = [line for line in output.splitlines() if "receive task crashed" in line]
    assert len(crashed) == 1, output[-3000:]
    assert "OSError" in crashed[0] and "restarting it" in crashed[0]
    assert "Traceback" not in output
    assert "1 station task crashes" in output  # the run's own account counts it
    table = [line for line in done.stdout.splitlines() if "Crash-" in line]
    assert len(table) == 2
    # restarted: both stations delivered everything
    readings = chunk_readings(data)
    assert dict(readings.group_by("station").len().iter_rows()) == {"Crash-1": 20, "Crash-2": 20}
    assert sum(s.connections for s in servers) == 2


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ws://", "has no host"),
        ("ws://station one:8765/", "contains spaces"),
        ("ws://10.0.0.1:8765/ live", "contains spaces"),
        ("ws://:8765/", "has no host"),
        ("ws://10.0.0.1:99999/", "bad URL"),
    ],
)
def test_registry_refuses_a_url_without_host_or_with_spaces(
    tmp_path: Path, url: str, message: str
) -> None:
    path = tmp_path / "stations.yaml"
    entry = {"name": "TX-7", "uuid": str(uuid.uuid4()), "ip_address": "10.0.0.1", "url": url}
    path.write_text(json.dumps({"stations": [entry]}))  # JSON is YAML
    with pytest.raises(RegistryError) as caught:
        load_registry(path)
    text = str(caught.value)
    assert "TX-7" in text and message in text and "\n" not in text


@pytest.mark.parametrize(
    ("rows", "seconds"), [(0, 1.0), (-5, 1.0), (10, 0.0), (10, -1.0), (10, float("nan"))]
)
def test_capture_refuses_bad_flush_parameters(tmp_path: Path, rows: int, seconds: float) -> None:
    station = Station("TX-1", str(uuid.uuid4()), "127.0.0.1", "", "ws://127.0.0.1:9/")
    with pytest.raises(InputError) as caught:
        Capture([station], tmp_path, tmp_path, flush_seconds=seconds, flush_rows=rows)
    assert "must be" in str(caught.value) and "\n" not in str(caught.value)
