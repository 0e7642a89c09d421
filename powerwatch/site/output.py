"""Writing readings for people and programs: CSV (legacy format C), JSON lines, a text table."""

from __future__ import annotations

import io
import sys
from collections.abc import Iterable
from typing import TextIO

import polars as pl

from schemas.channels import CHANNEL_KEYS

CSV_COLUMNS = ("timestamp", "station", *CHANNEL_KEYS)
CSV_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S%.3fZ"


def write_csv(frames: Iterable[pl.DataFrame], out: TextIO | None = None) -> int:
    """Format C of spec/legacy-logs.md: header once, UTC ms timestamps, empty cell = NULL.

    polars prints floats in their shortest round-trip form, so every value reads
    back equal.
    """
    out = sys.stdout if out is None else out  # looked up per call: callers redirect it
    out.write(",".join(CSV_COLUMNS) + "\n")
    count = 0
    for frame in frames:
        buffer = io.StringIO()
        frame.select(CSV_COLUMNS).write_csv(
            buffer, include_header=False, datetime_format=CSV_TIME_FORMAT, null_value=""
        )
        out.write(buffer.getvalue())
        count += frame.height
    return count


def write_json_lines(frames: Iterable[pl.DataFrame], out: TextIO | None = None) -> int:
    out = sys.stdout if out is None else out  # looked up per call: callers redirect it
    count = 0
    for frame in frames:
        text = frame.with_columns(pl.col("timestamp").dt.strftime(CSV_TIME_FORMAT)).write_ndjson()
        out.write(text)
        count += frame.height
    return count


# Decimals a table shows: what a person reads (a reading's watts to the milliwatt);
# CSV and JSON keep every digit, so their values read back equal.
TABLE_DECIMALS = 3
FORMATS = ("table", "csv", "json")


def write_frame(frame: pl.DataFrame, fmt: str, out: TextIO | None = None) -> None:
    """One frame in a query command's `--format`: a table for people, or CSV / JSON lines
    whose values read back equal (floats in shortest round-trip form, times as
    `CSV_TIME_FORMAT` in UTC, empty cell / null = NULL)."""
    out = sys.stdout if out is None else out
    if fmt == "table":
        write_table(frame, out)
        return
    text = frame.with_columns(pl.col(pl.Datetime).dt.strftime(CSV_TIME_FORMAT))
    if fmt == "csv":
        out.write(text.write_csv(null_value=""))
    else:
        out.write(text.write_ndjson() if text.height else "")


def write_table(frame: pl.DataFrame, out: TextIO | None = None) -> None:
    """For people: floats rounded to `TABLE_DECIMALS` (no `32351.545000000002`)."""
    out = sys.stdout if out is None else out  # looked up per call: callers redirect it
    frame = frame.with_columns(pl.col(pl.Float32, pl.Float64).round(TABLE_DECIMALS))
    with pl.Config(
        tbl_rows=-1,
        tbl_cols=-1,
        tbl_width_chars=250,
        tbl_hide_dataframe_shape=True,
        tbl_hide_column_data_types=True,
        fmt_str_lengths=80,
        fmt_float="full",
    ):
        out.write(f"{frame}\n")
