"""Progress of a long job, told to whoever shows it: no Prefect here.

A job knows its total up front and reports how far it is after each part it finished:
a log migration in bytes of its files (as stored: compressed ones count their
compressed size, which is what is read) and lines; an archive in days and readings; a
backup in bytes copied; a restore's replay in chunks and readings. The unit of the
total (`unit`) and of the running count (`counted`) are the job's. `JobProgress` turns
that into updates at a bounded rate for its listeners: the run's Prefect progress
artifact (`tasks/progress.py`), and a terminal bar (`TerminalBar`, rich) that the CLI
adds only when its output is a terminal, so CI logs and pipes stay clean. A listener
that fails never stops the job.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO, Any, Final

# At most one update a second to each listener (a Prefect update is an API call);
# the last one (100 %) is always sent.
MIN_INTERVAL_S: Final = 1.0

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Update:
    done_bytes: int
    total_bytes: int
    lines: int  # lines read so far, all files
    files_done: int
    files: int
    current: str  # name of the file being read ("" when finished)
    seconds: float  # since the job started
    unit: str = "bytes"  # of done/total: "bytes", or a count such as "days", "chunks"
    counted: str = "lines"  # what `lines` counts (its rate is shown): "readings", ...

    @property
    def percent(self) -> float:
        if self.total_bytes <= 0:
            return 100.0
        return min(100.0, 100.0 * self.done_bytes / self.total_bytes)


Listener = Callable[[Update], None]


class JobProgress:
    """Bytes done across the files of one job, for listeners, at most once per
    `min_interval` seconds each (and always at the end). Thread-safe."""

    def __init__(
        self,
        sizes: list[int],
        listeners: list[Listener] | None = None,
        *,
        min_interval: float = MIN_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
        unit: str = "bytes",
        counted: str = "lines",
    ) -> None:
        self.unit, self.counted = unit, counted
        self.total = sum(sizes)
        self.files = len(sizes)
        self.listeners = list(listeners or [])
        self.min_interval = min_interval
        self._clock = clock
        self._started = clock()
        self._lock = threading.Lock()
        self._finished_bytes = 0  # bytes of the files done
        self._file_bytes = 0  # bytes read of the current file
        self._finished_lines = 0
        self._file_lines = 0
        self._files_done = 0
        self._current = ""
        self._last_sent = float("-inf")
        self.sent = 0  # updates handed to the listeners (each listener got each one)

    def start_file(self, name: str) -> None:
        with self._lock:
            self._current = name
            self._file_bytes = self._file_lines = 0

    def advance(self, file_bytes: int, file_lines: int) -> None:
        """How far the current file is (bytes of it read, lines of it read)."""
        with self._lock:
            self._file_bytes, self._file_lines = file_bytes, file_lines
        self._maybe_send(final=False)

    def finish_file(self, size: int, lines: int) -> None:
        """The current file is done (imported, skipped or failed): all its bytes count."""
        with self._lock:
            self._finished_bytes += size
            self._finished_lines += lines
            self._file_bytes = self._file_lines = 0
            self._files_done += 1
            self._current = ""
        self._maybe_send(final=self._files_done >= self.files)

    def finish(self) -> None:
        """The job is over (also one with nothing to do): the last update, at once."""
        self._maybe_send(final=True)

    def snapshot(self) -> Update:
        with self._lock:
            return Update(
                done_bytes=self._finished_bytes + self._file_bytes,
                total_bytes=self.total,
                lines=self._finished_lines + self._file_lines,
                files_done=self._files_done,
                files=self.files,
                current=self._current,
                seconds=self._clock() - self._started,
                unit=self.unit,
                counted=self.counted,
            )

    def _maybe_send(self, *, final: bool) -> None:
        now = self._clock()
        with self._lock:
            if not final and now - self._last_sent < self.min_interval:
                return
            self._last_sent = now
        update = self.snapshot()
        self.sent += 1
        for listener in self.listeners:
            try:
                listener(update)
            except Exception as exc:  # progress is a courtesy: the job goes on
                _log.warning("progress listener %r failed: %s", listener, exc)


# --------------------------------------------------------------------------- terminal

# The CLI's bar for this process's jobs (None: not a terminal, or not asked for).
# Flows add it to their job's listeners when set; a flow run on a worker has none.
_terminal: TerminalBar | None = None


def terminal_listener() -> TerminalBar | None:
    return _terminal


def wants_bar(stream: IO[str] | Any = None) -> bool:
    """A bar only on a terminal: never in CI logs, pipes or files."""
    stream = sys.stdout if stream is None else stream
    return bool(getattr(stream, "isatty", lambda: False)())


@contextmanager
def terminal_bar(description: str, *, enabled: bool | None = None) -> Iterator[TerminalBar | None]:
    """While inside: a rich progress bar (how far, rate, ETA) on stderr for this
    process's job, if stdout is a terminal (or `enabled`); removed when done."""
    global _terminal
    if not (wants_bar() if enabled is None else enabled):
        yield None
        return
    bar = TerminalBar(description)
    _terminal = bar
    try:
        with bar:
            yield bar
    finally:
        _terminal = None


class TerminalBar:
    """A `rich.progress` bar: how far (bytes, or the job's unit), its rate, ETA, and the
    part being worked on."""

    def __init__(self, description: str, file: IO[str] | None = None) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TaskProgressColumn,
            TextColumn,
            TimeRemainingColumn,
        )

        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[amount]}"),
            TextColumn("{task.fields[rate]}"),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[current]}"),
            console=Console(file=file or sys.stderr),
            transient=True,
        )
        self._bytes = DownloadColumn()
        self.task = self.progress.add_task(description, total=None, rate="", current="", amount="")

    def __enter__(self) -> TerminalBar:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def __call__(self, update: Update) -> None:
        rate = update.lines / update.seconds if update.seconds > 0 else 0.0
        self.progress.update(
            self.task,
            total=update.total_bytes,
            completed=update.done_bytes,
            rate=f"{rate:,.0f} {update.counted}/s",
            current=f"{update.files_done}/{update.files} {update.current}".rstrip(),
        )
        task = self.progress.tasks[0]
        amount = (
            str(self._bytes.render(task))
            if update.unit == "bytes"
            else f"{update.done_bytes:,}/{update.total_bytes:,} {update.unit}"
        )
        self.progress.update(self.task, amount=amount)
