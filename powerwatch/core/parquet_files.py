"""A Parquet file written whole or not at all (`powerwatch.core.files.atomic_path`): the
landing chunks, the statements. Apart from `files` because it needs polars, and `files`
must stay stdlib only."""

from __future__ import annotations

import os
import re
from pathlib import Path

import polars as pl
import polars.exceptions

from powerwatch.core.files import atomic_path


def write_parquet_atomically(frame: pl.DataFrame, path: Path) -> Path:
    """Write Parquet under a hidden name, fsync, then rename into place.

    A failed write (disk full) removes its temporary file and raises `OSError`
    (polars reports a full disk as a `ComputeError`: it is turned back into one).
    """
    with atomic_path(path) as tmp:
        try:
            frame.write_parquet(tmp, compression="zstd")
        except polars.exceptions.PolarsError as exc:
            raise _as_os_error(exc, tmp) from exc
    return path


def _as_os_error(exc: polars.exceptions.PolarsError, path: Path) -> BaseException:
    found = _OS_ERROR.search(str(exc))
    if found is None:
        return exc
    code = int(found.group(1))
    return OSError(code, os.strerror(code), str(path))


_OS_ERROR = re.compile(r"\(os error (\d+)\)")
