"""Simulated stations: real WebSocket servers speaking spec/station-protocol.md.

    Simulator ── one websockets server per station on 127.0.0.1 (port P+i, or free ports)
       │         └── one task per connection: sends the frames due by absolute time
       ├── frame stream: a pure function of (seed, station, seq), generated once per
       │   station and shared by every connection of it (a broadcast)
       ├── faults: every way the protocol allows a station to go wrong, at low rates
       └── record: optional NDJSON ground truth, one line per frame a send succeeded for

Seq k of a station is due at `start + phase + k / rate` (monotonic clock) and carries the
timestamp `start_wall + phase + k / rate`, rounded to the millisecond: timestamps are
unique per station for rates up to 1 kHz, and a late wake-up sends every frame that is
due (late, but with its scheduled timestamp) instead of drifting.

Everything but the wall-clock base (`epoch_ms` fixes it too) is deterministic given the
seed: uuids, values, which seqs carry which fault, drop points and restart times. Meters
are a function of the timestamp, so they keep growing across restarts and runs.

The ground-truth record (NDJSON, one file per run, written in batches every 0.5 s and on
stop) has one line per frame whose send to a connection succeeded and one per connection
event; its columns are `RECORD_SCHEMA`. `expect` says what the capture side must do with
the frame: "reading" (store `timestamp_ms` + channel values), "duplicate" (an exact
resend of the reading just before it on the same connection: not stored again),
"heartbeat", "hello" (never stored) or "rejected" with a `reason` class from `REASONS`.
`read_record` and `expected_readings` read it back for tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import math
import os
import random
import resource
import signal
import subprocess
import sys
import time
import uuid as uuidlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final, NamedTuple

import orjson
import polars as pl
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from powerwatch.capture.frames import (
    BAD_TIMESTAMP,
    BINARY,
    INVALID_VALUE,
    MALFORMED,
    MAX_FRAME,
    OVERSIZED,
    STATION_MISMATCH,
    UNKNOWN_TYPE,
)
from powerwatch.core.errors import InputError
from schemas.channels import DAY_MS
from schemas.reading import ACTIVE_CHANNELS, CHANNEL_KEYS, MUX_CHANNELS, TIMESTAMP_DTYPE
from schemas.registry import Station, write_registry

__all__ = [
    "FRAME_FAULTS",
    "MAX_FRAME",
    "REASONS",
    "RECORD_SCHEMA",
    "FaultPlan",
    "Frame",
    "Simulator",
    "Tick",
    "expected_readings",
    "read_record",
    "run_simulator",
    "simulate",
    "spawn",
]

logger = logging.getLogger(__name__)

HOST: Final = "127.0.0.1"
BLOCK: Final = 16  # seqs generated (and cached) together per station
METER_EPOCH: Final = 1_700_000_000  # meters grow from here (seconds since 1970)
LOCAL_OFFSET_S: Final = 7 * 3600  # stations' local time (daily curve), UTC+7
SCENES: Final = ("north", "northeast", "central", "east", "west", "south")

# Reason classes of rejected frames (what the capture side must reject them for): the
# protocol's are the capture's own constants, these three are split_valid's rule labels.
OUT_OF_RANGE: Final = "out of range"
FUTURE: Final = "timestamp in the future"
ANCIENT: Final = "timestamp before 2000-01-01"
REASONS: Final = (
    MALFORMED, UNKNOWN_TYPE, STATION_MISMATCH, OUT_OF_RANGE, INVALID_VALUE,
    FUTURE, ANCIENT, BAD_TIMESTAMP, BINARY, OVERSIZED,
)  # fmt: skip

# fault name -> (expect, reason). Quirks are unusual but valid readings.
FRAME_FAULTS: Final[Mapping[str, tuple[str, str | None]]] = {
    "malformed": ("rejected", MALFORMED),
    "non_object": ("rejected", MALFORMED),
    "unknown_type": ("rejected", UNKNOWN_TYPE),
    "wrong_station": ("rejected", STATION_MISMATCH),
    "wrong_uuid": ("rejected", STATION_MISMATCH),
    "out_of_range": ("rejected", OUT_OF_RANGE),
    "nan": ("rejected", INVALID_VALUE),
    "infinity": ("rejected", INVALID_VALUE),
    "string_value": ("rejected", INVALID_VALUE),
    "bool_value": ("rejected", INVALID_VALUE),
    "future_timestamp": ("rejected", FUTURE),
    "ancient_timestamp": ("rejected", ANCIENT),
    "bad_timestamp": ("rejected", BAD_TIMESTAMP),
    "binary": ("rejected", BINARY),
    "oversized": ("rejected", OVERSIZED),
    "heartbeat": ("heartbeat", None),  # sent after the seq's reading
    "hello": ("hello", None),  # sent after the seq's reading
    "duplicate": ("duplicate", None),  # the seq's reading sent twice
    "offset_timestamp": ("reading", None),  # "+07:00" instead of "Z"
    "unknown_key": ("reading", None),  # an extra data key, ignored
    "missing_key": ("reading", None),  # a channel key absent: NULL
    "no_identity": ("reading", None),  # no station and/or uuid
    "boundary_value": ("reading", None),  # activePower exactly -1000 or 1000000
    "missing_timestamp": ("reading", None),  # receive time; timestamp_ms null
}
DEFAULT_FAULT_WEIGHTS: Final[Mapping[str, float]] = {
    **{name: 1.0 for name in FRAME_FAULTS},
    "oversized": 0.05,  # 64 KiB each: keep the bandwidth sane
    "missing_timestamp": 0.0,  # its stored timestamp is the receive time: opt in
}
DROP_MODES: Final = ("close", "cut")  # WebSocket close 1011 / TCP close without close frame

RECORD_SCHEMA: Final[dict[str, pl.DataType]] = {
    "conn": pl.Int64(),
    "peer": pl.String(),
    "sent_ms": pl.Int64(),
    "station": pl.String(),
    "seq": pl.Int64(),
    "event": pl.String(),  # connect | disconnect | drop | lag_skip | restart | listen; else null
    "detail": pl.String(),
    "binary": pl.Boolean(),
    "expect": pl.String(),
    "reason": pl.String(),
    "fault": pl.String(),
    "timestamp_ms": pl.Int64(),
    **{key: pl.Float64() for key in CHANNEL_KEYS},
    "raw": pl.String(),
}

_ACTIVE = len(ACTIVE_CHANNELS)
_MUX = len(MUX_CHANNELS)
_NAN_MARK: Final = "\x00nan\x00"
_ABSENT: Final = object()  # "no timestamp key at all"
_Value = float | int | None


@dataclass(frozen=True)
class FaultPlan:
    """How often things go wrong when `faults=True` (all decisions seeded)."""

    frame_rate: float = 0.02  # share of seqs that carry a frame fault
    weights: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_FAULT_WEIGHTS))
    drop_every: float = 600.0  # mean seconds between connection drops, per station
    restart_every: float = 1800.0  # mean seconds between restarts, per station (0: never)
    restart_down: tuple[float, float] = (2.0, 5.0)  # seconds a restart stays down

    def __post_init__(self) -> None:
        unknown = set(self.weights) - set(FRAME_FAULTS)
        if unknown:
            raise ValueError(f"unknown fault classes: {', '.join(sorted(unknown))}")


class Frame(NamedTuple):
    """One frame as built, shared by every connection of its station.

    A tuple of atomic values, so the garbage collector stops tracking it: thousands
    of cached frames would otherwise make every full collection a long pause.
    """

    station: str
    seq: int  # -1: the hello sent on connect
    payload: bytes
    expect: str  # reading | duplicate | heartbeat | hello | rejected
    reason: str | None = None  # for "rejected": one of REASONS
    fault: str | None = None  # the FRAME_FAULTS class that made it, if any
    timestamp_ms: int | None = None  # for reading/duplicate: the stored timestamp
    values: tuple[_Value, ...] | None = None  # for reading/duplicate: CHANNEL_KEYS order
    binary: bool = False


def _record_tail(frame: Frame) -> bytes:
    """The record line of a frame after its per-connection prefix."""
    values = frame.values or (None,) * len(CHANNEL_KEYS)
    line = orjson.dumps(
        {
            "station": frame.station,
            "seq": frame.seq,
            "event": None,
            "detail": None,
            "binary": frame.binary,
            "expect": frame.expect,
            "reason": frame.reason,
            "fault": frame.fault,
            "timestamp_ms": frame.timestamp_ms,
            **{
                k: None if v is None else float(v)
                for k, v in zip(CHANNEL_KEYS, values, strict=True)
            },
            "raw": frame.payload.decode("utf-8"),
        }
    )
    return line[1:] + b"\n"


class Tick(NamedTuple):
    """What one seq of a station carries: usually one frame; or a connection drop."""

    frames: tuple[Frame, ...]
    drop: str | None = None  # "close" | "cut": close the connection instead of sending


_ISO_CACHE: dict[int, str] = {}


def iso_ms(ts_ms: int, offset_minutes: int = 0) -> str:
    """`2026-11-24T03:15:02.250Z` (or with a `+07:00`-style offset), cheaply."""
    local = ts_ms + offset_minutes * 60_000
    sec, ms = divmod(local, 1000)
    prefix = _ISO_CACHE.get(sec)
    if prefix is None:
        if len(_ISO_CACHE) > 256:
            _ISO_CACHE.clear()
        prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
        _ISO_CACHE[sec] = prefix
    if offset_minutes == 0:
        return f"{prefix}.{ms:03d}Z"
    sign = "+" if offset_minutes > 0 else "-"
    hours, minutes = divmod(abs(offset_minutes), 60)
    return f"{prefix}.{ms:03d}{sign}{hours:02d}:{minutes:02d}"


class _Connection:
    __slots__ = ("closing", "ident", "peer", "prefix", "waiter", "ws")

    def __init__(self, ident: int, ws: ServerConnection) -> None:
        self.ident = ident
        self.ws = ws
        address = ws.remote_address
        peer = f"{address[0]}:{address[1]}" if isinstance(address, tuple) else str(address)
        self.peer = peer
        self.prefix = b'{"conn":%d,"peer":%s,"sent_ms":' % (ident, orjson.dumps(peer))
        self.closing = False
        self.waiter: asyncio.Future[None] | None = None

    def wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)


class _Recorder:
    """Append-only NDJSON of delivered frames and connection events, written in batches."""

    def __init__(self, path: Path, batch: int = 20_000) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file: IO[bytes] = open(path, "wb")  # noqa: SIM115 - closed in close()
        self._lines: list[bytes] = []
        self._batch = batch

    def frame(self, conn: _Connection, frame: Frame, sent_ms: int) -> None:
        self._lines.append(conn.prefix + b"%d," % sent_ms + _record_tail(frame))
        if len(self._lines) >= self._batch:
            self.flush()

    def event(
        self, station: str, event: str, conn: _Connection | None = None, detail: str | None = None
    ) -> None:
        line: dict[str, object] = dict.fromkeys(RECORD_SCHEMA)
        line.update(station=station, event=event, detail=detail, sent_ms=_now_ms())
        if conn is not None:
            line["conn"] = conn.ident
            line["peer"] = conn.peer
        self._lines.append(orjson.dumps(line) + b"\n")

    def flush(self) -> None:
        if self._lines:
            self._file.write(b"".join(self._lines))
            self._lines.clear()
            self._file.flush()

    def close(self) -> None:
        self.flush()
        self._file.close()


def _now_ms() -> int:
    return int(time.time() * 1000)


class _SimStation:
    """One station: its server, its connections and its (deterministic) frame stream."""

    def __init__(self, sim: Simulator, index: int, name: str, key: int, port: int) -> None:
        self.sim = sim
        self.index = index
        self.name = name
        self.key = key
        self.port = port
        r = random.Random(key)
        self.uuid = str(uuidlib.UUID(int=r.getrandbits(128), version=4))
        self.scene = SCENES[r.randrange(len(SCENES))]
        self.phase = r.random() / sim.rate  # stations are not in lock-step
        self.sends_hello = r.random() < 0.5 if sim.hello is None else sim.hello
        main = r.choice((2, 3, 3, 3, 4))
        level = r.uniform(800.0, 4500.0)
        self.main_base = tuple(level * r.uniform(0.9, 1.1) for _ in range(main))
        self.aux = _ACTIVE - main
        self.meters = tuple(
            (r.uniform(1e4, 3e6), r.uniform(1.0, 30.0) / 3600.0) for _ in range(_MUX)
        )
        self.restart_rng = random.Random(key ^ 0x5EED)
        self.server: Server | None = None
        self.conns: set[_Connection] = set()
        self.lock = asyncio.Lock()
        # Seq k is drawn from the RNG seeded for its block, after the seqs before it in
        # that block: one seeding per BLOCK seqs, and frames die young (no big cache).
        self._rng = random.Random()
        self._rng_block = -1
        self._rng_next = 0  # the seq the RNG is positioned for
        self._recent: dict[int, Tick] = {}  # the last few ticks, for every connection
        self.hello_frame = Frame(
            name,
            -1,
            orjson.dumps(
                {"type": "hello", "station": {"name": name, "uuid": self.uuid, "scene": self.scene}}
            ),
            "hello",
        )

    # --- schedule -------------------------------------------------------------------
    def due(self, seq: int) -> float:
        return self.sim.mono0 + self.phase + seq / self.sim.rate

    def seq_at(self, now: float) -> int:
        return math.floor((now - self.sim.mono0 - self.phase) * self.sim.rate)

    def ts_ms(self, seq: int) -> int:
        return self.sim.wall0_ms + round((self.phase + seq / self.sim.rate) * 1000)

    # --- frames ---------------------------------------------------------------------
    def tick(self, seq: int) -> Tick:
        made = self._recent.get(seq)
        if made is not None:
            return made
        block = seq // BLOCK
        if block != self._rng_block or seq < self._rng_next:
            self._rng.seed((self.key << 48) + block)
            self._rng_block = block
            self._rng_next = block * BLOCK
        while True:  # replay the block up to seq (nothing to replay when sequential)
            made = self._make_tick(self._rng_next, self._rng)
            self._rng_next += 1
            if self._rng_next > seq:
                break
        if len(self._recent) >= 4:
            del self._recent[next(iter(self._recent))]
        self._recent[seq] = made
        return made

    def _values(self, ts_ms: int, r: random.Random) -> list[_Value]:
        # Cheap on purpose (thousands per second): floor(x * 100 + 0.5) / 100 rounds to
        # cents (non-decreasing in x, so meters stay monotonic) and a sum of three
        # uniforms stands in for Gaussian noise (sd ~ 1 % of the output's level).
        hour = ((ts_ms // 1000 + LOCAL_OFFSET_S) % 86_400) / 3600.0
        daily = 1.0 - 0.06 * (1.0 + math.cos(2.0 * math.pi * (hour - 3.0) / 24.0))
        rand = r.random
        floor = math.floor
        values: list[_Value] = [
            floor((base * daily + base * 0.02 * (rand() + rand() + rand() - 1.5)) * 100 + 0.5) / 100
            for base in self.main_base
        ]
        for _ in range(self.aux):
            values.append(floor((0.5 + 49.5 * rand()) * 100 + 0.5) / 100 if rand() < 0.12 else 0)
        elapsed = ts_ms / 1000.0 - METER_EPOCH
        values.extend(
            floor((base + slope * elapsed) * 100 + 0.5) / 100 for base, slope in self.meters
        )
        if rand() < 0.03:
            values[r.randrange(len(values))] = None
        return values

    def _reading(
        self, ts: object, values: list[_Value], *, identity: bool = True
    ) -> dict[str, Any]:
        message: dict[str, Any] = {"type": "reading"}
        if identity:
            message["station"] = self.name
            message["uuid"] = self.uuid
        if ts is not _ABSENT:
            message["timestamp"] = ts
        message["data"] = dict(zip(CHANNEL_KEYS, values, strict=True))
        return message

    def _make_tick(self, seq: int, r: random.Random) -> Tick:
        sim = self.sim
        ts_ms = self.ts_ms(seq)
        plan = sim.fault_plan
        if plan is not None and r.random() < sim.drop_probability:
            return Tick((), drop=DROP_MODES[r.randrange(len(DROP_MODES))])
        values = self._values(ts_ms, r)
        ts: object = ts_ms if r.random() < 0.1 else iso_ms(ts_ms)
        fault: str | None = None
        if plan is not None and r.random() < plan.frame_rate and sim.fault_names:
            fault = r.choices(sim.fault_names, sim.fault_weights)[0]
        if fault is None:
            payload = orjson.dumps(self._reading(ts, values))
            return Tick((self._valid(seq, payload, ts_ms, values),))
        return self._faulty(fault, seq, ts_ms, ts, values, r)

    def _valid(
        self, seq: int, payload: bytes, ts_ms: int | None, values: list[_Value], fault: str = ""
    ) -> Frame:
        return Frame(
            self.name, seq, payload, "reading",
            fault=fault or None, timestamp_ms=ts_ms, values=tuple(values),
        )  # fmt: skip

    def _rejected(self, fault: str, seq: int, payload: bytes, binary: bool = False) -> Frame:
        reason = FRAME_FAULTS[fault][1]
        return Frame(self.name, seq, payload, "rejected", reason=reason, fault=fault, binary=binary)

    def _faulty(
        self, fault: str, seq: int, ts_ms: int, ts: object, values: list[_Value], r: random.Random
    ) -> Tick:
        plain = orjson.dumps(self._reading(ts, values))
        if fault in ("heartbeat", "hello", "duplicate"):
            reading = self._valid(seq, plain, ts_ms, values)
            if fault == "heartbeat":
                beat = orjson.dumps({"type": "heartbeat", "timestamp": ts})
                return Tick((reading, Frame(self.name, seq, beat, "heartbeat", fault=fault)))
            if fault == "hello":
                hello = self.hello_frame.payload
                return Tick((reading, Frame(self.name, seq, hello, "hello", fault=fault)))
            copy = Frame(
                self.name, seq, plain, "duplicate",
                fault=fault, timestamp_ms=ts_ms, values=tuple(values),
            )  # fmt: skip
            return Tick((reading, copy))
        if fault == "offset_timestamp":
            offset = r.choice((420, 420, 0, -210, 330))
            text = iso_ms(ts_ms, offset)
            if offset == 0:
                text = text.replace("Z", "+00:00")
            payload = orjson.dumps(self._reading(text, values))
            return Tick((self._valid(seq, payload, ts_ms, values, fault),))
        if fault == "unknown_key":
            message = self._reading(ts, values)
            extra = r.choice(("activePower7", "temperature", "muxPower0", "note"))
            message["data"][extra] = "ok" if extra == "note" else round(r.uniform(0, 60), 1)
            return Tick((self._valid(seq, orjson.dumps(message), ts_ms, values, fault),))
        if fault == "missing_key":
            message = self._reading(ts, values)
            gone = r.randrange(len(CHANNEL_KEYS))
            del message["data"][CHANNEL_KEYS[gone]]
            values = [None if i == gone else v for i, v in enumerate(values)]
            return Tick((self._valid(seq, orjson.dumps(message), ts_ms, values, fault),))
        if fault == "no_identity":
            message = self._reading(ts, values, identity=False)
            kept = r.choice(("station", "uuid", None))
            if kept is not None:
                message[kept] = self.name if kept == "station" else self.uuid
            return Tick((self._valid(seq, orjson.dumps(message), ts_ms, values, fault),))
        if fault == "boundary_value":
            values[r.randrange(_ACTIVE)] = r.choice((-1000, 1_000_000, -1000.0, 1_000_000.0))
            payload = orjson.dumps(self._reading(ts, values))
            return Tick((self._valid(seq, payload, ts_ms, values, fault),))
        if fault == "missing_timestamp":
            payload = orjson.dumps(self._reading(_ABSENT, values))
            return Tick((self._valid(seq, payload, None, values, fault),))
        return Tick((self._rejected_frame(fault, seq, ts_ms, ts, values, plain, r),))

    def _rejected_frame(
        self,
        fault: str,
        seq: int,
        ts_ms: int,
        ts: object,
        values: list[_Value],
        plain: bytes,
        r: random.Random,
    ) -> Frame:
        if fault == "malformed":
            variant = r.randrange(5)
            if variant == 0:
                text = plain[: r.randrange(1, len(plain) - 1)]
            elif variant == 1:
                text = plain + b"}"
            elif variant == 2:
                text = repr({"type": "reading", "station": self.name}).encode()
            elif variant == 3:
                text = b"ERR sensor bus timeout"
            else:
                text = b""
            return self._rejected(fault, seq, text)
        if fault == "non_object":
            choice = r.randrange(5)
            other: object = [[orjson.loads(plain)], "reading", 42, None, True][choice]
            return self._rejected(fault, seq, orjson.dumps(other))
        if fault == "unknown_type":
            message = self._reading(ts, values)
            message["type"] = r.choice(("status", "alarm", "Reading", "readings"))
            return self._rejected(fault, seq, orjson.dumps(message))
        if fault == "wrong_station":
            message = self._reading(ts, values)
            message["station"] = self.sim.other_station_name(self.index, r)
            return self._rejected(fault, seq, orjson.dumps(message))
        if fault == "wrong_uuid":
            message = self._reading(ts, values)
            message["uuid"] = str(uuidlib.UUID(int=r.getrandbits(128), version=4))
            return self._rejected(fault, seq, orjson.dumps(message))
        if fault == "out_of_range":
            if r.random() < 0.5:
                bad: float = r.choice((1_000_000.01, 1.5e6, -1000.01, -25_000.0))
                values[r.randrange(_ACTIVE)] = bad
            else:
                values[_ACTIVE + r.randrange(_MUX)] = r.choice((-0.01, -3.5, 1e12, 2.5e12))
            return self._rejected(fault, seq, orjson.dumps(self._reading(ts, values)))
        if fault in ("nan", "infinity", "string_value", "bool_value"):
            where = r.randrange(len(CHANNEL_KEYS))
            bad_values: list[Any] = list(values)
            literal = b""
            if fault == "nan":
                literal = b"NaN"
            elif fault == "infinity":
                literal = r.choice((b"Infinity", b"-Infinity"))
            elif fault == "string_value":
                bad_values[where] = f"{values[where] or 0}"
            else:
                bad_values[where] = r.choice((True, False))
            if literal:
                bad_values[where] = _NAN_MARK
            payload = orjson.dumps(self._reading(ts, bad_values))
            if literal:
                payload = payload.replace(orjson.dumps(_NAN_MARK), literal)
            return self._rejected(fault, seq, payload)
        if fault == "future_timestamp":
            ahead = ts_ms + r.randrange(DAY_MS, 10 * 365 * DAY_MS)
            stamp: object = ahead if r.random() < 0.3 else iso_ms(ahead)
            return self._rejected(fault, seq, orjson.dumps(self._reading(stamp, values)))
        if fault == "ancient_timestamp":
            stamp = r.choice(
                (
                    "1999-12-31T23:59:59.999Z",
                    946_684_799_999,
                    0,
                    iso_ms(r.randrange(0, 946_684_800_000)),
                )
            )
            return self._rejected(fault, seq, orjson.dumps(self._reading(stamp, values)))
        if fault == "bad_timestamp":
            stamp = r.choice(("yesterday", "2026-13-45T99:99:99Z", "24/11/2026 03:15:02"))
            return self._rejected(fault, seq, orjson.dumps(self._reading(stamp, values)))
        if fault == "binary":
            return self._rejected(fault, seq, plain, binary=True)
        if fault == "oversized":
            message = self._reading(ts, values)
            message["data"]["trace"] = ""
            base = len(orjson.dumps(message))
            message["data"]["trace"] = "x" * (MAX_FRAME + r.randrange(1, 4096) - base)
            return self._rejected(fault, seq, orjson.dumps(message))
        raise AssertionError(f"unhandled fault {fault}")

    # --- serving --------------------------------------------------------------------
    async def listen(self) -> None:
        self.server = await serve(
            self.handle,
            HOST,
            self.port,
            compression=None,
            max_size=MAX_FRAME,
            close_timeout=2,
        )
        if self.port == 0:
            self.port = int(self.server.sockets[0].getsockname()[1])
        if self.sim.recorder is not None:
            self.sim.recorder.event(self.name, "listen", detail=str(self.port))

    async def close(self, code: int, reason: str) -> None:
        server, self.server = self.server, None
        if server is None:
            return
        server.close(close_connections=True, code=code, reason=reason)
        for conn in list(self.conns):
            conn.closing = True
            conn.wake()
        await server.wait_closed()

    async def restart(self, down_seconds: float) -> None:
        async with self.lock:
            if self.server is None or self.sim.stopping:
                return
            if self.sim.recorder is not None:
                self.sim.recorder.event(self.name, "restart", detail=f"{down_seconds:.3f}")
            await self.close(1012, "simulated restart")
            await asyncio.sleep(down_seconds)
            while not self.sim.stopping:
                try:
                    await self.listen()
                    return
                except OSError as exc:  # port taken meanwhile: stay down, retry
                    logger.warning("%s: cannot listen again on %d: %s", self.name, self.port, exc)
                    await asyncio.sleep(1.0)

    async def supervise_restarts(self, plan: FaultPlan) -> None:
        """Restart at seeded, exponentially spaced times (absolute schedule)."""
        if plan.restart_every <= 0:
            return
        loop = asyncio.get_running_loop()
        at = self.sim.mono0
        while True:
            at += self.restart_rng.expovariate(1.0 / plan.restart_every)
            down = self.restart_rng.uniform(*plan.restart_down)
            await asyncio.sleep(max(0.0, at - loop.time()))
            await self.restart(down)
            at = max(at, loop.time())

    async def handle(self, ws: ServerConnection) -> None:
        sim = self.sim
        loop = asyncio.get_running_loop()
        conn = _Connection(sim.next_conn_id(), ws)
        rec = sim.recorder
        self.conns.add(conn)
        if rec is not None:
            rec.event(self.name, "connect", conn)
        max_backlog = max(BLOCK, int(sim.rate * sim.max_lag))
        detail = None
        try:
            if self.sends_hello:
                await ws.send(self.hello_frame.payload, text=True)
                sim.frames_sent += 1
                if rec is not None:
                    rec.frame(conn, self.hello_frame, _now_ms())
            next_seq = self.seq_at(loop.time()) + 1
            while not conn.closing:
                waiter: asyncio.Future[None] = loop.create_future()
                conn.waiter = waiter
                handle = loop.call_at(self.due(next_seq), _wake, waiter)
                try:
                    await waiter
                finally:
                    handle.cancel()
                    conn.waiter = None
                if conn.closing:
                    break
                last = self.seq_at(loop.time())
                if last - next_seq >= max_backlog:
                    if rec is not None:
                        rec.event(self.name, "lag_skip", conn, str(last - max_backlog - next_seq))
                    next_seq = last - max_backlog
                for seq in range(next_seq, last + 1):
                    tick = self.tick(seq)
                    if tick.drop is not None:
                        detail = f"drop:{tick.drop}"
                        if rec is not None:
                            rec.event(self.name, "drop", conn, tick.drop)
                        if tick.drop == "cut":
                            ws.transport.close()  # FIN after the buffered frames, no close frame
                        else:
                            await ws.close(1011, "simulated drop")
                        return
                    for frame in tick.frames:
                        await ws.send(frame.payload, text=not frame.binary)
                        sim.frames_sent += 1
                        if rec is not None:
                            rec.frame(conn, frame, _now_ms())
                next_seq = last + 1
            await ws.wait_closed()  # the server closes it (restart / stop) with its code
            detail = f"closed:{ws.close_code}"
        except ConnectionClosed as exc:
            detail = f"closed:{exc.rcvd.code if exc.rcvd else exc.sent.code if exc.sent else ''}"
        finally:
            self.conns.discard(conn)
            if rec is not None:
                rec.event(self.name, "disconnect", conn, detail)


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class Simulator:
    """N simulated stations, each a real WebSocket server on 127.0.0.1.

    `port=0` picks free ports; otherwise station i listens on `port + i`. With
    `registry_path` the matching registry is written once every server listens.
    """

    def __init__(
        self,
        count: int,
        rate: float,
        *,
        port: int = 0,
        faults: bool = False,
        seed: int = 0,
        registry_path: Path | None = None,
        record_path: Path | None = None,
        fault_plan: FaultPlan | None = None,
        hello: bool | None = None,
        max_lag: float = 10.0,
        epoch_ms: int | None = None,
    ) -> None:
        if count < 1:
            raise InputError(f"station count must be at least 1, not {count}")
        if not 0 < rate <= 1000:
            raise InputError(f"rate must be in (0, 1000] Hz, not {rate}")
        if port and not 1 <= port <= 65536 - count:
            raise InputError(f"ports {port}..{port + count - 1} are not all valid TCP ports")
        self.count = count
        self.rate = float(rate)
        self.base_port = port
        self.seed = seed
        self.registry_path = registry_path
        self.record_path = record_path
        self.fault_plan = (fault_plan or FaultPlan()) if faults or fault_plan else None
        self.hello = hello
        self.max_lag = max_lag  # a connection further behind than this skips ahead
        plan = self.fault_plan
        weights = plan.weights if plan is not None else {}
        self.fault_names = [n for n in FRAME_FAULTS if weights.get(n, 0.0) > 0]
        self.fault_weights = [weights[n] for n in self.fault_names]
        self.drop_probability = (
            1.0 / (plan.drop_every * self.rate) if plan is not None and plan.drop_every > 0 else 0.0
        )
        self.epoch_ms = epoch_ms  # wall time of seq 0; None: when start() is called
        self.mono0 = 0.0
        self.wall0_ms = _now_ms() if epoch_ms is None else epoch_ms
        self.frames_sent = 0
        self.stopping = False
        self.recorder: _Recorder | None = None
        self._conn_ids = 0
        self._tasks: list[asyncio.Task[None]] = []
        root = random.Random(f"powerwatch-simulator:{seed}")
        self._stations = [
            _SimStation(self, i, f"SIM-{i + 1:04d}", root.getrandbits(64), port + i if port else 0)
            for i in range(count)
        ]
        self._by_name = {s.name: s for s in self._stations}

    @property
    def stations(self) -> list[Station]:
        return [
            Station(s.name, s.uuid, HOST, s.scene, f"ws://{HOST}:{s.port}/") for s in self._stations
        ]

    @property
    def ports(self) -> dict[str, int]:
        return {s.name: s.port for s in self._stations}

    def url(self, name: str) -> str:
        return f"ws://{HOST}:{self._station(name).port}/"

    def ticks(self, name: str, seqs: range) -> list[Tick]:
        """What `name` sends for these seqs (pure: the same for every connection and run)."""
        station = self._station(name)
        return [station.tick(seq) for seq in seqs]

    def connections(self, name: str) -> int:
        return len(self._station(name).conns)

    def next_conn_id(self) -> int:
        self._conn_ids += 1
        return self._conn_ids

    def other_station_name(self, index: int, r: random.Random) -> str:
        if self.count == 1:
            return "SIM-9999" if self._stations[0].name != "SIM-9999" else "SIM-9998"
        other = r.randrange(self.count - 1)
        return self._stations[other + (other >= index)].name

    def _station(self, name: str) -> _SimStation:
        try:
            return self._by_name[name]
        except KeyError:
            raise InputError(f"no simulated station named {name!r}") from None

    async def start(self) -> None:
        """Listen on every port, write the registry, start the fault schedule."""
        loop = asyncio.get_running_loop()
        self.mono0 = loop.time()
        if self.epoch_ms is None:
            self.wall0_ms = _now_ms()
        _raise_fd_limit(2 * self.count + 256)  # a listening socket + a connection each
        if self.record_path is not None:
            self.recorder = _Recorder(self.record_path)
        try:
            for station in self._stations:
                try:
                    await station.listen()
                except OSError as exc:
                    raise InputError(
                        f"{station.name}: cannot listen on {HOST}:{station.port}: {exc.strerror}"
                    ) from exc
        except BaseException:
            await self.stop()
            raise
        if self.registry_path is not None:
            write_registry(self.registry_path, self.stations)
        if self.fault_plan is not None:
            for station in self._stations:
                self._tasks.append(loop.create_task(station.supervise_restarts(self.fault_plan)))
        if self.recorder is not None:
            self._tasks.append(loop.create_task(self._flush_periodically()))

    async def stop(self) -> None:
        """Close every connection (1001) and server; flush and close the record."""
        self.stopping = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        await asyncio.gather(*(s.close(1001, "simulator stopping") for s in self._stations))
        if self.recorder is not None:
            self.recorder.close()
            self.recorder = None

    async def restart_station(self, name: str, down_seconds: float) -> None:
        """Close all of a station's connections (1012), stop listening, listen again later."""
        await self._station(name).restart(down_seconds)

    def flush_record(self) -> None:
        if self.recorder is not None:
            self.recorder.flush()

    async def _flush_periodically(self, every: float = 0.5) -> None:
        while True:
            await asyncio.sleep(every)
            self.flush_record()

    async def __aenter__(self) -> Simulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


async def run_simulator(
    count: int,
    rate: float,
    port: int,
    faults: bool,
    registry_path: Path,
    duration: float | None = None,
    seed: int = 0,
    record_path: Path | None = None,
) -> None:
    """Run `count` stations until cancelled or for `duration` seconds; always stop cleanly."""
    sim = Simulator(
        count, rate, port=port, faults=faults, seed=seed,
        registry_path=registry_path, record_path=record_path,
    )  # fmt: skip
    await _run(sim, duration)


class Outage(NamedTuple):
    """`--outage NAME@AFTER+SECONDS`: station NAME goes off air AFTER seconds from the
    start (its connections closed, its port no longer listening) for SECONDS.
    `NAME@USR1+SECONDS`: off air when the simulator receives SIGUSR1 (`kill -USR1 PID`),
    for an outage at a moment of the operator's (or a test's) choosing rather than a guess
    at how long everything else takes to start."""

    name: str
    after: float | None  # None: on SIGUSR1
    seconds: float

    @classmethod
    def parse(cls, text: str) -> Outage:
        name, at, rest = text.partition("@")
        after, plus, seconds = rest.partition("+")
        try:
            outage = cls(name, None if after == "USR1" else float(after), float(seconds))
        except ValueError:
            outage = None
        if (
            not (name and at and plus)
            or outage is None
            or not (outage.after is None or 0 <= outage.after < math.inf)
            or not 0 < outage.seconds < math.inf
        ):
            raise InputError(
                f"--outage wants NAME@AFTER+SECONDS or NAME@USR1+SECONDS (e.g. SIM-0002@30+90): "
                f"{text!r}"
            )
        return outage


async def _outage(sim: Simulator, outage: Outage, signalled: asyncio.Event) -> None:
    if outage.after is None:
        await signalled.wait()
    else:
        await asyncio.sleep(outage.after)
    logger.warning("%s: off air for %g s (--outage)", outage.name, outage.seconds)
    await sim.restart_station(outage.name, outage.seconds)
    logger.warning("%s: on air again", outage.name)


async def _run(
    sim: Simulator,
    duration: float | None,
    on_started: Callable[[str], None] | None = None,
    outages: Sequence[Outage] = (),
) -> None:
    await sim.start()
    for outage in outages:
        sim._station(outage.name)  # an unknown name is bad input, before anything runs
    loop, signalled = asyncio.get_running_loop(), asyncio.Event()
    if any(o.after is None for o in outages):
        loop.add_signal_handler(signal.SIGUSR1, signalled.set)
    offs = [loop.create_task(_outage(sim, o, signalled)) for o in outages]
    try:
        ports = sorted(sim.ports.values())
        span = f"{ports[0]}" if len(ports) == 1 else f"{ports[0]}..{ports[-1]}"
        message = (
            f"simulating {sim.count} stations at {sim.rate:g} Hz on {HOST}:{span}"
            f"{' with faults' if sim.fault_plan else ''}; registry {sim.registry_path}"
        )
        logger.info("%s", message)
        if on_started is not None:
            on_started(message)
        if duration is None:
            await asyncio.Event().wait()
        else:
            await asyncio.sleep(duration)
    finally:
        for off in offs:
            off.cancel()
        await sim.stop()


def _started_in_foreground(message: str) -> None:
    # Everything allocated so far (modules, servers) lives as long as the process:
    # keep it out of the collector's full scans, which would stall every station.
    gc.freeze()
    print(f"{message}; Ctrl-C to stop", file=sys.stderr, flush=True)


def _raise_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def simulate(
    count: int = 10,
    rate: float = 1.0,
    port: int = 0,
    faults: bool = False,
    registry_path: Path | None = None,
    duration: float | None = None,
    seed: int = 0,
    record_path: Path | None = None,
    outages: Sequence[Outage] = (),
) -> None:
    """Run the simulator in the foreground; SIGINT/SIGTERM stop it cleanly.

    Example: `simulate(count=100, rate=10, registry_path=Path("stations.yaml"))`.
    Without `registry_path` the registry goes where the settings say (`POWERWATCH_STATIONS`).
    """
    if registry_path is None:
        from powerwatch.core.settings import get_settings

        registry_path = get_settings().stations

    async def main() -> None:
        loop = asyncio.get_running_loop()
        sim = Simulator(
            count, rate, port=port, faults=faults, seed=seed,
            registry_path=registry_path, record_path=record_path,
        )  # fmt: skip
        run = loop.create_task(_run(sim, duration, _started_in_foreground, outages))
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, run.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await run
        # the count a benchmark compares with what a capture received
        print(f"simulator stopped: {sim.frames_sent} frames sent", file=sys.stderr, flush=True)

    asyncio.run(main())


def spawn(
    count: int,
    rate: float,
    registry_path: Path,
    *,
    record_path: Path | None = None,
    seed: int = 0,
    timeout: float = 60.0,
) -> subprocess.Popen[str]:
    """`simulate` in a child process (its own cores' share, its own event loop), returned
    once its registry is written. SIGTERM stops it; its stderr ends with the frames sent."""
    registry_path.unlink(missing_ok=True)
    record = "None" if record_path is None else f"Path({str(record_path)!r})"
    code = (
        "from pathlib import Path; from powerwatch.devtools.simulator import simulate; "
        f"simulate({count}, {rate}, 0, False, Path({str(registry_path)!r}), seed={seed}, "
        f"record_path={record})"
    )
    root = str(Path(__file__).resolve().parents[2])  # the folder holding powerwatch/
    python_path = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
    process = subprocess.Popen(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONPATH": python_path},
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + timeout
    while not registry_path.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            _, errors = process.communicate()
            raise InputError(f"the simulator did not start: {errors.strip()[-300:]}")
        time.sleep(0.05)
    return process


def read_record(path: Path) -> pl.DataFrame:
    """The ground-truth record as a frame with `RECORD_SCHEMA` columns."""
    if not path.exists() or path.stat().st_size == 0:
        return pl.DataFrame(schema=RECORD_SCHEMA)
    return pl.read_ndjson(path, schema=RECORD_SCHEMA)


def expected_readings(path: Path) -> pl.DataFrame:
    """What the database must hold: delivered valid readings, first per (station, timestamp).

    Landing-chunk columns (station, timestamp, channels), ordered by station then time.
    Readings without a timestamp (fault "missing_timestamp") are left out: their
    stored time is the receive time, which only the capture side knows.
    """
    record = read_record(path)
    return (
        record.filter(pl.col("expect") == "reading", pl.col("timestamp_ms").is_not_null())
        .sort("sent_ms", "conn", maintain_order=True)
        .unique(["station", "timestamp_ms"], keep="first", maintain_order=True)
        .select(
            "station",
            pl.col("timestamp_ms").cast(pl.Datetime("ms", "UTC")).alias("timestamp"),
            *CHANNEL_KEYS,
        )
        .cast({"timestamp": TIMESTAMP_DTYPE})
        .sort("station", "timestamp")
    )
