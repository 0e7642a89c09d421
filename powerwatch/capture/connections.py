"""One asyncio task per station: connect, receive into the shared buffer, reconnect forever.

The receive loop is the hot path (10 k frames/s in one process): per frame it only
appends the text, the station's index and the receive time to three flat buffers
(`FrameBuffer`). Decoding and checking happen per flush, on whole batches
(`capture.frames.check_frames`). A station's task never waits for another's: a
slow, dead or misbehaving station only costs its own task timeouts and backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from array import array
from collections import Counter
from dataclasses import dataclass, field
from typing import Final, NamedTuple

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from powerwatch.capture.frames import BINARY, MAX_FRAME, OVERSIZED

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
    _lost_at: float | None = field(default=None, repr=False)

    def mark_connected(self) -> None:
        self.connected = True
        self.connects += 1
        if self.connects > 1:
            self.reconnects += 1
        if self._lost_at is not None:
            self.down_seconds += time.monotonic() - self._lost_at
            self._lost_at = None

    def mark_lost(self, reason: str, stopping: bool) -> None:
        if self.connected:
            self.gaps += not stopping
            self._lost_at = time.monotonic()
        self.connected = False
        self.last_error = reason

    def finish(self) -> None:
        if self._lost_at is not None:
            self.down_seconds += time.monotonic() - self._lost_at
            self._lost_at = None


class FrameBuffer:
    """Received frames as flat columns, plus the few frames rejected on arrival.

    The frames' text is kept as UTF-8 back to back in one `bytearray` with an array of
    end offsets (no Python object per frame: compact, no allocator fragmentation, and
    at flush time it is an Arrow string column without a per-row conversion).
    `take()` empties it for a flush. Appends past `limit` rows ask for a flush; past
    `2 * limit` the receive loops wait (TCP backpressure to the stations) until the
    flush has taken the rows: memory stays bounded however fast stations send.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.text = bytearray()
        self.ends: array[int] = array("q")
        self.station: array[int] = array("i")
        self.received_ms: array[int] = array("q")
        self.early_rejects: list[tuple[int, int, str, str]] = []  # station, ms, raw, reason
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
        return len(self.ends)

    def take(self) -> Taken:
        text, self.text = self.text, bytearray()
        taken = Taken(text, self.ends[:], self.station[:], self.received_ms[:], self.early_rejects)
        del self.ends[:]
        del self.station[:]
        del self.received_ms[:]
        self.early_rejects = []
        self.wanted.clear()
        self.room.set()
        return taken

    def reject(self, index: int, message: str | bytes, reason: str) -> None:
        text = message if isinstance(message, str) else message.decode("utf-8", "replace")
        self.early_rejects.append((index, _now_ms(), text, reason))


class Taken(NamedTuple):
    """One flush's worth of frames, as `FrameBuffer.take()` hands them over."""

    text: bytearray  # UTF-8 of every frame, back to back
    ends: array[int]  # end offset of each frame in `text`
    station: array[int]  # index of the station each frame came from
    received_ms: array[int]  # receive time, epoch milliseconds
    early_rejects: list[tuple[int, int, str, str]]  # binary / oversized: station, ms, raw, reason


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class StationClient:
    """The connection to one station, for the whole capture."""

    def __init__(self, index: int, state: StationState, buffer: FrameBuffer) -> None:
        self.index = index
        self.state = state
        self.buffer = buffer
        self.ws: ClientConnection | None = None
        self.stopping = False
        self._wake = asyncio.Event()

    async def run(self) -> None:
        """Connect and receive until `stop()`; reconnect with backoff and jitter, forever."""
        attempt = 0
        state = self.state
        while not self.stopping:
            try:
                async with connect(
                    state.url,
                    compression=None,
                    max_size=MAX_RECEIVE,
                    open_timeout=OPEN_TIMEOUT,
                    close_timeout=CLOSE_TIMEOUT,
                ) as ws:
                    self.ws = ws
                    state.mark_connected()
                    if self.stopping:  # stop() came during the handshake
                        await ws.close(1001, "capture stopping")
                    if await self._receive(ws):
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

    async def _receive(self, ws: ClientConnection) -> bool:
        """Receive until the connection closes; say whether any frame arrived."""
        buffer = self.buffer
        received = False
        ends = buffer.ends
        append_end, append_station = ends.append, buffer.station.append
        append_received = buffer.received_ms.append
        index, limit, hard_limit = self.index, buffer.limit, 2 * buffer.limit
        now_ns = time.time_ns
        async for message in ws:
            received = True
            if type(message) is not str:
                buffer.reject(index, message, f"{BINARY}: {len(message)} bytes")
                continue
            encoded = message.encode()
            if len(encoded) > MAX_FRAME:
                buffer.reject(index, message, f"{OVERSIZED}: {len(encoded)} bytes")
                continue
            text = buffer.text  # swapped by take(): fetched afresh for every frame
            text += encoded
            append_end(len(text))
            append_station(index)
            append_received(now_ns() // 1_000_000)
            if len(ends) >= limit:
                buffer.wanted.set()
                if len(ends) >= hard_limit and not buffer.draining:
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


def _backoff(attempt: int) -> float:
    """Exponential with 'equal jitter': half fixed, half random, so stations spread out."""
    ceiling = min(BACKOFF_CAP, BACKOFF_FIRST * 2**attempt)
    return float(ceiling / 2 + random.uniform(0, ceiling / 2))


def _closed_reason(code: int | None, text: str) -> str:
    return f"closed ({code})" if code is not None else f"closed: {text}"


def _line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
