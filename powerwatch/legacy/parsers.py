"""Parsing legacy log lines into readings, block by block, vectorised with polars.

Only what cannot be parsed is rejected here (a value that is not a number, a
line that is not JSON, a time stamp that does not parse, a reading without its
station ...). Validity rules (ranges, the future, station names, registry) are
applied later to `ParsedBatch.readings` by `schemas.reading.split_valid`.

Every line of a block is counted exactly once: non-data, reading or rejected.
"""

from __future__ import annotations

import zoneinfo
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Final

import polars as pl

from powerwatch.core.errors import InputError
from powerwatch.legacy.formats import (
    FORMATS,
    SAMPLE_LINES,
    Format,
    LegacyLogError,
    csv_header_fields,
    is_csv_header,
)
from powerwatch.legacy.lines import ReadPosition, iter_line_blocks
from schemas.jsonlines import (
    LINE,
    RAW,
    JsonShape,
    decode_json_lines,
)
from schemas.jsonlines import quoted as _quoted
from schemas.jsonlines import utc_timestamp as _utc_timestamp
from schemas.reading import (
    ACTIVE_CHANNELS,
    CHANNEL_KEYS,
    LANDING_COLUMNS,
    MUX_CHANNELS,
    REASON,
)

DEFAULT_TZ: Final = "Asia/Bangkok"  # where the old monitor ran: format T's local time
READING_COLUMNS: Final[dict[str, pl.DataType]] = {**LANDING_COLUMNS, LINE: pl.Int64()}
REJECTED_COLUMNS: Final[dict[str, pl.DataType]] = {
    LINE: pl.Int64(),
    RAW: pl.String(),
    REASON: pl.String(),
}

MISSING_STATION: Final = "missing station"
MISSING_TIMESTAMP: Final = "missing timestamp"
MISSING_READINGS: Final = "missing readings"
MALFORMED_LINE: Final = "malformed reading line"

# Format T names the channels the old way: P1..P6 are activePower1..6 and the
# four multiplex meters TV5, MCOT, PRD, TPBS are muxPower1..4.
T_ACTIVE_LABELS: Final = tuple(f"P{i}" for i in range(1, len(ACTIVE_CHANNELS) + 1))
T_MUX_LABELS: Final = ("TV5", "MCOT", "PRD", "TPBS")
T_LABELS: Final = dict(
    zip(
        (*T_ACTIVE_LABELS, *T_MUX_LABELS),
        (c.key for c in (*ACTIVE_CHANNELS, *MUX_CHANNELS)),
        strict=True,
    )
)
T_MARKER: Final = "Active Power"
T_NO_VALUE: Final = "N/A"
T_TIME_FORMAT: Final = "%Y-%m-%d %H:%M:%S%.f"

_ISO_NAIVE_FORMAT: Final = "%Y-%m-%dT%H:%M:%S%.f"


@dataclass(frozen=True)
class ParsedBatch:
    """One block of lines, parsed: lines == non_data + readings.height + rejected.height."""

    first_line: int
    lines: int
    non_data: int
    readings: pl.DataFrame  # READING_COLUMNS: LANDING_COLUMNS + line
    rejected: pl.DataFrame  # REJECTED_COLUMNS: line, raw, reason
    # The block's own lines (line, raw, problem): lets a caller quote a line that a
    # later rule (validation, the registry) rejects, without keeping `raw` per reading.
    block: pl.DataFrame = field(default_factory=pl.DataFrame, repr=False)

    def raw_lines(self, numbers: pl.Series) -> pl.Series:
        """The text of the given line numbers of this batch (in the order given)."""
        return self.block[RAW].gather(numbers.cast(pl.Int64) - self.first_line)


def iter_batches(
    path: Path,
    fmt: Format,
    *,
    tz: str = DEFAULT_TZ,
    batch_lines: int = 500_000,
    position: ReadPosition | None = None,
) -> Iterator[ParsedBatch]:
    """Parse `path` as format `fmt`, `batch_lines` lines at a time, in bounded memory.

    `tz` is the zone of format T's local time stamps; `position` follows the bytes
    of the file read so far. Raises `InputError` at once
    for an unknown zone; `LegacyLogError` (while iterating) for a CSV file without
    a usable header or a damaged gzip stream.
    """
    _check_arguments(fmt, tz, batch_lines)  # at once, not when iterating
    jobs = iter_block_jobs(path, fmt, tz=tz, batch_lines=batch_lines, position=position)
    return (job() for job in jobs)


def iter_block_jobs(
    path: Path,
    fmt: Format,
    *,
    tz: str = DEFAULT_TZ,
    batch_lines: int = 500_000,
    position: ReadPosition | None = None,
) -> Iterator[Callable[[], ParsedBatch]]:
    """`iter_batches`, split in two: the file is read into blocks of lines here, in
    order; each block's parsing is a job (a function without arguments) that may run in
    any thread, in any order, and gives what `iter_batches` gives for that block.

    Reading lines is cheap and sequential; parsing is most of the work and each
    block's is independent once a CSV header was found (the blocks up to and including
    the header's are parsed here, in order). Same errors as `iter_batches`.
    """
    _check_arguments(fmt, tz, batch_lines)
    blocks = iter_line_blocks(path, batch_lines, position=position)
    if fmt == "T":
        yield from (partial(parse_text_block, block, tz) for block in blocks)
        return
    if fmt == "J":
        yield from (partial(parse_json_block, block) for block in blocks)
        return
    parser = _CsvParser(path.name)
    for block in blocks:
        if parser.header is None:
            done = parser.parse(block)  # finds the header: in order
            yield partial(_done, done)
        else:
            yield partial(parser.parse, block)  # the header known: no state changes
    if parser.header is None and parser.looked_at:
        raise LegacyLogError(f"{path.name}: no CSV header naming timestamp and station")


def _done(batch: ParsedBatch) -> ParsedBatch:
    return batch


def check_time_zone(tz: str) -> None:
    """Raise `InputError` unless `tz` is an IANA zone name (e.g. Asia/Bangkok)."""
    try:
        zoneinfo.ZoneInfo(tz)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
        raise InputError(f"unknown time zone {tz!r}") from exc


def _check_arguments(fmt: Format, tz: str, batch_lines: int) -> None:
    if fmt not in FORMATS:
        raise InputError(f"unknown legacy format {fmt!r}")
    check_time_zone(tz)
    if batch_lines < 1:
        raise InputError("batch_lines must be at least 1")


# --------------------------------------------------------------------------- shared

# A check: (condition on a parsed row, the reason text where it holds). Reason
# texts are built only for the rows that fail, never for the good ones.
Check = tuple[pl.Expr, pl.Expr]


def _finish(
    block: pl.DataFrame, parsed: pl.DataFrame, checks: list[Check], fatal: Check | None = None
) -> ParsedBatch:
    """Split the parsed candidate rows of `block` into readings and rejected.

    `parsed` holds line, raw, station, timestamp and the channels; a row failing
    a check is rejected with all its reasons joined by "; ", a row failing the
    `fatal` check with that reason alone. Lines of `block` not in `parsed` are
    non-data.
    """
    conditions = [condition.fill_null(False) for condition, _ in checks]
    if fatal is not None:
        conditions.append(fatal[0].fill_null(False))
    failed = (
        parsed.select(pl.any_horizontal(conditions)).to_series()
        if conditions
        else pl.repeat(False, parsed.height, eager=True)
    )
    good = parsed.select(list(READING_COLUMNS)).filter(~failed)
    bad = parsed.filter(failed)
    reason: pl.Expr = pl.lit(None, pl.String)
    if bad.height:
        joined = pl.concat_str(
            [
                pl.when(condition).then(text)
                for condition, (_, text) in zip(conditions[: len(checks)], checks, strict=True)
            ],
            separator="; ",
            ignore_nulls=True,
        )
        reason = pl.when(joined != "").then(joined).otherwise(pl.lit("does not parse"))
        if fatal is not None:
            reason = pl.when(conditions[-1]).then(fatal[1]).otherwise(reason)
    bad = bad.with_columns(reason.alias(REASON))
    return ParsedBatch(
        first_line=int(block[LINE][0]) if block.height else 0,
        lines=block.height,
        non_data=block.height - parsed.height,
        readings=good.cast(READING_COLUMNS),  # type: ignore[arg-type]
        rejected=bad.select([pl.col(n).cast(t) for n, t in REJECTED_COLUMNS.items()]),
        block=block,
    )


def _problem_check() -> Check:
    """The reader's verdict on the line's bytes (not UTF-8, too long)."""
    return pl.col("problem").is_not_null(), pl.col("problem")


def _station_check(station: pl.Expr) -> Check:
    return station.is_null() | (station == ""), pl.lit(MISSING_STATION)


def _timestamp_checks(text: pl.Expr, parsed: pl.Expr) -> list[Check]:
    missing = text.is_null() | (text.str.strip_chars() == "")
    naive = (
        text.str.strip_chars()
        .str.replace(" ", "T", literal=True, n=1)
        .str.to_datetime(_ISO_NAIVE_FORMAT, strict=False, time_unit="ms")
    )
    unparsed = (
        pl.when(naive.is_not_null())
        .then(pl.concat_str(pl.lit("timestamp without UTC offset: "), _quoted(text)))
        .otherwise(pl.concat_str(pl.lit("timestamp does not parse: "), _quoted(text)))
    )
    return [(missing, pl.lit(MISSING_TIMESTAMP)), (~missing & parsed.is_null(), unparsed)]


def _number_check(text: pl.Expr, value: pl.Expr, reason: pl.Expr) -> Check:
    """Fails where there is a text that did not convert to a number."""
    return text.is_not_null() & value.is_null(), reason


# --------------------------------------------------------------------------- format T

# The shape of every monitor 1.x-2.x reading line, as space-separated tokens:
# date time [LEVEL] [station] Active Power (W): P1=.. .. P6=.. | MUX (kWh): TV5=.. .. TPBS=..
# (splitting on spaces is faster than one regex with a dozen capture groups).
_T_TOKENS: Final = (
    "date",
    "time",
    "level",
    "station",
    "Active",
    "Power",
    "(W):",
    *T_ACTIVE_LABELS,
    "|",
    "MUX",
    "(kWh):",
    *T_MUX_LABELS,
)
_T_POSITION: Final = {token: index for index, token in enumerate(_T_TOKENS)}


def _t_canonical(tokens: pl.Expr) -> list[pl.Expr]:
    """ok (the line has the canonical shape), ts, station and each label's value text."""

    def token(name: str) -> pl.Expr:
        return tokens.list.get(_T_POSITION[name], null_on_oob=True)

    fixed = ("Active", "Power", "(W):", "|", "MUX", "(kWh):")
    ok = pl.all_horizontal(
        tokens.list.len() == len(_T_TOKENS),
        *[token(word) == word for word in fixed],
        token("level").str.contains(r"^\[[A-Z]+\]$"),
        token("station").str.contains(r"^\[[^\] ]+\]$"),
        *[token(label).str.starts_with(f"{label}=") for label in T_LABELS],
    )
    return [
        ok.fill_null(False).alias("_header_ok"),
        pl.concat_str(token("date"), token("time"), separator=" ").alias("ts"),
        token("station").str.slice(1).str.head(-1).alias("station"),
        *[token(label).str.slice(len(label) + 1).alias(label) for label in T_LABELS],
    ]


# Any other `Active Power` line: labels in any order, any of them absent.
_T_GENERAL: Final = (
    r"^\s*(?<ts>.*?) \[(?<level>[A-Za-z]+)\] (?:\[(?<station>[^\]]*)\] )?"
    r"Active Power \(W\):(?<values>.*)$"
)


def parse_text_block(block: pl.DataFrame, tz: str) -> ParsedBatch:
    """Format T: `Active Power` lines are readings, every other line is non-data."""
    candidates = block.filter(pl.col(RAW).str.contains(T_MARKER, literal=True))
    fields = candidates.with_columns(pl.col(RAW).str.split(" ").alias("_tokens")).select(
        LINE, RAW, "problem", *_t_canonical(pl.col("_tokens"))
    )
    other = fields.filter(~pl.col("_header_ok"))
    if other.height:
        values = pl.col("_g").struct.field("values")
        general = other.select(
            LINE, RAW, "problem", pl.col(RAW).str.extract_groups(_T_GENERAL).alias("_g")
        ).select(
            LINE,
            RAW,
            "problem",
            pl.col("_g").struct.field("ts"),
            pl.col("_g").struct.field("station"),
            *[values.str.extract(rf"(?:^|\s){label}=(\S*)", 1).alias(label) for label in T_LABELS],
            values.is_not_null().alias("_header_ok"),
        )
        fields = pl.concat(
            [fields.filter(pl.col("_header_ok")), general.select(fields.columns)],
            how="vertical_relaxed",
        ).sort(LINE)
    local = pl.col("ts").str.to_datetime(T_TIME_FORMAT, strict=False, time_unit="ms")
    utc = local.dt.replace_time_zone(tz, ambiguous="earliest", non_existent="null")
    parsed = fields.with_columns(
        local.alias("_local"),
        utc.dt.convert_time_zone("UTC").alias("timestamp"),
        *[
            pl.col(label).cast(pl.Float64, strict=False).alias(key)
            for label, key in T_LABELS.items()
        ],
    )
    ts = pl.col("ts")
    checks: list[Check] = [
        _problem_check(),
        _station_check(pl.col("station")),
        (
            pl.col("_local").is_null(),
            pl.concat_str(pl.lit("timestamp does not parse: "), _quoted(ts)),
        ),
        (
            pl.col("_local").is_not_null() & pl.col("timestamp").is_null(),
            pl.concat_str(pl.lit(f"non-existent local time in {tz}: "), _quoted(ts)),
        ),
        *[
            (
                # "N/A" converts to null like any non-number, but means "no value".
                pl.col(key).is_null() & pl.col(label).is_not_null() & (pl.col(label) != T_NO_VALUE),
                pl.concat_str(pl.lit(f"{label}="), pl.col(label), pl.lit(" is not a number")),
            )
            for label, key in T_LABELS.items()
        ],
    ]
    fatal = (~pl.col("_header_ok"), pl.coalesce(pl.col("problem"), pl.lit(MALFORMED_LINE)))
    return _finish(block, parsed, checks, fatal)


# --------------------------------------------------------------------------- format J

J_SHAPE: Final = JsonShape(strings=("station",), channels="readings")


def parse_json_block(block: pl.DataFrame) -> ParsedBatch:
    """Format J: every non-blank line is one JSON reading; blank lines are non-data."""
    candidates = block.filter(pl.col(RAW).str.strip_chars() != "")
    fields = decode_json_lines(candidates, J_SHAPE)
    parsed = fields.rename({"timestamp": "_ts"}).with_columns(
        _utc_timestamp(pl.col("_ts")).alias("timestamp")
    )
    checks: list[Check] = [
        _problem_check(),
        _station_check(pl.col("station")),
        *_timestamp_checks(pl.col("_ts"), pl.col("timestamp")),
        (~pl.col("has_readings"), pl.lit(MISSING_READINGS)),
        (pl.col("value_reason").is_not_null(), pl.col("value_reason")),
    ]
    fatal = (
        pl.col("json_error").is_not_null(),
        pl.coalesce(pl.col("problem"), pl.col("json_error")),
    )
    return _finish(block, parsed, checks, fatal)


# --------------------------------------------------------------------------- format C


class _CsvParser:
    """Format C: a header line, then one reading per line.

    The header is the first line naming (at least) `timestamp` and `station`
    among the first `SAMPLE_LINES` non-blank lines; lines before it, blank lines
    and repetitions of the header are non-data. Columns may come in any order;
    unknown columns are ignored, missing channel columns are null, an empty cell
    is null.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.header: list[str] | None = None
        self.header_line = ""
        self.looked_at = 0

    def parse(self, block: pl.DataFrame) -> ParsedBatch:
        rest = block if self.header is not None else self._find_header(block)
        if self.header is None:
            return _finish(block, pl.DataFrame(schema={**READING_COLUMNS, RAW: pl.String}), [])
        header = self.header
        stripped = pl.col(RAW).str.strip_chars()
        candidates = rest.filter((stripped != "") & (stripped != self.header_line))
        cells = pl.col("_cells")
        # Quotes and blanks around cells are dropped; most exports have none to drop.
        padded = bool(candidates[RAW].str.contains_any(['"', " ", "\t"]).any())

        def cell(index: int) -> pl.Expr:
            text = cells.list.get(index, null_on_oob=True)
            if padded:
                text = text.str.strip_chars(' \t"')
            return pl.when(text != "").then(text)

        fields = candidates.with_columns(pl.col(RAW).str.split(",").alias("_cells")).with_columns(
            cells.list.len().alias("_count"),
            *[
                cell(i).alias(f"_c_{name}")
                for i, name in enumerate(header)
                if name in LANDING_COLUMNS
            ],
        )
        present = set(header)
        texts = {
            key: (pl.col(f"_c_{key}") if key in present else pl.lit(None, pl.String))
            for key in CHANNEL_KEYS
        }
        parsed = fields.with_columns(
            pl.col("_c_station").alias("station"),
            _utc_timestamp(pl.col("_c_timestamp")).alias("timestamp"),
            *[text.cast(pl.Float64, strict=False).alias(key) for key, text in texts.items()],
        )
        checks: list[Check] = [
            _problem_check(),
            _station_check(pl.col("station")),
            *_timestamp_checks(pl.col("_c_timestamp"), pl.col("timestamp")),
            *[
                _number_check(
                    text,
                    pl.col(key),
                    pl.concat_str(pl.lit(f"{key} is not a number: "), _quoted(text)),
                )
                for key, text in texts.items()
            ],
        ]
        count = pl.col("_count")
        fatal = (
            count != len(header),
            pl.coalesce(
                pl.col("problem"),
                pl.concat_str(
                    pl.lit(f"expected {len(header)} fields, found "), count.cast(pl.String)
                ),
            ),
        )
        return _finish(block, parsed, checks, fatal)

    def _find_header(self, block: pl.DataFrame) -> pl.DataFrame:
        """Look for the header in `block`; return the lines after it (all, if none)."""
        non_blank = block.filter(pl.col(RAW).str.strip_chars() != "").head(
            SAMPLE_LINES - self.looked_at
        )
        for number, line in non_blank.select(LINE, RAW).iter_rows():
            if is_csv_header(line.strip()):
                fields = csv_header_fields(line.strip())
                repeated = sorted({name for name in fields if fields.count(name) > 1})
                if repeated:
                    raise LegacyLogError(
                        f"{self.name}: the CSV header repeats {', '.join(repeated)}"
                    )
                self.header, self.header_line = fields, line.strip()
                return block.filter(pl.col(LINE) > number)
        self.looked_at += non_blank.height
        if self.looked_at >= SAMPLE_LINES:
            raise LegacyLogError(
                f"{self.name}: no CSV header naming timestamp and station "
                f"in the first {SAMPLE_LINES} non-blank lines"
            )
        return block
