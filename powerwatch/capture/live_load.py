"""A capture loads the chunks it has just landed itself: readings queryable in seconds.

    flush ──write chunk into landing/──> LiveLoader.submit ──(its own thread)──> load(chunk)

The load is the scheduled load's own code path (`tasks.load.load_chunk_task`'s function,
`powerwatch.load.chunks.load_chunk`): the chunk is claimed (renamed into `landing/.claimed/`),
the ledger is asked "committed already?" under the database's write lock, then it is
stored and moved to `loaded/`. So a capture's load, another capture window's, the
scheduled sweep (`load-chunks`) and an operator's `powerwatch load` can all reach for one
chunk at once and exactly one of them takes it; the others skip it (`taken`).

Landing stays first and the contract is unchanged: a chunk is complete in `landing/`
before anyone loads it. Whatever the live load does not take (the database locked past
its busy timeout, down, the schema not current, the run ended with chunks queued) simply
stays in `landing/` and the scheduled load, every 4 minutes, sweeps it. The live load never
retries and never fails the capture: after a failure it pauses for `PAUSE_SECONDS`
(chunks landed meanwhile are left to the sweep) and then tries again, so a database that
is down costs one attempt per pause, not one per chunk. See docs/design.md ("Live load").

Only this thread touches the database in a capture process while the run lasts, and only
through ADBC: a SQLAlchemy (stdlib `sqlite3`) connection opened and closed beside an
ADBC one would drop its locks (docs/design.md, "SQLite and ADBC in one process"); the
flow checks the schema before the run starts, not here.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from powerwatch.load.chunks import TAKEN, ChunkReport

logger = logging.getLogger(__name__)

PAUSE_SECONDS = 10.0  # after a failed load or schema check: chunks meanwhile go to the sweep


@dataclass
class LiveCounts:
    """What a run's live load did, for its artifact and summary line."""

    loaded: int = 0  # chunks this run loaded itself
    inserted: int = 0  # readings those loads stored
    taken: int = 0  # chunks another loader (the sweep, another window) took first
    left: int = 0  # chunks left in landing/ for the sweep (a failure, a pause, the run's end)
    unreadable: int = 0  # chunks set aside into failed/ (as the sweep would have)
    last_error: str = ""


class LiveLoader:
    """Loads submitted chunks one at a time, oldest first, in a daemon thread.

    `load` is the sweep's per-chunk function (it claims, stores under the ledger, moves).
    """

    def __init__(
        self, load: Callable[[Path], ChunkReport], *, pause_seconds: float = PAUSE_SECONDS
    ) -> None:
        self._load = load
        self.pause_seconds = pause_seconds
        self.counts = LiveCounts()
        self._queue: queue.Queue[Path | None] = queue.Queue()
        self._paused_until = 0.0
        self._deadline: float | None = None  # set by `close`: queued chunks after it are left
        # Started with the first chunk: a run that never lands one leaves no thread behind.
        self._thread = threading.Thread(target=self._work, name="live-load", daemon=True)

    def submit(self, chunk: Path) -> None:
        """A chunk this run has just landed (complete, in landing/)."""
        self._queue.put(chunk)
        if self._thread.ident is None and self._deadline is None:
            self._thread.start()

    def close(self, wait: float) -> LiveCounts:
        """Stop taking chunks; load what is queued for at most `wait` seconds, leave the rest.

        A load in progress when the time is up is not interrupted: it commits or (the
        process ends first) rolls back, and its claim is put back by the next sweep.
        """
        self._deadline = time.monotonic() + wait
        self._queue.put(None)
        if self._thread.ident is None:  # never started: nothing was submitted
            return self.counts
        self._thread.join(max(wait, 0.0))
        if self._thread.is_alive():
            logger.warning("live load: a load still runs at the end of the capture; it finishes "
                           "on its own or the next sweep takes the chunk back")  # fmt: skip
        return self.counts

    def _work(self) -> None:
        while (chunk := self._queue.get()) is not None:
            now = time.monotonic()
            if (self._deadline is not None and now >= self._deadline) or now < self._paused_until:
                self.counts.left += 1
                continue
            try:
                report = self._load(chunk)
            except Exception as exc:  # never fails the capture: the chunk waits for the sweep
                self._failed(chunk, exc)
                continue
            if report.status == TAKEN:
                self.counts.taken += 1
            elif report.status == "unreadable":
                self.counts.unreadable += 1
                logger.error("live load: %s set aside: %s", chunk.name, report.error)
            else:
                self.counts.loaded += 1
                self.counts.inserted += report.inserted
                if self.counts.last_error:
                    logger.warning("live load: loading again (%s)", chunk.name)
                    self.counts.last_error = ""

    def _failed(self, chunk: Path, exc: Exception) -> None:
        self.counts.left += 1
        self._paused_until = time.monotonic() + self.pause_seconds
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if text != self.counts.last_error:  # one line per kind of failure, not per chunk
            logger.warning(
                "live load: %s left in landing/ for the scheduled load (%s); next try in %g s",
                chunk.name,
                text,
                self.pause_seconds,
            )
        self.counts.last_error = text
