"""Legacy log files (spec/legacy-logs.md) shaped like the samples, of any size.

    python -m bench.legacy_gen T 1000000 /tmp/monitor.log [--stations 50] [--gz]

Every station reports once per second (`bench.data.readings`), interleaved as
the old monitor wrote them. On top of the readings, as real files have them:
- format T: a connection warning, an error and its stack-trace line after every
  100th reading (3 % non-data lines), `N/A` values;
- every format: one line in 1,000 that does not parse (`P2=ERR`, a JSON line cut
  short, `abc` in a CSV cell).
Lines are built with polars expressions, a million at a time (no per-line
Python), so a 2 GB file takes seconds to write.
"""

from __future__ import annotations

import argparse
import gzip
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import polars as pl

from bench.data import readings
from powerwatch.legacy.formats import UTF8_BOM, Format
from powerwatch.legacy.parsers import T_LABELS
from schemas.channels import CHANNEL_KEYS

PIECE_SECONDS = 20_000  # seconds of readings built at once (x stations lines)
NOISE_EVERY = 100  # format T: non-data lines after every n-th reading
BAD_EVERY = 1_000  # one reading line in n does not parse
CSV_COLUMNS: tuple[str, ...] = ("timestamp", "station", *CHANNEL_KEYS)
UNKNOWN_STATION = "LEGACY-RETIRED"  # a station the registry does not hold
ISO_MS = "%Y-%m-%dT%H:%M:%S%.3fZ"


@dataclass
class Generated:
    """What was written: the counts a correct import must reproduce."""

    path: Path
    lines: int = 0
    readings: int = 0  # reading lines that parse (valid, registered stations)
    bad: int = 0  # reading lines that do not parse
    unknown: int = 0  # reading lines that parse, of a station not in the registry
    non_data: int = 0


def _values(key: str) -> pl.Expr:
    return pl.col(key).cast(pl.String)


def _bad(index: pl.Expr) -> pl.Expr:
    return (index % BAD_EVERY) == BAD_EVERY // 2


def text_lines(frame: pl.DataFrame, offset: int, tz: str = "Asia/Bangkok") -> pl.DataFrame:
    """Format T: `line` (text) and `_order`, reading lines and the non-data lines between."""
    index = pl.int_range(offset, offset + frame.height, dtype=pl.Int64)
    local = pl.col("timestamp").dt.convert_time_zone(tz).dt.strftime("%Y-%m-%d %H:%M:%S%.3f")
    parts: list[pl.Expr | str] = [local, pl.lit(" [INFO] ["), pl.col("station")]
    parts.append(pl.lit("] Active Power (W):"))
    for label, key in T_LABELS.items():
        if label == "TV5":
            parts.append(pl.lit(" | MUX (kWh):"))
        value = _values(key).fill_null("N/A")
        if key == "activePower2":
            value = pl.when(_bad(index)).then(pl.lit("ERR")).otherwise(value)
        parts += [pl.lit(f" {label}="), value]
    reading = frame.select(
        pl.concat_str(parts).alias("line"),
        (index * 4).alias("_order"),
        local.alias("_local"),
        pl.col("station"),
    )
    noisy = reading.filter((pl.col("_order") // 4) % NOISE_EVERY == NOISE_EVERY - 1)
    noise = [
        noisy.select(
            pl.concat_str(
                pl.col("_local"), pl.lit(f" [{level}] ["), pl.col("station"), pl.lit(f"] {text}")
            ).alias("line"),
            pl.col("_order") + step,
        )
        for step, level, text in (
            (1, "WARN", "WebSocket closed (code 1006), reconnecting in 5s"),
            (2, "ERROR", "Error: read ECONNRESET"),
        )
    ]
    trace = noisy.select(
        pl.lit("    at TCP.onStreamRead (node:internal/stream_base_commons:217:20)").alias("line"),
        pl.col("_order") + 3,
    )
    return pl.concat([reading.drop("_local", "station"), *noise, trace]).sort("_order")


def json_lines(frame: pl.DataFrame, offset: int) -> pl.DataFrame:
    """Format J: ISO timestamps, every 10th as epoch milliseconds; nulls as JSON null."""
    index = pl.int_range(offset, offset + frame.height, dtype=pl.Int64)
    iso = pl.concat_str(pl.lit('"'), pl.col("timestamp").dt.strftime(ISO_MS), pl.lit('"'))
    epoch = pl.col("timestamp").dt.epoch("ms").cast(pl.String)
    stamp = pl.when(index % 10 == 3).then(epoch).otherwise(iso)
    values = pl.struct(list(CHANNEL_KEYS)).struct.json_encode()
    line = pl.concat_str(
        pl.lit('{"station":"'),
        pl.col("station"),
        pl.lit('","timestamp":'),
        stamp,
        pl.lit(',"readings":'),
        values,
        pl.lit("}"),
    )
    line = pl.when(_bad(index)).then(line.str.slice(0, 40)).otherwise(line)
    return frame.select(line.alias("line"), index.alias("_order"))


def csv_lines(
    frame: pl.DataFrame, offset: int, columns: tuple[str, ...] = CSV_COLUMNS
) -> pl.DataFrame:
    """Format C rows in the order of `columns` (the header is written once, by `generate`)."""
    index = pl.int_range(offset, offset + frame.height, dtype=pl.Int64)
    cells: list[pl.Expr] = []
    for key in columns:
        if key == "timestamp":
            cells.append(pl.col("timestamp").dt.strftime(ISO_MS))
            continue
        if key == "station":
            cells.append(pl.col("station"))
            continue
        value = _values(key).fill_null("")
        if key == "activePower1":
            value = pl.when(_bad(index)).then(pl.lit("abc")).otherwise(value)
        cells.append(value)
    return frame.select(pl.concat_str(cells, separator=",").alias("line"), index.alias("_order"))


def _with_nulls(frame: pl.DataFrame) -> pl.DataFrame:
    """activePower3 absent in one reading of 97, as in the samples."""
    # Keyed by station and time, so that overlapping files agree on every reading.
    key = pl.col("timestamp").dt.epoch("ms").hash(3) ^ pl.col("station").hash(5)
    return frame.with_columns(
        pl.when(key % 97 == 0).then(None).otherwise(pl.col("activePower3")).alias("activePower3")
    )


def _open(path: Path, gz: bool) -> IO[bytes]:
    if gz:
        return gzip.open(path, "wb", compresslevel=1)  # type: ignore[return-value]
    return path.open("wb")


def _unknown(index: pl.Expr, every: int) -> pl.Expr:
    """One reading in `every` is of a station the registry does not hold (never a bad one)."""
    return (index % every) == every // 3 if every else pl.lit(False)


def _out_of_order(piece: pl.DataFrame, every: int) -> pl.DataFrame:
    """Every `every`-th line moved a few lines later: lines out of time order."""
    if not every:
        return piece
    at = pl.int_range(0, pl.len(), dtype=pl.Int64)
    key = at.cast(pl.Float64) + pl.when(at % every == every // 2).then(5.5).otherwise(0.0)
    return piece.with_columns(key.alias("_moved")).sort("_moved").drop("_moved")


def generate(
    path: Path,
    fmt: Format,
    lines: int,
    *,
    stations: int = 50,
    gz: bool = False,
    start_second: int = 0,
    bom: bool = False,
    crlf: bool = False,
    trailing_blank: int = 0,
    unknown_every: int = 0,
    shuffle_every: int = 0,
    csv_columns: tuple[str, ...] = CSV_COLUMNS,
    seed: int = 0,
) -> Generated:
    """Write a log of about `lines` reading lines (T adds its non-data lines on top).

    As real files have them, on request: a UTF-8 byte-order mark, CRLF line ends,
    blank lines at the end, one reading in `unknown_every` of a station not in the
    registry, every `shuffle_every`-th line a few lines out of time order, CSV
    columns in another order. Reading lines are of `stations` stations, once a
    second each from `start_second` on (`bench.data.readings`): two files whose
    seconds overlap hold the same readings (rotation).
    """
    out = Generated(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    end = b"\r\n" if crlf else b"\n"
    with _open(path, gz) as handle:
        if bom:
            handle.write(UTF8_BOM)
        if fmt == "C":
            handle.write(",".join(csv_columns).encode() + end)
            out.lines += 1
            out.non_data += 1
        written = 0
        second = start_second
        while written < lines:
            seconds = min(PIECE_SECONDS, -(-(lines - written) // stations))
            frame = _with_nulls(readings(stations, seconds, start_second=second, seed=seed)).head(
                lines - written
            )
            index = pl.int_range(written, written + frame.height)
            if unknown_every:
                frame = frame.with_columns(
                    pl.when(_unknown(index, unknown_every))
                    .then(pl.lit(UNKNOWN_STATION))
                    .otherwise(pl.col("station"))
                    .alias("station")
                )
            if fmt == "T":
                piece = text_lines(frame, written)
            elif fmt == "J":
                piece = json_lines(frame, written)
            else:
                piece = csv_lines(frame, written, csv_columns)
            piece = _out_of_order(piece.select("line"), shuffle_every)
            piece.write_csv(
                handle,
                include_header=False,
                quote_style="never",
                line_terminator=end.decode(),
            )
            bad, unknown = frame.select(
                _bad(index).sum().alias("bad"),
                (_unknown(index, unknown_every) & ~_bad(index)).sum().alias("unknown"),
            ).row(0)
            out.lines += piece.height
            out.non_data += piece.height - frame.height
            out.bad += bad
            out.unknown += unknown
            out.readings += frame.height - bad - unknown
            written += frame.height
            second += seconds
        handle.write(end * trailing_blank)
        out.lines += trailing_blank
        out.non_data += trailing_blank
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("format", choices=("T", "J", "C"))
    parser.add_argument("lines", type=int)
    parser.add_argument("path", type=Path)
    parser.add_argument("--stations", type=int, default=50)
    parser.add_argument("--gz", action="store_true")
    args = parser.parse_args()
    made = generate(args.path, args.format, args.lines, stations=args.stations, gz=args.gz)
    print(f"{made.path}: {made.lines:,} lines, {made.readings:,} readings, {made.bad:,} bad")


if __name__ == "__main__":
    main()
