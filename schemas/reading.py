"""A reading, defined once.

`CHANNELS` is the single list the rest of the project derives from: the pandera
model below, the database table (`db.tables`), the landing-chunk contract, the
legacy-log parsers and the CLI's CSV output all read their column names and
validity ranges from here, so a rule can never differ between capture, load and
migration.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pandera.polars as pa
import polars as pl
from pandera.api.polars.types import PolarsData

from schemas.channels import (
    ACTIVE_CHANNELS,
    CHANNEL_KEYS,
    CHANNELS,
    EARLIEST,
    FUTURE_TOLERANCE,
    LANDING_COLUMNS,
    MUX_CHANNELS,
    REASON,
    RECEIVED_AT,
    STATION_NAME_PATTERN,
    TIMESTAMP_DTYPE,
    Channel,
)

__all__ = [
    "ACTIVE_CHANNELS",
    "CHANNELS",
    "CHANNEL_KEYS",
    "LANDING_COLUMNS",
    "MUX_CHANNELS",
    "READING_SCHEMA",
    "REASON",
    "RECEIVED_AT",
    "TIMESTAMP_DTYPE",
    "split_valid",
]


def _not_in_future(data: PolarsData) -> pl.LazyFrame:
    # Evaluated at validation time, not import time: "the future" moves.
    limit = datetime.now(UTC) + FUTURE_TOLERANCE
    return data.lazyframe.select(pl.col(data.key) <= pl.lit(limit, dtype=TIMESTAMP_DTYPE))


def _station_name_ok(data: PolarsData) -> pl.LazyFrame:
    # A regex per row costs more than the rest of the validation; a chunk holds
    # few distinct names, so each distinct name is matched once.
    names = data.lazyframe.select(pl.col(data.key).unique()).collect().to_series()
    valid = names.filter(names.str.contains(STATION_NAME_PATTERN))
    return data.lazyframe.select(pl.col(data.key).is_in(valid.implode()))


def _range_check(channel: Channel) -> pa.Check:
    if channel.maximum_inclusive:
        return pa.Check.in_range(channel.minimum, channel.maximum)
    return pa.Check.in_range(channel.minimum, channel.maximum, include_max=False)


READING_SCHEMA = pa.DataFrameSchema(
    {
        "station": pa.Column(pl.String, checks=pa.Check(_station_name_ok, name="station_name")),
        "timestamp": pa.Column(
            TIMESTAMP_DTYPE,
            checks=[
                pa.Check.ge(EARLIEST),
                pa.Check(_not_in_future, name="not_more_than_5_minutes_in_future"),
            ],
        ),
        # NaN and +-inf fail the range check (polars orders NaN above every number).
        **{c.key: pa.Column(pl.Float64, nullable=True, checks=_range_check(c)) for c in CHANNELS},
    },
    name="reading",
    strict="filter",  # extra columns (received_at, ...) are not readings' business
    ordered=False,
)

ROW = "__row"


# pandera names checks by their function; operators read rules.
_RULE_LABELS = {
    "in_range": "out of range",
    "station_name": "bad station name",
    "greater_than_or_equal_to": "timestamp before 2000-01-01",
    "not_more_than_5_minutes_in_future": "timestamp in the future",
    "not_nullable": "missing value",
}


def _rule_label(check: pl.Expr) -> pl.Expr:
    label = check
    for prefix, text in _RULE_LABELS.items():
        label = pl.when(check.str.starts_with(prefix)).then(pl.lit(text)).otherwise(label)
    return label


def split_valid(frame: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Validate a whole frame at once and split it into (valid rows, rejected rows + reason).

    Validation is per frame, never per message: pandera's per-call overhead is
    the cost, not the checks. A row failing several rules gets all its reasons,
    joined with "; ". Schema-level failures (a missing column, a wrong dtype)
    raise `pandera.errors.SchemaErrors` for the caller to treat as an unreadable
    input: they concern the whole frame, not a row.
    """
    frame = frame.with_row_index(ROW)
    try:
        READING_SCHEMA.validate(frame, lazy=True)
    except pa.errors.SchemaErrors as exc:
        cases = exc.failure_cases
        if cases["index"].null_count():
            raise
        reasons = (
            cases.select(
                pl.col("index").cast(pl.UInt32).alias(ROW),
                _rule_label(pl.col("check")).alias("rule"),
                pl.col("column"),
            )
            .unique(maintain_order=True)
            .group_by(ROW, "rule", maintain_order=True)
            .agg(pl.col("column").str.join(", "))
            .group_by(ROW, maintain_order=True)
            .agg(pl.concat_str("rule", pl.lit(": "), "column").str.join("; ").alias(REASON))
        )
        rejected = frame.join(reasons, on=ROW, how="inner").drop(ROW)
        valid = frame.join(reasons, on=ROW, how="anti").drop(ROW)
        return valid, rejected
    return frame.drop(ROW), frame.clear().drop(ROW).with_columns(
        pl.lit("", pl.String).alias(REASON)
    )
