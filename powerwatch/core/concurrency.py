"""Overlapping database work with CPU work on a 2-core machine.

Why threads help here: SQLite/PostgreSQL inside ADBC, Parquet encoding in
pyarrow and polars all release the GIL, so a thread that reads while the main
thread encodes uses the second core. Both helpers keep a fixed number of items
in flight: memory grows by those items, never with the input.
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from itertools import islice
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class ReadAhead(Generic[T]):
    """The items of an iterator, produced in a background thread from construction on,
    at most `depth` ahead of the consumer.

    The database stores one part (its driver releases the GIL) while polars
    parses and validates the next: the two halves of a legacy import or of a
    chunk's load overlap on two cores. An exception of the producer is raised in
    the consumer where it occurred; `close()` (always call it, or use `with`)
    stops the producer.
    """

    def __init__(self, items: Iterator[T], depth: int = 1) -> None:
        self._items = items
        self._handoff: queue.Queue[tuple[bool, object]] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._worker = threading.Thread(target=self._produce, name="read-ahead", daemon=True)
        self._worker.start()

    def _offer(self, item: tuple[bool, object]) -> bool:
        while not self._stop.is_set():
            try:
                self._handoff.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def _produce(self) -> None:
        try:
            for item in self._items:
                if not self._offer((False, item)):
                    return
        except BaseException as exc:  # handed to the consumer, raised there
            self._offer((True, exc))
            return
        self._offer((True, None))

    def __iter__(self) -> Iterator[T]:
        while True:
            done, value = self._handoff.get()
            if done:
                if isinstance(value, BaseException):
                    raise value
                return
            yield value  # type: ignore[misc]

    def close(self) -> None:
        self._stop.set()
        self._worker.join()

    def __enter__(self) -> ReadAhead[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def map_ahead(fn: Callable[[T], R], items: Iterable[T], workers: int) -> Iterator[R]:
    """`fn` over `items` in `workers` threads, yielded in the items' order, with at most
    `workers` results computed ahead of the one being consumed."""
    source = iter(items)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="map-ahead") as pool:
        pending: deque[Future[R]] = deque(pool.submit(fn, item) for item in islice(source, workers))
        while pending:
            result = pending.popleft().result()
            for item in islice(source, 1):
                pending.append(pool.submit(fn, item))
            yield result
