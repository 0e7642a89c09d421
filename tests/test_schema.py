"""The reading's validity rules (station-protocol.md) and the schema's versions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pandera.errors
import polars as pl
import pytest
import sqlalchemy
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from db import migrate
from db.engine import make_engine
from db.tables import metadata, power_readings
from powerwatch.core.errors import SchemaVersionError
from schemas.reading import CHANNELS, READING_SCHEMA, _split_by_pandera, split_valid
from tests.conftest import Database, make_readings


def _one(**changes: object) -> pl.DataFrame:
    frame = make_readings(["KhonKaen"], 1)
    return frame.with_columns(**{k: pl.lit(v) for k, v in changes.items()}).cast(
        {k: frame.schema[k] for k in changes}
    )


def _reason(frame: pl.DataFrame) -> str | None:
    valid, rejected = split_valid(frame)
    assert valid.height + rejected.height == frame.height
    return rejected["reason"][0] if rejected.height else None


@pytest.mark.parametrize(
    ("column", "value", "reason"),
    [
        ("activePower1", -1000.0, None),
        ("activePower1", 1_000_000.0, None),
        ("activePower1", -1000.01, "out of range: activePower1"),
        ("activePower6", 1_000_000.5, "out of range: activePower6"),
        ("muxPower1", 0.0, None),
        ("muxPower1", -0.01, "out of range: muxPower1"),
        ("muxPower4", 1e12, "out of range: muxPower4"),
        ("muxPower4", 1e12 - 1, None),
        ("activePower2", float("nan"), "out of range: activePower2"),
        ("activePower3", float("inf"), "out of range: activePower3"),
        ("muxPower2", float("-inf"), "out of range: muxPower2"),
        ("activePower1", None, None),
        ("station", "bad name!", "bad station name: station"),
        ("station", "x" * 65, "bad station name: station"),
    ],
)
def test_value_rules(column: str, value: object, reason: str | None) -> None:
    assert _reason(_one(**{column: value})) == reason


def test_timestamp_rules() -> None:
    now = datetime.now(UTC)
    assert _reason(_one(timestamp=datetime(1999, 12, 31, 23, 59, tzinfo=UTC))) == (
        "timestamp before 2000-01-01: timestamp"
    )
    assert _reason(_one(timestamp=now + timedelta(minutes=6))) == (
        "timestamp in the future: timestamp"
    )
    assert _reason(_one(timestamp=now + timedelta(minutes=4))) is None
    assert _reason(_one(timestamp=None)) == "missing value: timestamp"


def test_all_reasons_of_a_row_are_kept() -> None:
    reason = _reason(_one(activePower1=-5000.0, muxPower1=-1.0))
    assert reason == "out of range: activePower1, muxPower1"


def test_one_pass_verdicts_are_panderas_row_for_row() -> None:
    """split_valid judges rows in one polars pass and words only the failing ones with
    pandera: the result must be exactly what pandera alone gives, in the frame's order."""
    frame = make_readings(["KhonKaen", "Udon", "Loei"], 200).with_columns(line=pl.int_range(600))
    i, now = pl.col("line"), datetime.now(UTC)
    frame = frame.with_columns(
        station=pl.when(i % 97 == 5).then(pl.lit("bad name!")).otherwise("station"),
        timestamp=pl.when(i % 89 == 7)
        .then(pl.lit(now + timedelta(hours=1)))
        .when(i % 83 == 3)
        .then(None)
        .otherwise("timestamp")
        .cast(frame.schema["timestamp"]),
        activePower1=pl.when(i % 31 == 2).then(float("nan")).otherwise("activePower1"),
        muxPower4=pl.when(i % 41 == 9)
        .then(-1.0)
        .when(i % 43 == 1)
        .then(None)
        .otherwise("muxPower4"),
    )
    valid, rejected = split_valid(frame)
    expected_valid, expected_rejected = _split_by_pandera(frame)
    assert rejected.height > 40 and valid.height > 500
    assert valid.equals(expected_valid) and valid["line"].is_sorted()
    assert rejected.equals(expected_rejected)
    assert split_valid(frame.head(0))[0].height == 0
    with pytest.raises(pandera.errors.SchemaErrors):  # not the model's dtype: pandera says so
        split_valid(frame.cast({"activePower1": pl.Float32}))


def test_table_and_model_agree_on_the_channels() -> None:
    model_columns = set(READING_SCHEMA.columns) - {"station", "timestamp"}
    assert model_columns == {c.key for c in CHANNELS}
    table_columns = set(power_readings.c.keys()) - {"station_id", "ts", "batch_id"}
    assert table_columns == {c.column for c in CHANNELS}


def test_migrations_create_exactly_the_declared_tables(database: Database) -> None:
    engine = make_engine(database.url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    assert diff == []


def test_upgrade_is_idempotent_and_downgrade_reverses_it(database: Database) -> None:
    engine = make_engine(database.url)
    migrate.upgrade(engine)
    assert migrate.current_revision(engine) == migrate.head_revision()
    migrate.downgrade(engine, "base")
    assert migrate.current_revision(engine) is None
    with engine.connect() as conn:
        remaining = set(sqlalchemy.inspect(conn).get_table_names()) - {"alembic_version"}
    assert remaining == set()
    migrate.upgrade(engine)
    migrate.require_current(engine)


def test_the_head_read_from_the_files_is_alembics_head() -> None:
    """`require_current`'s quick path trusts the files' `revision = ...` lines."""
    assert migrate.declared_head() == migrate.head_revision()


def test_an_older_schema_is_refused_by_the_quick_check_too(database: Database) -> None:
    engine = make_engine(database.url)
    migrate.downgrade(engine, "0001")
    with pytest.raises(SchemaVersionError, match="older than this code"):
        migrate.require_current(engine)


def test_database_newer_than_the_code_is_refused(database: Database) -> None:
    engine = make_engine(database.url)
    with engine.begin() as conn:
        conn.execute(sqlalchemy.text("UPDATE alembic_version SET version_num = '9999'"))
    with pytest.raises(SchemaVersionError, match="newer than this powerwatch"):
        migrate.upgrade(engine)
    with pytest.raises(SchemaVersionError, match="newer than this powerwatch"):
        migrate.require_current(engine)


def test_sqlite_is_configured_for_a_busy_writer(sqlite_database: Database) -> None:
    engine = make_engine(sqlite_database.url)
    with engine.connect() as conn:
        pragma = {
            name: conn.exec_driver_sql(f"PRAGMA {name}").scalar()
            for name in ("journal_mode", "synchronous", "foreign_keys", "busy_timeout")
        }
    assert pragma == {
        "journal_mode": "wal",
        "synchronous": 1,
        "foreign_keys": 1,
        "busy_timeout": 2000,
    }


def test_sql_text_binds_named_parameters_on_either_database_literals_left_alone(
    database: Database,
) -> None:
    """One SQL text for both databases, compiled by SQLAlchemy (`text()`) for the
    connection's dialect: `:p` is bound wherever it stands (twice here, one value); a `?`
    is no placeholder anywhere, and a time such as '12:30' in a literal is left alone."""
    from db.engine import bulk_connection

    with bulk_connection(database.url) as bulk:
        rows = bulk.rows(
            "SELECT '?' AS \"what?\", CAST(:p AS INTEGER) AS p, 'it''s 12:30?' AS q, "
            "CAST(:p AS INTEGER) + 1 AS r -- why?",
            {"p": 5},
        )
    assert [tuple(r) for r in rows] == [("?", 5, "it's 12:30?", 6)]
