"""A capture run: every registered station at once, flushed into landing chunks.

    StationClient x N ──append──> FrameBuffer ──take (every flush_seconds or flush_rows)──┐
                                                                                          │
    landing/capture-….parquet  <── check_frames (polars, in a worker thread) <────────────┘
    dead-letter/capture-….jsonl  (station, received_at, reason, raw: what an operator reads)

A chunk is written under a hidden name and renamed when complete (`landing.write_atomically`):
complete or invisible. Chunk names are unique per process and flush, so two captures
running at once never touch each other's files. The run ends at `duration`, on
`stop()` (the signal handlers of `run_capture`), and in every case closes the
connections, drains what the stations had already sent, and flushes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any, NamedTuple

import polars as pl
import pyarrow as pa
import uvloop

from powerwatch import landing
from powerwatch.capture.connections import FrameBuffer, StationClient, StationState
from powerwatch.capture.frames import (
    CHUNK_COLUMNS,
    FRAME_COLUMNS,
    REJECTED_COLUMNS,
    STATION,
    UUID,
    CheckedFrames,
    check_frames,
    reason_class,
)
from powerwatch.errors import InputError
from powerwatch.jsonlines import RAW
from powerwatch.registry import Station
from schemas.reading import REASON, RECEIVED_AT, TIMESTAMP_DTYPE

logger = logging.getLogger(__name__)

CHECK_ROWS = 10_000  # frames judged at once in a flush
STOP_GRACE = 5.0  # seconds for the stations' close frames before connections are dropped


@dataclass
class CaptureReport:
    """One run's account: per station counts, the chunks written, why it ended."""

    started_at: datetime
    ended_at: datetime | None = None
    ended_by: str = ""  # duration | SIGINT | SIGTERM | stop
    chunks: list[str] = field(default_factory=list)
    dead_letter: str | None = None  # the run's dead-letter file, if anything was rejected
    stations: list[StationState] = field(default_factory=list)

    @property
    def readings(self) -> int:
        return sum(s.readings for s in self.stations)

    @property
    def frames(self) -> int:
        return sum(s.frames for s in self.stations)

    @property
    def rejects(self) -> dict[str, int]:
        total: dict[str, int] = {}
        for state in self.stations:
            for reason, count in state.rejects.items():
                total[reason] = total.get(reason, 0) + count
        return dict(sorted(total.items()))

    def rows(self) -> list[dict[str, object]]:
        """Per station: the table of the run's artifact and the CLI's summary."""
        return [
            {
                "station": s.name,
                "connected": s.connected,
                "frames": s.frames,
                "readings": s.readings,
                "heartbeats": s.heartbeats,
                "hellos": s.hellos,
                "rejected": sum(s.rejects.values()),
                "rejected by reason": ", ".join(f"{r}: {n}" for r, n in sorted(s.rejects.items())),
                "reconnects": s.reconnects,
                "gaps": s.gaps,
                "down s": round(s.down_seconds, 1),
                "failed attempts": s.failed_attempts,
                "last frame": _iso(s.last_frame_ms),
                "last error": s.last_error or "",
            }
            for s in self.stations
        ]

    def markdown(self) -> str:
        """The run's Prefect artifact: totals, the per-station table, the chunks written."""
        rows = self.rows()
        header = list(rows[0]) if rows else []
        lines = [
            f"Capture {_iso_dt(self.started_at)} .. {_iso_dt(self.ended_at)}, ended by "
            f"{self.ended_by}: {self.frames} frames, {self.readings} readings, rejected "
            f"{self.rejects or 'none'}.",
            "",
            "| " + " | ".join(header) + " |",
            "|" + "---|" * len(header),
            *("| " + " | ".join(str(v) for v in row.values()) + " |" for row in rows),
            "",
            f"Dead letters: `{self.dead_letter or 'none'}`.",
            "",
            f"Chunks written ({len(self.chunks)}):",
            *(f"- `{name}`" for name in self.chunks),
        ]
        return "\n".join(lines)


class Capture:
    """One capture run over `stations`: chunks to `landing_dir`, rejects to `dead_letter_dir`."""

    def __init__(
        self,
        stations: list[Station],
        landing_dir: Path,
        dead_letter_dir: Path,
        *,
        flush_seconds: float,
        flush_rows: int,
    ) -> None:
        if not stations:
            raise InputError("the registry has no stations to capture from")
        if flush_seconds <= 0 or flush_rows <= 0:
            raise InputError("flush seconds and flush rows must be positive")
        self.landing_dir = landing_dir
        self.dead_letter_path = dead_letter_dir / landing.chunk_name("capture").replace(
            ".parquet", ".jsonl"
        )
        self.flush_seconds = flush_seconds
        self.flush_rows = flush_rows
        self.names = pl.Series(STATION, [s.name for s in stations], pl.String)
        self.uuids = pl.DataFrame({STATION: self.names, UUID: [s.uuid for s in stations]})
        self.report = CaptureReport(
            started_at=datetime.now(UTC), stations=[StationState(s.name, s.url) for s in stations]
        )
        self._stop_reason: str | None = None
        self._buffer: FrameBuffer | None = None

    def stop(self, reason: str = "stop") -> None:
        """Ask the run to end (safe from a signal handler via `call_soon_threadsafe`)."""
        if self._stop_reason is None:
            self._stop_reason = reason
        if self._buffer is not None:
            self._buffer.wanted.set()

    async def run(self, duration: float | None = None) -> CaptureReport:
        """Capture until `duration` seconds have passed or `stop()`; flush everything held."""
        loop = asyncio.get_running_loop()
        buffer = self._buffer = FrameBuffer(self.flush_rows)
        clients = [StationClient(i, state, buffer) for i, state in enumerate(self.report.stations)]
        tasks = [loop.create_task(c.run(), name=f"station {c.state.name}") for c in clients]
        deadline = None if duration is None else loop.time() + duration
        try:
            next_flush = loop.time() + self.flush_seconds
            while self._stop_reason is None:
                now = loop.time()
                if deadline is not None and now >= deadline:
                    self._stop_reason = "duration"
                    break
                if len(buffer) >= self.flush_rows or now >= next_flush:
                    await self._flush(buffer)
                    next_flush = loop.time() + self.flush_seconds
                    continue
                wake_at = next_flush if deadline is None else min(next_flush, deadline)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(buffer.wanted.wait(), wake_at - now)
        finally:
            buffer.drain()
            await self._close(clients, tasks)
            await self._flush(buffer)
            for state in self.report.stations:
                state.finish()
            self.report.ended_at = datetime.now(UTC)
            self.report.ended_by = self._stop_reason or "error"
        return self.report

    async def _close(self, clients: list[StationClient], tasks: list[asyncio.Task[None]]) -> None:
        for client, task in zip(clients, tasks, strict=True):
            if client.ws is None:  # in a handshake or waiting to retry: nothing to drain
                task.cancel()
        await asyncio.gather(*(c.stop() for c in clients), return_exceptions=True)
        _done, pending = await asyncio.wait(tasks, timeout=STOP_GRACE) if tasks else ((), ())
        for task in pending:  # a station that never answers our close
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _flush(self, buffer: FrameBuffer) -> None:
        taken = buffer.take()
        early = taken.early_rejects
        if not taken.ends and not early:
            return
        offsets = array("q", [0])
        offsets.extend(taken.ends)
        text = pa.LargeStringArray.from_buffers(
            len(taken.ends), pa.py_buffer(offsets), pa.py_buffer(taken.text)
        )
        frames = pl.DataFrame(
            {
                STATION: self.names.gather(pl.Series(taken.station, dtype=pl.UInt32)),
                RECEIVED_AT: pl.Series(taken.received_ms, dtype=pl.Int64).cast(TIMESTAMP_DTYPE),
                RAW: pl.Series(text, dtype=pl.String),
            },
            schema=FRAME_COLUMNS,
        )
        del taken, text  # the frame holds its own copy of the text now
        early_frame = pl.DataFrame(
            {
                STATION: self.names.gather(pl.Series([r[0] for r in early], dtype=pl.UInt32)),
                RECEIVED_AT: pl.Series([r[1] for r in early], dtype=pl.Int64).cast(TIMESTAMP_DTYPE),
                RAW: [r[2] for r in early],
                REASON: [r[3] for r in early],
            },
            schema=REJECTED_COLUMNS,
        )
        checked, chunk = await asyncio.to_thread(self._write, frames, early_frame)
        if chunk is not None:
            self.report.chunks.append(chunk)
        self._count(frames, early_frame, checked)

    def _write(self, frames: pl.DataFrame, early: pl.DataFrame) -> tuple[CheckedFrames, str | None]:
        """Check a batch, write its chunk atomically, append its rejects (worker thread)."""
        # Judged in slices: the decode's working memory follows CHECK_ROWS, not the flush size.
        parts = [
            check_frames(frames.slice(start, CHECK_ROWS), self.uuids)
            for start in range(0, frames.height, CHECK_ROWS)
        ]
        checked = CheckedFrames(
            readings=pl.concat([p.readings for p in parts] or [pl.DataFrame(schema=CHUNK_COLUMNS)]),
            rejected=pl.concat([*(p.rejected for p in parts), early]),
            heartbeats=_sum_counts([p.heartbeats for p in parts]),
            hellos=_sum_counts([p.hellos for p in parts]),
        )
        rejected = checked.rejected
        if rejected.height:
            self.dead_letter_path.parent.mkdir(parents=True, exist_ok=True)
            lines = rejected.select(
                STATION,
                pl.col(RECEIVED_AT).dt.strftime("%Y-%m-%dT%H:%M:%S%.3fZ"),
                REASON,
                RAW,
            )
            with open(self.dead_letter_path, "ab") as handle:
                lines.write_ndjson(handle)
            self.report.dead_letter = str(self.dead_letter_path)
        if checked.readings.is_empty():
            return checked, None
        path = self.landing_dir / landing.chunk_name("capture")
        landing.write_atomically(checked.readings, path)
        return checked, path.name

    def _count(self, frames: pl.DataFrame, early: pl.DataFrame, checked: CheckedFrames) -> None:
        """Per-station counts from the batch (never per message on the hot path)."""
        index = {state.name: state for state in self.report.stations}
        arrived = pl.concat(
            [frames.select(STATION, RECEIVED_AT), early.select(STATION, RECEIVED_AT)]
        )
        per_station = arrived.group_by(STATION).agg(
            pl.len(), pl.col(RECEIVED_AT).max().dt.epoch("ms").alias("last")
        )
        for name, count, last in per_station.iter_rows():
            state = index[name]
            state.frames += count
            state.last_frame_ms = max(state.last_frame_ms or 0, last)
        for name, count in checked.readings.group_by(STATION).len().iter_rows():
            index[name].readings += count
        for name, count in checked.heartbeats.iter_rows():
            index[name].heartbeats += count
        for name, count in checked.hellos.iter_rows():
            index[name].hellos += count
        by_reason = (
            checked.rejected.select(STATION, reason_class(pl.col(REASON)).alias("class"))
            .group_by(STATION, "class")
            .len()
        )
        for name, reason, count in by_reason.iter_rows():
            index[name].rejects[reason] += count


def _sum_counts(parts: list[pl.DataFrame]) -> pl.DataFrame:
    counts = (
        pl.concat(parts) if parts else pl.DataFrame(schema={STATION: pl.String, "count": pl.UInt32})
    )
    return counts.group_by(STATION).agg(pl.col("count").sum())


class Finished(NamedTuple):
    """How `run_capture` ended: the report, and the signal that ended it (to pass on)."""

    report: CaptureReport
    interruption: BaseException | None = None


class Terminated(BaseException):
    """SIGTERM where nobody (Prefect's bridge) turns it into an exception already."""


def run_capture(
    stations: list[Station],
    landing_dir: Path,
    dead_letter_dir: Path,
    *,
    duration: float | None,
    flush_seconds: float,
    flush_rows: int,
) -> Finished:
    """Run a capture; SIGINT/SIGTERM end it after the final flush.

    The capture's event loop runs in its own thread, so a signal's exception (Prefect's
    `TerminationSignal` from its SIGTERM bridge, `KeyboardInterrupt`) is raised here in
    the waiting main thread, never in the middle of the receive loop. The handlers stay
    Prefect's: its runner can still acknowledge a cancellation before it sends SIGTERM.
    The caller publishes the report, then re-raises `interruption` so the run ends the
    way the signal says (Cancelled, Crashed, exit 130).
    """
    capture = Capture(
        stations,
        landing_dir,
        dead_letter_dir,
        flush_seconds=flush_seconds,
        flush_rows=flush_rows,
    )
    outcome: list[CaptureReport | BaseException] = []
    started, done = threading.Event(), threading.Event()
    loop_box: list[asyncio.AbstractEventLoop] = []

    async def main() -> CaptureReport:
        loop_box.append(asyncio.get_running_loop())
        started.set()
        return await capture.run(duration)

    def in_thread() -> None:
        try:
            # uvloop: the event loop's own cost per message is most of a capture's CPU
            # (bench_capture, 1,000 stations x 10 Hz: 39.7 % of a core against 45.2 % on
            # asyncio's loop, same run, alternating).
            outcome.append(uvloop.run(main()))
        except BaseException as exc:  # handed to the main thread
            outcome.append(exc)
        finally:
            started.set()
            done.set()

    thread = threading.Thread(target=in_thread, name="capture", daemon=True)
    interruption: BaseException | None = None
    with _sigterm_raises():
        thread.start()
        while not done.is_set():  # an Event: a signal's exception can break a join's state
            try:
                done.wait(0.5)
            except BaseException as exc:  # a signal's exception: stop, flush, pass it on
                interruption = interruption or exc
                started.wait()
                for loop in loop_box:
                    with contextlib.suppress(RuntimeError):  # the loop has already ended
                        loop.call_soon_threadsafe(capture.stop, _signal_name(exc))
    thread.join()
    [result] = outcome
    if isinstance(result, BaseException):
        raise result
    return Finished(result, interruption)


def _signal_name(exc: BaseException) -> str:
    if isinstance(exc, KeyboardInterrupt):
        return "SIGINT"
    number = getattr(exc, "signal", signal.SIGTERM)
    return signal.Signals(number).name


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    """Make SIGTERM an exception in the main thread if nobody has (outside a flow)."""
    previous: Any = None
    try:
        if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
            previous = signal.signal(signal.SIGTERM, _raise_terminated)
    except ValueError:  # not the main thread: signals are the caller's business
        pass
    try:
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _raise_terminated(_signum: int, _frame: FrameType | None) -> None:
    raise Terminated(signal.SIGTERM)


def _iso_dt(moment: datetime | None) -> str:
    return moment.isoformat(timespec="seconds") if moment else "?"


def _iso(ms: int | None) -> str:
    if ms is None:
        return ""
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
