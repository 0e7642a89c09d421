"""JSON objects, one per line, to columns: vectorised with polars, exact about every line.

Two producers speak nearly the same JSON: the legacy monitor's format J (channels
under `readings`) and the live stations (channels under `data`, plus `type` and
`uuid`). Both decode here, described by a `JsonShape`, so a value rule (what counts
as a number, what a string where a number belongs means) cannot differ between
migration and capture.

polars decodes pieces of lines at once; a line it would refuse, known in advance
(not braces at both ends, a channel with a string value) or found when a piece
fails, is decoded on its own (`orjson`) to tell exactly what is wrong with it.
Only what cannot be read is flagged here; value ranges and time rules are
`schemas.reading.split_valid`'s.

Hostile input: polars' JSON decoder recurses per nesting level and overflows its
stack (a segfault: the whole process gone) at ~20,000 nested arrays, which fit in
one 64 KiB frame. A line with more than `_MAX_OPENERS` `[`/`{` (a valid line has
two) is therefore never given to polars but to the per-line decoder, where orjson
stops at 1,024 levels. The per-line decoder never raises: a line it cannot judge
for any reason is `malformed JSON` with the reason, so one line never costs the
lines around it.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from dataclasses import dataclass
from functools import cached_property
from typing import Final

import orjson
import polars as pl

from schemas.reading import CHANNEL_KEYS, TIMESTAMP_DTYPE

LINE: Final = "line"  # the caller's line (row) number: decoding keeps this order
RAW: Final = "raw"  # the line's text
TIMESTAMP: Final = "timestamp"
JSON_ERROR: Final = "json_error"  # the line is not usable at all
VALUE_REASON: Final = "value_reason"  # some fields or values are not what they must be
BY_POLARS: Final = "by_polars"  # decoded in a piece (False: decoded on its own)

MALFORMED_JSON: Final = "malformed JSON"
NOT_AN_OBJECT: Final = "not a JSON object"

_EPOCH_MS: Final = r"^-?\d{1,15}$"
_ISO_FORMAT: Final = "%Y-%m-%dT%H:%M:%S%.f%#z"
_JSON_PIECE: Final = 4096  # lines polars decodes at once (larger pieces decode slower)
_JSON_SPLIT: Final = 16  # a refused piece is retried in this many parts ...
_JSON_LINE_BY_LINE: Final = 256  # ... down to this size, then decoded line by line
_QUOTE_LIMIT: Final = 60
_MAX_OPENERS: Final = 16  # more `[`/`{` in a line: decoded per line (see the docstring)

_CHANNELS_STRUCT: Final = pl.Struct({key: pl.Float64 for key in CHANNEL_KEYS})
_CHANNEL_ALTERNATIVES: Final = "|".join(CHANNEL_KEYS)


def _common_ending(words: list[str]) -> str:
    ending = words[0]
    for word in words[1:]:
        while not word.endswith(ending):
            ending = ending[1:]
    return ending


# A channel given a string value: polars would refuse the whole piece, so such
# lines go straight to the per-line decoder (which says which value is wrong).
# Only a pre-filter (the per-piece fallback keeps the result exact), so it is
# kept cheap: the ending the channel keys share ("Power" + digits), not all ten.
_CHANNEL_STEM: Final = _common_ending([key.rstrip("0123456789") for key in CHANNEL_KEYS])
_CHANNEL_STRING: Final = rf'{re.escape(_CHANNEL_STEM)}[0-9]+"[ \t]*:[ \t]*"'
# polars decodes JSON true/false as 1.0/0.0 into a Float64 field: find them in the text.
_CHANNEL_BOOL: Final = rf'"(?:{_CHANNEL_ALTERNATIVES})"\s*:\s*(?:true|false)'
_CHANNEL_BOOL_KEY: Final = r'^"(\w+)"\s*:\s*'


@dataclass(frozen=True)
class JsonShape:
    """Which fields a producer's JSON object carries.

    `strings`: top-level fields that must be strings when present; `timestamp` is
    always read (a string, or a number kept as its text); `channels`: the key of
    the object holding the channel values. `allow_constants`: `NaN`/`Infinity`
    literals (and numbers beyond float range) make a value reason instead of a
    malformed line.
    """

    strings: tuple[str, ...]
    channels: str
    allow_constants: bool = False

    @property
    def has_channels(self) -> str:
        """The decoded column saying whether the channels object was present."""
        return f"has_{self.channels}"

    @cached_property
    def struct(self) -> pl.Struct:
        return pl.Struct(
            {
                **{name: pl.String for name in self.strings},
                TIMESTAMP: pl.String,
                self.channels: _CHANNELS_STRUCT,
            }
        )

    @cached_property
    def decoded(self) -> dict[str, pl.DataType]:
        """The columns `decode_json_lines` adds, in order."""
        return {
            **{name: pl.String() for name in self.strings},
            TIMESTAMP: pl.String(),
            self.has_channels: pl.Boolean(),
            **{key: pl.Float64() for key in CHANNEL_KEYS},
            JSON_ERROR: pl.String(),
            VALUE_REASON: pl.String(),
            BY_POLARS: pl.Boolean(),
        }


def decode_json_lines(candidates: pl.DataFrame, shape: JsonShape) -> pl.DataFrame:
    """`candidates` (LINE ascending, RAW, ...) with the decoded fields (`shape.decoded`) added.

    Lines stay in LINE order. `json_error` is set for a line that is no JSON object
    at all; `value_reason` names every field or channel value of the wrong type
    (a string or boolean where a number belongs, a station that is not a string).
    """
    raw = pl.col(RAW)
    suspect = (
        ~(raw.str.starts_with("{") & raw.str.ends_with("}"))
        | raw.str.contains(_CHANNEL_STRING)
        | (raw.str.count_matches(r"[\[{]") > _MAX_OPENERS)
    )
    odd_rows = candidates.select(suspect).to_series()
    plain = candidates.filter(~odd_rows)
    odd = candidates.filter(odd_rows)
    decoded = pl.concat(
        [
            _decode_piece(plain.slice(start, _JSON_PIECE), shape)
            for start in range(0, plain.height, _JSON_PIECE)
        ]
        or [plain.hstack(pl.DataFrame(schema=shape.decoded))]
    )
    if odd.height:
        # both parts are in line order: merging keeps it without a sort
        decoded = decoded.merge_sorted(
            odd.hstack(_decode_lines(odd[RAW].to_list(), shape)), key=LINE
        )
    return _flag_booleans(decoded)


def _flag_booleans(fields: pl.DataFrame) -> pl.DataFrame:
    """polars read `true`/`false` channel values as 1.0/0.0: find them in the text."""
    has_bool = pl.col(RAW).str.contains("true", literal=True) | pl.col(RAW).str.contains(
        "false", literal=True
    )
    flagged = fields.filter(pl.col(BY_POLARS) & has_bool)
    if flagged.height == 0:
        return fields
    hits = flagged.select(
        LINE,
        pl.col(RAW)
        .str.extract_all(_CHANNEL_BOOL)
        .list.eval(pl.element().str.replace(_CHANNEL_BOOL_KEY, "${1} is not a number: "))
        .list.join("; ")
        .alias("_bools"),
    ).filter(pl.col("_bools") != "")
    return (
        fields.join(hits, on=LINE, how="left", maintain_order="left")
        .with_columns(pl.coalesce(pl.col(VALUE_REASON), pl.col("_bools")).alias(VALUE_REASON))
        .drop("_bools")
    )


def utc_timestamp(text: pl.Expr) -> pl.Expr:
    """ISO-8601 with `Z` or an offset, or integer epoch milliseconds -> ms UTC; else null."""
    text = text.str.strip_chars()
    epoch = pl.when(text.str.contains(_EPOCH_MS)).then(
        pl.from_epoch(text.cast(pl.Int64, strict=False), time_unit="ms").dt.replace_time_zone("UTC")
    )
    iso = text.str.replace(" ", "T", literal=True, n=1).str.to_datetime(
        _ISO_FORMAT, strict=False, time_unit="ms", time_zone="UTC"
    )
    return pl.coalesce(epoch, iso).cast(TIMESTAMP_DTYPE)


def quoted(value: pl.Expr) -> pl.Expr:
    """A value for a reason text: quoted, cut to a readable length."""
    return pl.concat_str(pl.lit("'"), value.str.slice(0, _QUOTE_LIMIT), pl.lit("'"))


def _decode_piece(piece: pl.DataFrame, shape: JsonShape) -> pl.DataFrame:
    try:
        decoded = piece[RAW].str.json_decode(shape.struct)
    except pl.exceptions.PolarsError:
        if piece.height <= _JSON_LINE_BY_LINE:
            return piece.hstack(_decode_lines(piece[RAW].to_list(), shape))
        part = -(-piece.height // _JSON_SPLIT)  # narrow down to the refused lines
        return pl.concat(
            [
                _decode_piece(piece.slice(start, part), shape)
                for start in range(0, piece.height, part)
            ]
        )
    channels = pl.col(shape.channels)
    fields = (
        decoded.struct.unnest()
        .select(
            *shape.strings,
            TIMESTAMP,
            channels.is_not_null().alias(shape.has_channels),
            *[channels.struct.field(key) for key in CHANNEL_KEYS],
            pl.lit(None, pl.String).alias(JSON_ERROR),
            pl.lit(None, pl.String).alias(VALUE_REASON),
            pl.lit(True).alias(BY_POLARS),
        )
        .cast(shape.decoded)  # type: ignore[arg-type]
    )
    return piece.hstack(fields)


def _decode_lines(lines: list[str | None], shape: JsonShape) -> pl.DataFrame:
    """The per-line decoder, for lines polars refuses: exact reasons for each."""
    rows = [_decode_line(line or "", shape) for line in lines]
    return pl.DataFrame(rows, schema=shape.decoded, orient="row")


_NOT_JSON: Final = object()


def _decode_line(line: str, shape: JsonShape) -> tuple[object, ...]:
    """One line's fields; never raises (a line nothing can judge is malformed, with why)."""
    try:
        return _judge_line(line, shape)
    except Exception as exc:  # any failure is this line's, not the batch's
        nothing = (None,) * (len(shape.strings) + 2 + len(CHANNEL_KEYS))
        return (*nothing, f"{MALFORMED_JSON} (cannot be decoded: {_failure(exc)})", None, False)


def _failure(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:_QUOTE_LIMIT]}" if text else type(exc).__name__


def _judge_line(line: str, shape: JsonShape) -> tuple[object, ...]:
    nothing = (None,) * (len(shape.strings) + 2 + len(CHANNEL_KEYS))  # + timestamp, has_channels
    value: object = _NOT_JSON
    try:
        value = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        if "depth limit" in str(exc):  # orjson's nesting limit: deeper than any valid line
            return (*nothing, f"{MALFORMED_JSON} (nested too deeply)", None, False)
        if shape.allow_constants:
            # NaN, Infinity, 1e400: judged as values (json's recursion limit: malformed)
            with contextlib.suppress(ValueError, RecursionError):
                value = json.loads(line)
    if value is _NOT_JSON:
        return (*nothing, MALFORMED_JSON, None, False)
    if not isinstance(value, dict):
        return (*nothing, NOT_AN_OBJECT, None, False)
    reasons: list[str] = []
    texts: list[str | None] = []
    for name in shape.strings:
        text = value.get(name)
        if text is not None and not isinstance(text, str):
            reasons.append(f"{name} is not a string: {_json(text)}")
            text = None
        texts.append(text)
    timestamp = value.get(TIMESTAMP)
    if isinstance(timestamp, bool) or not isinstance(timestamp, str | int | float | None):
        reasons.append(f"timestamp is not a string or a number: {_json(timestamp)}")
        timestamp = None
    elif isinstance(timestamp, float):
        timestamp = str(int(timestamp)) if timestamp.is_integer() else str(timestamp)
    elif isinstance(timestamp, int):
        timestamp = str(timestamp)
    readings = value.get(shape.channels)
    if readings is not None and not isinstance(readings, dict):
        reasons.append(f"{shape.channels} is not an object: {_json(readings)}")
    channels = readings if isinstance(readings, dict) else {}
    numbers: list[float | None] = []
    for key in CHANNEL_KEYS:
        item = channels.get(key)
        number = _number(item)
        if item is not None and number is None:
            reasons.append(f"{key} is not a number: {_json(item)}")
        numbers.append(number)
    value_reason = "; ".join(reasons) if reasons else None
    return (*texts, timestamp, readings is not None, *numbers, None, value_reason, False)


def _number(item: object) -> float | None:
    """A finite float, or None for anything that is not one."""
    if isinstance(item, bool) or not isinstance(item, int | float):
        return None
    try:
        number = float(item)
    except OverflowError:  # an integer beyond float range
        return None
    return number if math.isfinite(number) else None


def _json(value: object, limit: int = _QUOTE_LIMIT) -> str:
    if isinstance(value, float) and not math.isfinite(value):
        return json.dumps(value)  # NaN / Infinity / -Infinity, as written
    try:
        return orjson.dumps(value).decode()[:limit]
    except TypeError:  # an integer beyond 64 bits
        return json.dumps(value)[:limit]
