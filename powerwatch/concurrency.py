"""Overlapping database work with CPU work on a 2-core machine.

Why threads help here: SQLite/PostgreSQL inside ADBC, Parquet encoding in
pyarrow and polars all release the GIL, so a thread that reads while the main
thread encodes uses the second core. Both helpers keep a fixed number of items
in flight: memory grows by those items, never with the input.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from itertools import islice
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")
_END = object()


def read_ahead(items: Iterator[T]) -> Iterator[T]:
    """Yield `items`, producing the next one in a background thread meanwhile.

    Why: a load alternates CPU work that releases the GIL (Parquet decoding,
    polars validation) with database work that does too (SQLite inside ADBC);
    run one slice ahead, the two overlap on two cores. At most one item is in
    flight, so memory grows by one item, not with the input. An exception raised
    while producing an item is raised here, where that item would have been.
    """
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="read-ahead") as pool:
        pending = pool.submit(next, items, _END)
        while True:
            item = pending.result()
            if item is _END:
                return
            pending = pool.submit(next, items, _END)
            yield item  # type: ignore[misc]


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
