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
from pandera.config import CONFIG
from pandera.constants import CHECK_OUTPUT_KEY

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
ORDER = "__order"


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

    How it stays cheap: every rule of `READING_SCHEMA` is first evaluated in one
    polars pass (`passes_rules`); the rows that pass every rule are valid as they
    are, and only the rows that fail one (usually none) go through pandera, which
    words their reasons: ~4 ms of CPU for a valid 20,000-row part instead of pandera's
    ~8 ms (most of it per call), which a migration pays 50 times per million lines.
    """
    passing = passes_rules(frame)
    if passing is None:  # not the schema's columns or dtypes: pandera words why
        return _split_by_pandera(frame)
    if passing.all():
        return frame, _no_rejects(frame)
    numbered = frame.with_row_index(ORDER)
    valid, rejected = _split_by_pandera(numbered.filter(~passing))
    if not valid.is_empty():  # pandera passed a row the one pass failed: keep frame order
        valid = pl.concat([numbered.filter(passing), valid]).sort(ORDER)
    else:
        valid = numbered.filter(passing)
    return valid.drop(ORDER), rejected.drop(ORDER)


def passes_rules(frame: pl.DataFrame) -> pl.Series | None:
    """Whether each row passes every rule of `READING_SCHEMA` (nullability and each
    column's checks, each evaluated by pandera's own check backend), in one polars
    pass; None where the frame lacks a column of the model or has another dtype.

    Exactly pandera's row verdicts: each check's as pandera's `Check` gives it (a null
    passes where the check ignores them), and a non-nullable column fails on null (and
    on NaN for floats), as pandera's column backend says.
    """
    if CONFIG.use_narwhals_backend or not CONFIG.validation_enabled:
        return None  # pandera's other backend, or no validation: pandera decides
    if READING_SCHEMA.checks or READING_SCHEMA.unique:
        return None  # rules across rows or columns: not judged here
    READING_SCHEMA.register_default_backends(pl.DataFrame)  # its built-in checks
    lazy = frame.lazy()
    verdicts: list[pl.LazyFrame] = []
    for name, column in READING_SCHEMA.columns.items():
        dtype = frame.schema.get(name)
        if dtype is None or column.dtype is None or dtype != column.dtype.type or column.unique:
            return None
        if not column.nullable:
            present = pl.col(name).is_not_null()
            if dtype.is_float():
                present = present & pl.col(name).is_not_nan()
            verdicts.append(lazy.select(present.alias(f"_rule{len(verdicts)}")))
        for check in column.checks:
            result = check(lazy, name)  # pandera's verdict per row, `ignore_na` applied
            if result.failure_cases is None:  # one verdict for the column: pandera words it
                return None
            rule = pl.col(CHECK_OUTPUT_KEY).alias(f"_rule{len(verdicts)}")
            verdicts.append(result.check_output.select(rule))
    if not verdicts:
        return pl.repeat(True, frame.height, eager=True)
    return (
        pl.concat(verdicts, how="horizontal", strict=True)  # one verdict per row each
        .select(pl.all_horizontal(pl.all()).alias("passes"))
        .collect()
        .to_series()
    )


def _no_rejects(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.clear().with_columns(pl.lit("", pl.String).alias(REASON))


def _split_by_pandera(frame: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """`split_valid` by pandera alone (all of the frame's columns are kept)."""
    frame = frame.with_row_index(ROW)  # pandera's failure `index`: the row's position
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
        rejected = frame.join(reasons, on=ROW, how="inner", maintain_order="left").drop(ROW)
        valid = frame.join(reasons, on=ROW, how="anti", maintain_order="left").drop(ROW)
        return valid, rejected
    frame = frame.drop(ROW)
    return frame, _no_rejects(frame)
