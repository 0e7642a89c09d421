"""Overlapping the two halves of a load on a 2-core machine."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
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
