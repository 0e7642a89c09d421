"""Checking a batch of received frames against spec/station-protocol.md, as one polars frame.

Frames are decoded and judged per flush, never per message: the receive loop only
keeps the text. Protocol rules (JSON object, known type, the station a frame
claims, value types) are decided here; value ranges and time rules are
`schemas.reading.split_valid`'s, the one validation shared with load and migration.

Every frame ends up in exactly one of: readings, heartbeats, hellos, rejected.
A rejection's `reason` starts with its class (`REASONS`), then `: ` and the detail,
so counts by class and the operator's exact reason come from one column.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import polars as pl

from schemas.jsonlines import (
    JSON_ERROR,
    LINE,
    RAW,
    TIMESTAMP,
    VALUE_REASON,
    JsonShape,
    decode_json_lines,
    quoted,
    utc_timestamp,
)
from schemas.reading import CHANNEL_KEYS, REASON, RECEIVED_AT, TIMESTAMP_DTYPE, split_valid

MAX_FRAME: Final = 64 * 1024  # protocol limit for one frame, in bytes

# Reason classes (the first words of a rejection's reason).
MALFORMED: Final = "malformed frame"
UNKNOWN_TYPE: Final = "unknown type"
STATION_MISMATCH: Final = "station mismatch"
INVALID_VALUE: Final = "invalid value"  # NaN/Infinity, strings, booleans
BAD_TIMESTAMP: Final = "bad timestamp"
BINARY: Final = "binary frame"
INVALID_UTF8: Final = "invalid UTF-8"  # a text frame whose bytes are not UTF-8
UNJUDGEABLE: Final = "malformed frame"  # the decoder failed on it: judged malformed
OVERSIZED: Final = "oversized frame"
# ... and those of split_valid: "out of range", "timestamp in the future",
# "timestamp before 2000-01-01".

STATION: Final = "station"  # the station of the connection the frame came in on
UUID: Final = "uuid"  # that station's registered uuid
KIND: Final = "kind"

FRAME_SHAPE: Final = JsonShape(
    strings=("type", "station", "uuid"), channels="data", allow_constants=True
)
FRAME_COLUMNS: Final[dict[str, pl.DataType]] = {
    STATION: pl.String(),
    RECEIVED_AT: TIMESTAMP_DTYPE,
    RAW: pl.String(),
}
REJECTED_COLUMNS: Final[dict[str, pl.DataType]] = {**FRAME_COLUMNS, REASON: pl.String()}
# A dead letter: a rejected frame, plus its exact bytes (base64) when they were not UTF-8
# text (binary frames, invalid UTF-8); `raw` then shows them with U+FFFD replacements.
RAW_BASE64: Final = "raw_base64"
DEAD_LETTER_COLUMNS: Final[dict[str, pl.DataType]] = {**REJECTED_COLUMNS, RAW_BASE64: pl.String()}
CHUNK_COLUMNS: Final[dict[str, pl.DataType]] = {
    STATION: pl.String(),
    TIMESTAMP: TIMESTAMP_DTYPE,
    **{key: pl.Float64() for key in CHANNEL_KEYS},
    RECEIVED_AT: TIMESTAMP_DTYPE,
}


@dataclass(frozen=True)
class CheckedFrames:
    """One batch, judged: `readings` has the landing-chunk columns plus `received_at`."""

    readings: pl.DataFrame  # CHUNK_COLUMNS
    rejected: pl.DataFrame  # REJECTED_COLUMNS
    heartbeats: pl.DataFrame  # station, count
    hellos: pl.DataFrame  # station, count


def reason_class(reason: pl.Expr) -> pl.Expr:
    """`out of range: activePower1; ...` -> `out of range`."""
    return reason.str.split(": ").list.first().str.split("; ").list.first()


def check_frames(frames: pl.DataFrame, uuids: pl.DataFrame) -> CheckedFrames:
    """Judge `frames` (FRAME_COLUMNS, in arrival order) against the protocol.

    `uuids` maps each registered station to its uuid (columns station, uuid).
    A reading without `timestamp` is stamped with its receive time; "the future"
    is judged now, at validation time (by `split_valid`).
    """
    candidates = frames.rename({STATION: _CONN}).with_row_index(LINE).cast({LINE: pl.Int64})
    fields = (
        decode_json_lines(candidates, FRAME_SHAPE)
        .rename({TIMESTAMP: _TS_TEXT})
        .join(
            uuids.select(pl.col(STATION).alias(_CONN), pl.col(UUID).alias(_REGISTERED)),
            on=_CONN,
            how="left",
            maintain_order="left",
        )
        .with_columns(utc_timestamp(pl.col(_TS_TEXT)).alias(TIMESTAMP))
    )
    judged = fields.with_columns(_reason().alias(REASON))
    kind, ok = pl.col("type"), pl.col(REASON).is_null()
    readings = judged.filter(ok & (kind == "reading")).select(
        LINE,
        pl.col(_CONN).alias(STATION),
        pl.coalesce(TIMESTAMP, RECEIVED_AT).alias(TIMESTAMP),
        *CHANNEL_KEYS,
        RECEIVED_AT,
    )
    valid, out_of_rules = split_valid(readings)
    rejected = pl.concat(
        [
            judged.filter(~ok).select(LINE, pl.col(_CONN).alias(STATION), RECEIVED_AT, REASON, RAW),
            out_of_rules.select(LINE, STATION, RECEIVED_AT, REASON).join(
                judged.select(LINE, RAW), on=LINE, how="left"
            ),
        ]
    ).sort(LINE)
    return CheckedFrames(
        readings=valid.sort(LINE).select(list(CHUNK_COLUMNS)),
        rejected=rejected.select(list(REJECTED_COLUMNS)),
        heartbeats=_count(judged.filter(ok & (kind == "heartbeat"))),
        hellos=_count(judged.filter(ok & (kind == "hello"))),
    )


_CONN: Final = "_connection"
_REGISTERED: Final = "_registered_uuid"
_TS_TEXT: Final = "_timestamp_text"


def _reason() -> pl.Expr:
    """The first protocol rule a frame breaks (null: none), as `class: detail`."""
    kind = pl.col("type")
    claimed, claimed_uuid = pl.col(STATION), pl.col(UUID)
    mismatch = (claimed.is_not_null() & (claimed != pl.col(_CONN))) | (
        claimed_uuid.is_not_null()
        & (claimed_uuid.str.to_lowercase() != pl.col(_REGISTERED).str.to_lowercase())
    )
    claim = pl.concat_str(
        pl.lit("claims "),
        pl.when(claimed.is_not_null() & (claimed != pl.col(_CONN)))
        .then(pl.concat_str(pl.lit("station "), quoted(claimed)))
        .otherwise(pl.concat_str(pl.lit("uuid "), quoted(claimed_uuid))),
    )
    ts_text = pl.col(_TS_TEXT)

    def because(label: str, detail: pl.Expr) -> pl.Expr:
        return pl.concat_str(pl.lit(f"{label}: "), detail)

    return (
        pl.when(pl.col(JSON_ERROR).is_not_null())
        .then(because(MALFORMED, pl.col(JSON_ERROR)))
        .when(kind.is_in(["heartbeat", "hello"]))
        .then(pl.lit(None, pl.String))
        .when(kind.is_null() | (kind != "reading"))
        .then(because(UNKNOWN_TYPE, pl.coalesce(quoted(kind), pl.lit("no type"))))
        .when(mismatch)
        .then(because(STATION_MISMATCH, claim))
        .when(pl.col(VALUE_REASON).is_not_null())
        .then(because(INVALID_VALUE, pl.col(VALUE_REASON)))
        .when(~pl.col(FRAME_SHAPE.has_channels))
        .then(because(MALFORMED, pl.lit("a reading without data")))
        .when(ts_text.is_not_null() & pl.col(TIMESTAMP).is_null())
        .then(because(BAD_TIMESTAMP, quoted(ts_text)))
        .otherwise(pl.lit(None, pl.String))
    )


def _count(frames: pl.DataFrame) -> pl.DataFrame:
    return frames.group_by(pl.col(_CONN).alias(STATION)).agg(pl.len().alias("count"))
