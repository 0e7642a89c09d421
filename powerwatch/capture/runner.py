"""A capture run: every registered station at once, flushed into landing chunks.

    StationClient x N ──append──> FrameBuffer ──take (every flush_seconds or flush_rows)──┐
                                                                                          │
    landing/capture-….parquet  <── check_frames (polars, in a worker thread) <────────────┘
    dead-letter/capture-….jsonl  (station, received_at, reason, raw: what an operator reads)

A chunk is written under a hidden name and renamed when complete (`write_parquet_atomically`):
complete or invisible. Chunk names are unique per process and flush, so two captures
running at once never touch each other's files. The run ends at `duration`, on
`stop()` (the signal handlers of `run_capture`), and in every case closes the
connections, drains what the stations had already sent, and flushes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import errno
import logging
import math
import os
import shutil
import signal
import threading
from array import array
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any, NamedTuple

import polars as pl
import pyarrow as pa
import uvloop

from powerwatch.capture import health
from powerwatch.capture.connections import FrameBuffer, StationClient, StationState, Taken
from powerwatch.capture.frames import (
    CHUNK_COLUMNS,
    DEAD_LETTER_COLUMNS,
    FRAME_COLUMNS,
    RAW_BASE64,
    REJECTED_COLUMNS,
    STATION,
    UNJUDGEABLE,
    UUID,
    CheckedFrames,
    check_frames,
    reason_class,
)
from powerwatch.capture.live_load import LiveCounts, LiveLoader
from powerwatch.core.errors import DiskFull, InputError, JobError, StorageError, from_os_error
from powerwatch.core.faults import fault_point
from powerwatch.core.parquet_files import write_parquet_atomically
from powerwatch.load import landing
from schemas.jsonlines import RAW
from schemas.reading import REASON, RECEIVED_AT, TIMESTAMP_DTYPE
from schemas.registry import Station

logger = logging.getLogger(__name__)

CHECK_ROWS = 10_000  # frames judged at once in a flush
NEARLY_FULL = 1 << 20  # bytes free under which a failed chunk write is taken as a full disk
STOP_GRACE = 1.0  # seconds, after the closing handshakes (themselves at most CLOSE_TIMEOUT),
# for the receive loops to end before they are cancelled: a stop flushes well within 5 s
LIVE_DRAIN_SECONDS = 10.0  # a run ended by its duration loads its queued chunks this long;
# ended by a signal, STOP_GRACE: what is left waits in landing/ for the scheduled load


@dataclass
class CaptureReport:
    """One run's account: per station counts, the chunks written, why it ended."""

    started_at: datetime
    ended_at: datetime | None = None
    ended_by: str = ""  # duration | SIGINT | SIGTERM | stop
    chunks: list[str] = field(default_factory=list)
    dead_letter: str | None = None  # the run's dead-letter file, if anything was rejected
    stations: list[StationState] = field(default_factory=list)
    flush_failures: int = 0  # flushes whose write failed (their frames were kept and retried)
    last_flush_error: str = ""
    unwritten: int = 0  # frames still unwritten when the run ended (its last write failed)
    failure: JobError | None = None  # set with `unwritten`: what the run failed with
    live: LiveCounts | None = None  # what the run's own load of its chunks did (live_load)

    @property
    def crashes(self) -> int:
        return sum(s.crashes for s in self.stations)

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
        """Per station, the main table (the artifact's and the CLI's): what an operator
        looks at first, narrow enough for the UI at 1,440 px; the rest is in `details`."""
        return [
            {
                "station": s.name,
                "over the window": s.window_state(),
                "readings": s.readings,
                "rejected": sum(s.rejects.values()),
                "down s": round(s.down_seconds, 1),
                "last frame": _iso(s.last_frame_ms),
            }
            for s in self.stations
        ]

    def details(self) -> list[dict[str, object]]:
        """Per station, the counters behind the main table (the artifact's second table)."""
        return [
            {
                "station": s.name,
                "frames": s.frames,
                "heartbeats": s.heartbeats,
                "hellos": s.hellos,
                "reconnects": s.reconnects,
                "gaps": s.gaps,
                "failed attempts": s.failed_attempts,
                "crashes": s.crashes,
            }
            for s in self.stations
        ]

    def live_line(self) -> str:
        live = self.live
        if live is None:
            return "Loaded live: off (the scheduled load takes every chunk)."
        return (
            f"Loaded live: {live.loaded} chunks ({live.inserted} readings stored); taken by "
            f"another loader: {live.taken}; left for the scheduled load: {live.left}"
            + (f" (last: {live.last_error})" if live.last_error else "")
            + (f"; set aside: {live.unreadable}" if live.unreadable else "")
            + "."
        )

    def markdown(self) -> str:
        """The run's Prefect artifact: totals, the per-station table, the counters, rejects
        and errors by station (as a list: reasons and errors are long), the chunks."""
        notes = [
            f"- **{s.name}**: "
            + "; ".join(
                ([f"rejected {_reasons(s.rejects)}"] if s.rejects else [])
                + ([f"last error: {s.last_error}"] if s.last_error else [])
            )
            for s in self.stations
            if s.rejects or s.last_error
        ]
        lines = [
            f"Capture {_iso_dt(self.started_at)} .. {_iso_dt(self.ended_at)}, ended by "
            f"{self.ended_by}: {self.frames} frames, {self.readings} readings, rejected "
            f"{self.rejects or 'none'}.",
            "",
            f"Station task crashes: {self.crashes}. Failed flushes: {self.flush_failures}"
            + (f" (last: {self.last_flush_error})" if self.flush_failures else "")
            + (f". NOT WRITTEN: {self.unwritten} frames" if self.unwritten else "")
            + ".",
            "",
            *_markdown_table(self.rows()),
            "",
            "Counters per station:",
            "",
            *_markdown_table(self.details()),
            "",
            *(["Rejects and errors per station:", "", *notes, ""] if notes else []),
            f"Dead letters: `{self.dead_letter or 'none'}`.",
            "",
            self.live_line(),
            "",
            f"Chunks written ({len(self.chunks)}):",
            *(f"- `{name}`" for name in self.chunks),
        ]
        return "\n".join(lines)


@dataclass
class _Batch:
    """One flush's frames, judged; held in memory until its chunk and dead letters are written."""

    checked: CheckedFrames
    rows: int  # frames taken from the buffer (what `FrameBuffer.held` counts)
    chunk_written: bool = False
    letters_written: bool = False


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
        data_dir: Path | None = None,
        silent_after: float = 120.0,
        stall_after: float = 300.0,
        counts_seconds: float = 60.0,
        loader: LiveLoader | None = None,
        disk_guard: Callable[[], JobError | None] | None = None,
    ) -> None:
        if not stations:
            raise InputError("the registry has no stations to capture from")
        if isinstance(flush_rows, bool) or not isinstance(flush_rows, int) or flush_rows < 1:
            raise InputError(f"capture flush rows must be a whole number >= 1, not {flush_rows!r}")
        if not (isinstance(flush_seconds, int | float) and 0 < flush_seconds < math.inf):
            raise InputError(f"capture flush seconds must be a number > 0, not {flush_seconds!r}")
        self.landing_dir = landing_dir
        self.dead_letter_path = dead_letter_dir / landing.chunk_name("capture").replace(
            ".parquet", ".jsonl"
        )
        self.flush_seconds = float(flush_seconds)
        self.flush_rows = flush_rows
        self.names = pl.Series(STATION, [s.name for s in stations], pl.String)
        self.uuids = pl.DataFrame({STATION: self.names, UUID: [s.uuid for s in stations]})
        self.report = CaptureReport(
            started_at=datetime.now(UTC), stations=[StationState(s.name, s.url) for s in stations]
        )
        self._stop_reason: str | None = None
        self._buffer: FrameBuffer | None = None
        self._pending: list[_Batch] = []  # judged, not yet (completely) written, oldest first
        self._failing = False  # the last flush failed
        self._last_error: Exception | None = None
        # Live health (powerwatch.capture.health): what this run saw since its last tick.
        self.data_dir = data_dir  # None: no health (unit tests)
        self.silent_after, self.stall_after = silent_after, stall_after
        self.counts_seconds = counts_seconds
        self._seen = {s.name: health.Seen() for s in stations}
        self._totals = {s.name: [0, 0] for s in stations}  # since the last counts event
        self._run_id = landing.chunk_name("run").removesuffix(".parquet")
        self.loader = loader  # None: chunks wait in landing/ for the scheduled load
        # The disk guard (powerwatch.core.diskguard): below its threshold a periodic flush
        # writes nothing and keeps its frames in memory; the run's last flush writes anyway
        # (the reserve is there for that: better than losing what was received).
        self.disk_guard = disk_guard

    def _health_tick(self, counts: bool) -> None:
        """Fold what this run saw into the shared health state; emit its changes (thread)."""
        assert self.data_dir is not None
        seen, self._seen = self._seen, {name: health.Seen() for name in self._seen}
        for name, view in seen.items():
            self._totals[name][0] += view.readings
            self._totals[name][1] += view.rejects
        try:
            changes = health.fold(
                self.data_dir, seen, run=self._run_id,
                silent_after=self.silent_after, stall_after=self.stall_after,
            )  # fmt: skip
        except OSError as exc:
            logger.error("health: cannot update the shared state: %s", _failure(exc))
            return
        health.emit(changes)
        if counts:
            state = health.read_state(self.data_dir)
            states: dict[str, int] = {}
            for name in self._seen:
                value = state["stations"].get(name, {}).get("state", "waiting")
                states[value] = states.get(value, 0) + 1
            health.emit_counts(self._run_id, self._totals, states)
            self._totals = {name: [0, 0] for name in self._seen}

    async def _health_loop(self) -> None:
        loop = asyncio.get_running_loop()
        next_counts = loop.time() + self.counts_seconds
        while True:
            await asyncio.sleep(health.TICK_SECONDS)
            counts = loop.time() >= next_counts
            if counts:
                next_counts += self.counts_seconds
            await asyncio.to_thread(self._health_tick, counts)

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
        tasks = [loop.create_task(c.supervise(), name=f"station {c.state.name}") for c in clients]
        watcher = (
            None if self.data_dir is None else loop.create_task(self._health_loop(), name="health")
        )
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
                buffer.wanted.clear()  # the conditions above decide; no spinning on it
        finally:
            if watcher is not None:
                watcher.cancel()
                await asyncio.gather(watcher, return_exceptions=True)
            buffer.drain()
            await self._close(clients, tasks)
            await self._flush(buffer, final=True)
            if self.data_dir is not None:  # the run's last readings count for the next
                await asyncio.to_thread(self._health_tick, True)
            if self.loader is not None:
                drain = LIVE_DRAIN_SECONDS if self._stop_reason == "duration" else STOP_GRACE
                self.report.live = await asyncio.to_thread(self.loader.close, drain)
            unwritten = sum(batch.rows for batch in self._pending)
            if unwritten:
                self.report.unwritten += unwritten
                logger.error(
                    "capture: %d frames could not be written before the end of the run (%s)",
                    unwritten,
                    self.report.last_flush_error,
                )
            if self.report.unwritten:
                self.report.failure = _job_error(self._last_error, self.report.unwritten)
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
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        for client, outcome in zip(clients, outcomes, strict=True):
            if isinstance(outcome, Exception):  # `supervise` catches these: a bug if seen
                client.state.crashes += 1
                logger.error(
                    "station %s: task failed while stopping: %r", client.state.name, outcome
                )

    async def _flush(self, buffer: FrameBuffer, final: bool = False) -> None:
        """Take what the buffer holds, judge it, then write every batch not yet written.

        A batch leaves memory only once its chunk and its dead letters are durably written.
        A failed write (disk full, I/O error) keeps it, and every later batch, for the
        next flush: logged (one line each time) and counted, never dropped. So does a
        periodic flush while the disk guard refuses (the buffer's bound then holds the
        stations back, as on a full disk).
        """
        taken = buffer.take()
        judged = False
        if taken.ends or taken.early_rejects:
            rows = len(taken.ends) + len(taken.early_rejects)
            try:
                self._pending.append(await asyncio.to_thread(self._judge, taken))
                judged = True
            except Exception as exc:  # cannot happen short of memory: said, counted, not silent
                buffer.release(rows)
                self.report.unwritten += rows
                self._last_error = exc
                logger.error("capture: %d frames lost, cannot be judged (%s)", rows, _failure(exc))
        del taken
        try:
            if judged:
                fault_point("capture.batch_taken")
            refusal = None if final or self.disk_guard is None else self.disk_guard()
            if refusal is not None and self._pending:
                raise refusal
            while self._pending:
                batch = self._pending[0]
                await asyncio.to_thread(self._write, batch)
                self._pending.pop(0)
                self._count(batch.checked)
                buffer.release(batch.rows)
        except Exception as exc:  # kept and retried, reported, never dropped
            self.report.flush_failures += 1
            self.report.last_flush_error = _failure(exc)
            self._last_error = exc
            logger.error(
                "capture: flush failed (%s); %d frames kept in memory, retried at the next flush",
                self.report.last_flush_error,
                sum(batch.rows for batch in self._pending),
            )
        if self.report.flush_failures and not self._pending and self._failing:
            logger.warning("capture: writing works again; every frame held is written")
        self._failing = bool(self._pending)

    def _judge(self, taken: Taken) -> _Batch:
        """The taken frames as a judged batch (worker thread); counts what arrived."""
        early = taken.early_rejects
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
        del text  # the frame holds its own copy of the text now
        early_frame = pl.DataFrame(
            {
                STATION: self.names.gather(pl.Series([r.station for r in early], dtype=pl.UInt32)),
                RECEIVED_AT: pl.Series([r.received_ms for r in early], dtype=pl.Int64).cast(
                    TIMESTAMP_DTYPE
                ),
                RAW: [r.raw for r in early],
                REASON: [r.reason for r in early],
                RAW_BASE64: pl.Series([r.raw_base64 for r in early], dtype=pl.String),
            },
            schema=DEAD_LETTER_COLUMNS,
        )
        # Judged in slices: the decode's working memory follows CHECK_ROWS, not the flush size.
        parts = [
            _check_slice(frames.slice(start, CHECK_ROWS), self.uuids)
            for start in range(0, frames.height, CHECK_ROWS)
        ]
        checked = CheckedFrames(
            readings=pl.concat([p.readings for p in parts] or [pl.DataFrame(schema=CHUNK_COLUMNS)]),
            rejected=pl.concat(
                [
                    *(
                        p.rejected.with_columns(pl.lit(None, pl.String).alias(RAW_BASE64))
                        for p in parts
                    ),
                    early_frame,
                ]
            ),
            heartbeats=_sum_counts([p.heartbeats for p in parts]),
            hellos=_sum_counts([p.hellos for p in parts]),
        )
        self._count_arrivals(
            pl.concat(
                [frames.select(STATION, RECEIVED_AT), early_frame.select(STATION, RECEIVED_AT)]
            )
        )
        return _Batch(checked, rows=len(taken.ends) + len(early))

    def _write(self, batch: _Batch) -> None:
        """Write a batch's chunk atomically, then append its dead letters (worker thread).

        Each step is done once: a retry after a failure redoes only what is not written.
        """
        checked = batch.checked
        if not batch.chunk_written:
            if not checked.readings.is_empty():
                path = self.landing_dir / landing.chunk_name("capture")
                _write_chunk(checked.readings, path)
                self.report.chunks.append(path.name)
                if self.loader is not None:  # complete in landing/: now it may be loaded
                    self.loader.submit(path)
            batch.chunk_written = True
            fault_point("capture.chunk_written")
        if not batch.letters_written:
            rejected = checked.rejected
            if rejected.height:
                lines = rejected.select(
                    STATION,
                    pl.col(RECEIVED_AT).dt.strftime("%Y-%m-%dT%H:%M:%S%.3fZ"),
                    REASON,
                    RAW,
                    RAW_BASE64,
                )
                _append_durably(self.dead_letter_path, lines.write_ndjson().encode())
                self.report.dead_letter = str(self.dead_letter_path)
            batch.letters_written = True
            fault_point("capture.dead_letters_written")

    def _count_arrivals(self, arrived: pl.DataFrame) -> None:
        index = {state.name: state for state in self.report.stations}
        per_station = arrived.group_by(STATION).agg(
            pl.len(), pl.col(RECEIVED_AT).max().dt.epoch("ms").alias("last")
        )
        for name, count, last in per_station.iter_rows():
            state = index[name]
            state.frames += count
            state.last_frame_ms = max(state.last_frame_ms or 0, last)
            seen = self._seen[name]
            seen.last_frame_ms = max(seen.last_frame_ms or 0, last)

    def _count(self, checked: CheckedFrames) -> None:
        """Per-station counts of a written batch (never per message on the hot path)."""
        index = {state.name: state for state in self.report.stations}
        per_station = checked.readings.group_by(STATION).agg(
            pl.len(), pl.col(RECEIVED_AT).max().dt.epoch("ms").alias("last")
        )
        for name, count, last in per_station.iter_rows():
            index[name].readings += count
            seen = self._seen[name]
            seen.readings += count
            seen.last_reading_ms = max(seen.last_reading_ms or 0, last)
        for name, count in checked.rejected.group_by(STATION).len().iter_rows():
            self._seen[name].rejects += count
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


def _check_slice(frames: pl.DataFrame, uuids: pl.DataFrame) -> CheckedFrames:
    """`check_frames`, and if it fails on the slice (anything polars or a rule did not
    foresee), frame by frame: a frame that still cannot be judged is rejected with why."""
    try:
        return check_frames(frames, uuids)
    except Exception as exc:  # judged one by one below
        logger.warning(
            "capture: a batch could not be judged at once (%s); frame by frame", _failure(exc)
        )
    parts: list[CheckedFrames] = []
    for row in range(frames.height):
        frame = frames.slice(row, 1)
        try:
            parts.append(check_frames(frame, uuids))
        except Exception as exc:  # this frame's reason
            rejected = frame.with_columns(
                pl.lit(f"{UNJUDGEABLE}: cannot be judged ({_failure(exc)})").alias(REASON)
            ).select(list(REJECTED_COLUMNS))
            empty = pl.DataFrame(schema={STATION: pl.String, "count": pl.UInt32})
            parts.append(CheckedFrames(pl.DataFrame(schema=CHUNK_COLUMNS), rejected, empty, empty))
    return CheckedFrames(
        readings=pl.concat([p.readings for p in parts] or [pl.DataFrame(schema=CHUNK_COLUMNS)]),
        rejected=pl.concat([p.rejected for p in parts] or [pl.DataFrame(schema=REJECTED_COLUMNS)]),
        heartbeats=_sum_counts([p.heartbeats for p in parts]),
        hellos=_sum_counts([p.hellos for p in parts]),
    )


def _write_chunk(readings: pl.DataFrame, path: Path) -> None:
    """`write_parquet_atomically`, leaving no temporary file behind when it fails.

    polars' Parquet writer reports a full disk as its own error, and not always with
    the OS's words ("Invalid thrift: transport error" when the file's footer fails): a
    failure while the file system is (nearly) full is said as the `OSError` it is.
    """
    try:
        write_parquet_atomically(readings, path)
    except BaseException as exc:
        for temporary in path.parent.glob(f".{path.name}*.tmp"):
            temporary.unlink(missing_ok=True)
        if isinstance(exc, Exception) and not isinstance(exc, OSError) and _nearly_full(path):
            raise OSError(errno.ENOSPC, f"No space left on device ({_failure(exc)})") from exc
        raise


def _nearly_full(path: Path) -> bool:
    try:
        usage = shutil.disk_usage(path.parent)
    except OSError:
        return False
    return usage.free < NEARLY_FULL


def _append_durably(path: Path, data: bytes) -> None:
    """Append `data` whole and fsync it, or leave the file as it was (a failed append is
    cut off again: the next flush's retry never follows a half line)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        except BaseException:
            os.ftruncate(fd, size)
            if size == 0:
                path.unlink(missing_ok=True)
            raise
    finally:
        os.close(fd)


def _job_error(exc: Exception | None, unwritten: int) -> JobError:
    """The run's failure when frames stayed unwritten: disk full or a storage error."""
    doing = f"capture could not write {unwritten} frames"
    if isinstance(exc, OSError):
        return from_os_error(exc, doing)
    text = _failure(exc) if exc is not None else "unknown error"
    if "No space left on device" in text:  # polars' writer wraps the OSError in its own error
        return DiskFull(f"{doing}: disk full: {text}")
    return StorageError(f"{doing}: {text}")


def _failure(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


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
    data_dir: Path | None = None,
    silent_after: float = 120.0,
    stall_after: float = 300.0,
    counts_seconds: float = 60.0,
    loader: LiveLoader | None = None,
    disk_guard: Callable[[], JobError | None] | None = None,
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
        data_dir=data_dir,
        silent_after=silent_after,
        stall_after=stall_after,
        counts_seconds=counts_seconds,
        loader=loader,
        disk_guard=disk_guard,
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

    # The caller's context goes with it: the health events the capture emits reach the
    # Prefect server of the caller's settings (a flow run's), not a temporary one.
    context = contextvars.copy_context()
    thread = threading.Thread(target=context.run, args=(in_thread,), name="capture", daemon=True)
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


def _reasons(rejects: Mapping[str, int]) -> str:
    return ", ".join(f"{reason}: {count}" for reason, count in sorted(rejects.items()))


def _markdown_table(rows: list[dict[str, object]]) -> list[str]:
    if not rows:
        return []
    header = list(rows[0])
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(str(v) for v in row.values()) + " |" for row in rows),
    ]
