"""One asyncio task per station: connect, receive into the shared buffer, reconnect forever.

The receive loop is the hot path (10 k frames/s in one process): per frame it only
appends the text, the station's index and the receive time to three flat buffers
(`FrameBuffer`). Decoding and checking happen per flush, on whole batches
(`capture.frames.check_frames`). A station's task never waits for another's: a
slow, dead or misbehaving station only costs its own task timeouts and backoff.

Text frames are received as bytes (`recv(decode=False)`): websockets would otherwise
decode them itself and fail the whole connection (1007) on invalid UTF-8, losing the
frame. Here the UTF-8 decision is ours: such a frame is a rejected frame (its bytes kept
as base64 in the dead letter), and the connection carries on.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import random
import time
from array import array
from collections import Counter, deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final, NamedTuple

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, ConnectionClosedOK, InvalidHandshake, InvalidURI
from websockets.frames import Frame, Opcode
from websockets.protocol import Event

from powerwatch.capture.frames import BINARY, INVALID_UTF8, MAX_FRAME, OVERSIZED
from powerwatch.core.faults import fault_point

logger = logging.getLogger(__name__)

MAX_RECEIVE: Final = 16 * MAX_FRAME  # larger frames close the connection (1009); smaller
# oversized ones are rejected one by one and the connection carries on
OPEN_TIMEOUT: Final = 10.0  # a station that accepts TCP but never answers the handshake
CLOSE_TIMEOUT: Final = 2.0
BACKOFF_FIRST: Final = 0.5  # seconds before the first reconnect ...
BACKOFF_CAP: Final = 30.0  # ... doubling up to this


@dataclass
class StationState:
    """What the capture knows about one station; frame counts are updated per flush."""

    name: str
    url: str
    connected: bool = False
    connects: int = 0  # handshakes that succeeded
    reconnects: int = 0  # connects after the first
    failed_attempts: int = 0  # connection attempts that failed
    gaps: int = 0  # connections lost while the capture was running
    down_seconds: float = 0.0  # time without a connection after the first connect
    frames: int = 0
    readings: int = 0
    heartbeats: int = 0
    hellos: int = 0
    rejects: Counter[str] = field(default_factory=Counter)  # by reason class
    last_frame_ms: int | None = None  # receive time of the newest frame (epoch ms)
    last_error: str | None = None
    crashes: int = 0  # times the station's task failed unexpectedly (logged, restarted)
    # Over the window, for `window_state` (issue 14: a snapshot taken after the window
    # closed said "not connected" for every station):
    first_up_ms: int | None = None  # wall clock of the first connect (epoch ms)
    failed_before_up: int = 0  # attempts that failed before the first connect
    down_since_ms: int | None = None  # lost while capturing and not back (epoch ms)
    _lost_at: float | None = field(default=None, repr=False)

    def mark_connected(self) -> None:
        self.connected = True
        self.connects += 1
        if self.connects > 1:
            self.reconnects += 1
        else:
            self.first_up_ms = time.time_ns() // 1_000_000
            self.failed_before_up = self.failed_attempts
        self.down_since_ms = None
        if self._lost_at is not None:
            self.down_seconds += time.monotonic() - self._lost_at
            self._lost_at = None

    def mark_lost(self, reason: str, stopping: bool) -> None:
        if self.connected:
            self.gaps += not stopping
            self._lost_at = time.monotonic()
            if not stopping:
                self.down_since_ms = time.time_ns() // 1_000_000
        self.connected = False
        if not stopping:  # the stop's own close says nothing about the station
            self.last_error = reason

    def window_state(self) -> str:
        """What happened to the connection over the capture window, in a few words:
        `up the whole time`, `up from 12:00:03Z`, `2 reconnects, down 14 s`,
        `down since 12:03:04Z`, `never connected`."""
        if self.first_up_ms is None:
            return "never connected"
        if self.down_since_ms is not None:
            again = f" ({_count(self.reconnects, 'reconnect')})" if self.reconnects else ""
            return f"down since {_clock(self.down_since_ms)}{again}"
        if self.reconnects:
            return f"{_count(self.reconnects, 'reconnect')}, down {self.down_seconds:.0f} s"
        if self.failed_before_up:
            return f"up from {_clock(self.first_up_ms)}"
        return "up the whole time"

    def finish(self) -> None:
        if self._lost_at is not None:
            self.down_seconds += time.monotonic() - self._lost_at
            self._lost_at = None


class FrameBuffer:
    """Received frames as flat columns, plus the few frames rejected on arrival.

    The frames' text is kept as UTF-8 back to back in one `bytearray` with an array of
    end offsets (no Python object per frame: compact, no allocator fragmentation, and
    at flush time it is an Arrow string column without a per-row conversion).
    `take()` empties it for a flush; the rows taken stay `held` (counted against the
    bound) until the flush has written them (`release`): a flush whose write failed keeps
    its rows in memory for the next one. Appends past `limit` rows ask for a flush; once
    buffered plus held rows reach `2 * limit` the receive loops wait (TCP backpressure to
    the stations) until a flush has written rows: memory stays bounded however fast
    stations send and however long the disk stays full, and nothing is dropped.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.text = bytearray()
        self.ends: array[int] = array("q")
        self.station: array[int] = array("i")
        self.received_ms: array[int] = array("q")
        self.early_rejects: list[EarlyReject] = []
        self.held = 0  # rows taken by flushes and not yet written
        self.wanted = asyncio.Event()  # a flush is due (set by the receive loops)
        self.room = asyncio.Event()  # cleared while the buffer is over its hard limit
        self.room.set()
        self.draining = False  # closing: take everything still arriving, no backpressure

    def drain(self) -> None:
        """The run is closing its connections: the last frames must not wait for a flush
        that only comes after the close (they are bounded by what is in flight)."""
        self.draining = True
        self.room.set()

    def __len__(self) -> int:
        return len(self.ends) + len(self.early_rejects)

    @property
    def full(self) -> bool:
        """Buffered plus held rows are at the hard bound (`2 * limit`)."""
        return len(self) + self.held >= 2 * self.limit and not self.draining

    def take(self) -> Taken:
        """Everything received so far, for a flush; held until `release`d."""
        text, self.text = self.text, bytearray()
        taken = Taken(text, self.ends[:], self.station[:], self.received_ms[:], self.early_rejects)
        del self.ends[:]
        del self.station[:]
        del self.received_ms[:]
        self.early_rejects = []
        self.held += len(taken.ends) + len(taken.early_rejects)
        self.wanted.clear()
        return taken

    def release(self, rows: int) -> None:
        """A flush wrote `rows` taken rows: they no longer count against the bound."""
        self.held = max(0, self.held - rows)
        if not self.full:
            self.room.set()

    def reject(self, index: int, message: str | bytes, reason: str) -> None:
        if isinstance(message, str):
            self.early_rejects.append(EarlyReject(index, _now_ms(), message, None, reason))
        else:  # bytes: readable text for the operator, and the exact bytes
            text = message.decode("utf-8", "replace")
            exact = base64.b64encode(message).decode("ascii")
            self.early_rejects.append(EarlyReject(index, _now_ms(), text, exact, reason))


class EarlyReject(NamedTuple):
    """A frame rejected on arrival (binary, oversized, invalid UTF-8)."""

    station: int
    received_ms: int
    raw: str  # the text (bytes decoded with U+FFFD for what is not UTF-8)
    raw_base64: str | None  # the exact bytes, for frames that were not valid UTF-8 text
    reason: str


class Taken(NamedTuple):
    """One flush's worth of frames, as `FrameBuffer.take()` hands them over."""

    text: bytearray  # UTF-8 of every frame, back to back
    ends: array[int]  # end offset of each frame in `text`
    station: array[int]  # index of the station each frame came from
    received_ms: array[int]  # receive time, epoch milliseconds
    early_rejects: list[EarlyReject]  # binary / oversized / invalid UTF-8


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class StationConnection(ClientConnection):
    """websockets' client connection, remembering whether each message came as text.

    `recv(decode=False)` returns bytes for text and binary frames alike; the opcode of
    each message's first frame is queued here in arrival order, so the receive loop
    still tells text from binary (one deque append per message).
    """

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.texts: deque[bool] = deque()

    def process_event(self, event: Event) -> None:
        super().process_event(event)
        if isinstance(event, Frame) and event.opcode in _MESSAGE_OPCODES:
            self.texts.append(event.opcode is Opcode.TEXT)


_MESSAGE_OPCODES: Final = (Opcode.TEXT, Opcode.BINARY)


class StationClient:
    """The connection to one station, for the whole capture."""

    def __init__(self, index: int, state: StationState, buffer: FrameBuffer) -> None:
        self.index = index
        self.state = state
        self.buffer = buffer
        self.ws: ClientConnection | None = None
        self.stopping = False
        self._wake = asyncio.Event()

    async def supervise(self) -> None:
        """`run`, restarted after an unexpected failure: logged, counted, never swallowed.

        A station's task that crashes (a bug, or something no rule foresaw) would otherwise
        leave the station silent for the rest of the run; an operator expects the capture to
        reconnect it, as it reconnects a dropped connection. Restarts back off like reconnects.
        """
        crashes = 0
        while not self.stopping:
            try:
                await self.run()
                return
            except Exception as exc:  # a crashed station task: logged, counted, restarted
                crashes += 1
                self.state.crashes += 1
                self.state.mark_lost(f"task crashed: {_line(exc)}", self.stopping)
                logger.error(
                    "station %s: receive task crashed (%s: %s); restarting it (crash %d)",
                    self.state.name,
                    type(exc).__name__,
                    _line(exc),
                    self.state.crashes,
                )
            if not self.stopping:
                await self._sleep(_backoff(crashes - 1))

    async def run(self) -> None:
        """Connect and receive until `stop()`; reconnect with backoff and jitter, forever."""
        attempt = 0
        state = self.state
        while not self.stopping:
            fault_point("capture.station_connecting")
            try:
                async with connect(
                    state.url,
                    compression=None,
                    max_size=MAX_RECEIVE,
                    open_timeout=OPEN_TIMEOUT,
                    close_timeout=CLOSE_TIMEOUT,
                    create_connection=StationConnection,
                ) as ws:
                    self.ws = ws
                    state.mark_connected()
                    if self.stopping:  # stop() came during the handshake
                        await ws.close(1001, "capture stopping")
                    if await self._receive(ws):  # type: ignore[arg-type]
                        attempt = 0  # the station delivered: a drop is news, not a pattern
                    state.mark_lost(
                        _closed_reason(ws.close_code, ws.close_reason or ""), self.stopping
                    )
            except ConnectionClosed as exc:
                if exc.sent is not None and exc.sent.code == 1009:
                    self.buffer.reject(
                        self.index, "", f"{OVERSIZED}: more than {MAX_RECEIVE} bytes"
                    )
                code = exc.rcvd.code if exc.rcvd else exc.sent.code if exc.sent else None
                state.mark_lost(_closed_reason(code, str(exc)), self.stopping)
            except (OSError, InvalidHandshake, InvalidURI, TimeoutError) as exc:
                state.failed_attempts += 1
                state.mark_lost(f"cannot connect: {_line(exc)}", self.stopping)
            finally:
                self.ws = None
            if self.stopping:
                break
            await self._sleep(_backoff(attempt))
            attempt += 1

    async def _receive(self, ws: StationConnection) -> bool:
        """Receive until the connection closes; say whether any frame arrived."""
        buffer = self.buffer
        received = False
        ends = buffer.ends
        append_end, append_station = ends.append, buffer.station.append
        append_received = buffer.received_ms.append
        index, limit, hard_limit = self.index, buffer.limit, 2 * buffer.limit
        now_ns = time.time_ns
        recv, texts = ws.recv, ws.texts
        while True:
            try:
                message = await recv(False)
            except ConnectionClosedOK:
                break
            is_text = texts.popleft()
            received = True
            if not is_text:
                buffer.reject(index, message, f"{BINARY}: {len(message)} bytes")
            elif len(message) > MAX_FRAME:
                readable = message.isascii() or _is_utf8(message)  # text kept whole if it is
                oversized = message.decode() if readable else message
                buffer.reject(index, oversized, f"{OVERSIZED}: {len(message)} bytes")
            elif not message.isascii() and not _is_utf8(message):
                buffer.reject(index, message, f"{INVALID_UTF8}: {_utf8_error(message)}")
            else:
                text = buffer.text  # swapped by take(): fetched afresh for every frame
                text += message
                append_end(len(text))
                append_station(index)
                append_received(now_ns() // 1_000_000)
            if len(ends) >= limit:
                buffer.wanted.set()
            if len(ends) + buffer.held >= hard_limit or len(buffer.early_rejects) >= limit:
                buffer.wanted.set()
                if buffer.full:  # wait for a flush to write rows (backpressure)
                    buffer.room.clear()
                    await buffer.room.wait()
        return received

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)

    async def stop(self) -> None:
        """Close the connection with 1001 and keep receiving until the station's close
        frame arrives: frames the station sent before it saw ours are kept."""
        self.stopping = True
        self._wake.set()
        ws = self.ws
        if ws is not None:
            await ws.close(1001, "capture stopping")


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode()
    except UnicodeDecodeError:
        return False
    return True


def _utf8_error(data: bytes) -> str:
    try:
        data.decode()
    except UnicodeDecodeError as exc:
        return f"{exc.reason} at byte {exc.start} (raw_base64 has the bytes)"
    return "valid"


def _backoff(attempt: int) -> float:
    """Exponential with 'equal jitter': half fixed, half random, so stations spread out."""
    ceiling = min(BACKOFF_CAP, BACKOFF_FIRST * 2**attempt)
    return float(ceiling / 2 + random.uniform(0, ceiling / 2))


def _closed_reason(code: int | None, text: str) -> str:
    return f"closed ({code})" if code is not None else f"closed: {text}"


def _line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _clock(ms: int) -> str:
    """A moment of the window as UTC time of day (windows are minutes to hours)."""
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%H:%M:%SZ")


def _count(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")
