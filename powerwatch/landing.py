"""The landing zone (spec/landing-chunks.md) as a visible state machine of folders.

    landing/x.parquet --load commits--> loaded/x.parquet
                      \\-unreadable---> failed/x.parquet + failed/x.parquet.reason.txt
    rejected rows of x ----------------> quarantine/x.parquet (with a `reason` column)

Every move is an atomic rename within one file system; a writer makes a file
under a hidden/temporary name and renames it when complete, so a reader never
sees half a file.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import polars.exceptions
import pyarrow as pa
import pyarrow.parquet as pq

from powerwatch.errors import ChunkError
from schemas.channels import LANDING_COLUMNS, RECEIVED_AT, TIMESTAMP_DTYPE


def list_chunks(landing: Path) -> list[Path]:
    """Complete chunks, oldest first (by modification time, then name)."""
    if not landing.is_dir():
        return []
    found = [p for p in landing.iterdir() if p.suffix == ".parquet" and not p.name.startswith(".")]
    return sorted(found, key=lambda p: (p.stat().st_mtime_ns, p.name))


def chunk_name(producer: str) -> str:
    """A name unique across concurrent producers, sortable by time."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    return f"{producer}-{stamp}-{os.getpid()}-{uuid.uuid4().hex[:8]}.parquet"


def write_atomically(frame: pl.DataFrame, path: Path) -> Path:
    """Write Parquet under a hidden name, fsync, then rename into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    frame.write_parquet(tmp, compression="zstd")
    with open(tmp, "rb") as handle:
        os.fsync(handle.fileno())
    tmp.replace(path)
    return path


def file_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


# Rows per slice when streaming a chunk: bounds a load's memory. Each slice is copied a few
# times on its way in (validation, key split, sort), and the loader's ReadAhead holds one
# more. Measured (bench_load, site install): at 100 k rows a 1 M-row load peaks at 340-390 MB
# with the imports, and loads and re-loads 5-14 % faster than at 50 k (per-slice costs: one
# pandera call, a few small queries), which would save ~30 MB.
SLICE_ROWS = 100_000


def read_chunk(path: Path) -> pl.DataFrame:
    """The whole chunk, conformed (for small chunks and tests)."""
    return pl.concat([pl.DataFrame(schema=LANDING_COLUMNS), *iter_chunk(path)], how="diagonal")


def iter_chunk(path: Path, rows: int | None = None) -> Iterator[pl.DataFrame]:
    """Stream a chunk in slices conformed to the contract, or raise `ChunkError` with the reason.

    Tolerated (lossless): integer channels (cast to float64), timestamps of
    another unit or zone (converted to ms UTC; a zone-less one is taken as UTC).
    Anything else that differs from the contract makes the chunk unreadable.
    """
    try:
        parquet = pq.ParquetFile(path)
        casts = _conforming_casts(path, pl.from_arrow(parquet.schema_arrow.empty_table()))
        for batch in parquet.iter_batches(batch_size=rows or SLICE_ROWS):
            frame = pl.from_arrow(batch)
            assert isinstance(frame, pl.DataFrame)
            yield frame.with_columns(casts) if casts else frame
    except (OSError, pa.ArrowException, polars.exceptions.PolarsError) as exc:
        raise ChunkError(f"{path.name}: not a readable Parquet file ({_line(exc)})") from exc


def _conforming_casts(path: Path, empty: pl.DataFrame | pl.Series) -> list[pl.Expr]:
    assert isinstance(empty, pl.DataFrame)
    missing = [name for name in LANDING_COLUMNS if name not in empty.columns]
    if missing:
        raise ChunkError(f"{path.name}: missing columns {', '.join(missing)}")
    problems: list[str] = []
    casts: list[pl.Expr] = []
    for name, expected in LANDING_COLUMNS.items():
        actual = empty.schema[name]
        if actual == expected:
            continue
        if expected == pl.Float64() and (actual.is_numeric() or actual == pl.Null()):
            casts.append(pl.col(name).cast(pl.Float64))
        elif expected == TIMESTAMP_DTYPE and isinstance(actual, pl.Datetime):
            casts.append(_as_utc_ms(name, actual))
        elif name == "station" and actual in (pl.Categorical(), pl.Null()):
            casts.append(pl.col(name).cast(pl.String))
        else:
            problems.append(f"{name} is {actual}, expected {expected}")
    if RECEIVED_AT in empty.columns:
        actual = empty.schema[RECEIVED_AT]
        if isinstance(actual, pl.Datetime):
            casts.append(_as_utc_ms(RECEIVED_AT, actual))
        else:
            problems.append(f"{RECEIVED_AT} is {actual}, expected {TIMESTAMP_DTYPE}")
    if problems:
        raise ChunkError(f"{path.name}: wrong column types: {'; '.join(problems)}")
    return casts


def _as_utc_ms(name: str, dtype: pl.Datetime) -> pl.Expr:
    column = pl.col(name)
    if dtype.time_zone is None:
        column = column.dt.replace_time_zone("UTC")
    return column.dt.convert_time_zone("UTC").dt.cast_time_unit("ms")


def move(path: Path, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / path.name
    path.replace(target)
    return target


def set_aside(path: Path, folder: Path, reason: str) -> Path:
    """Move an unreadable chunk aside whole, with its reason in a text file beside it."""
    target = move(path, folder)
    target.with_name(target.name + ".reason.txt").write_text(reason + "\n", encoding="utf-8")
    return target


def _line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
