"""Read-only SQLite access through the stdlib `sqlite3`, for the query commands.

`db.engine` stays the one place that opens SQLAlchemy and ADBC connections; importing it
costs SQLAlchemy, ADBC, pyarrow and (through pyarrow.dataset) pandas, and its schema
check costs Alembic: together seconds on this host, for queries that read a few rows
(issue 14: `latest` took 3.5-4.4 s). `SqliteReader` offers the read half of
`db.bulk.BulkConnection` (`frame`, `rows`, `scalar`, `batches`, `sqlite`) over the
stdlib module that is already loaded, so `db.queries`, `powerwatch.rollups.queries` and
`powerwatch.rollups.completeness` run unchanged on it. It follows the engine's rules:
the file must exist (`mode=ro`: never created), the busy timeout comes from the
settings, driver errors are named by `db.failures.classify`. The schema check compares
`alembic_version` with the head revision read from the migration files' `revision =
"..."` lines; anything but an exact match falls back to `db.migrate.require_current`,
which words the refusal.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import polars as pl

from db.failures import classify

VERSIONS = Path(__file__).with_name("migrations") / "versions"
_REVISION = re.compile(r'^(down_revision|revision)\s*=\s*(?:"([^"]*)"|None)', re.M)


def head_revision() -> str | None:
    """The revision no other migration names as its parent (None if not exactly one)."""
    revisions: set[str] = set()
    parents: set[str] = set()
    for path in VERSIONS.glob("*.py"):
        for kind, value in _REVISION.findall(path.read_text(encoding="utf-8")):
            if value:
                (revisions if kind == "revision" else parents).add(value)
    heads = revisions - parents
    return heads.pop() if len(heads) == 1 else None


class SqliteReader:
    """The read half of `BulkConnection` over stdlib sqlite3 (query commands only)."""

    sqlite = True

    def __init__(self, conn: sqlite3.Connection, where: str) -> None:
        self.conn = conn
        self.where = where

    def _cursor(self, sql: str, params: Mapping[str, Any] | None) -> sqlite3.Cursor:
        try:
            return self.conn.execute(sql, dict(params or {}))
        except sqlite3.Error as exc:
            raise classify(exc, f"reading {self.where}") from exc

    def rows(self, sql: str, params: Mapping[str, Any] | None = None) -> list[tuple[Any, ...]]:
        return list(self._cursor(sql, params).fetchall())

    def scalar(self, sql: str, params: Mapping[str, Any] | None = None) -> Any:
        result = self.rows(sql, params)
        return result[0][0] if result else None

    def frame(self, sql: str, params: Mapping[str, Any] | None = None) -> pl.DataFrame:
        cursor = self._cursor(sql, params)
        return _to_frame(cursor, cursor.fetchall())

    def batches(
        self, sql: str, params: Mapping[str, Any] | None = None, *, rows: int = 65_536
    ) -> Iterator[pl.DataFrame]:
        """Frames of about `rows` rows (bounded memory), as `BulkConnection.batches`."""
        cursor = self._cursor(sql, params)
        while chunk := cursor.fetchmany(rows):
            yield _to_frame(cursor, chunk)


def _to_frame(cursor: sqlite3.Cursor, rows: list[Any]) -> pl.DataFrame:
    names = [d[0] for d in cursor.description or ()]
    if not rows:
        return pl.DataFrame(schema=dict.fromkeys(names, pl.Null))
    return pl.DataFrame(rows, schema=names, orient="row", infer_schema_length=None)


@contextmanager
def read_connection(path: Path, busy_timeout_ms: int) -> Iterator[SqliteReader]:
    """A read-only connection to an existing SQLite file at the code's schema version."""
    from powerwatch.core.errors import SchemaVersionError

    if not path.is_file():
        raise SchemaVersionError(f"no database at {path}: run `powerwatch db upgrade`")
    try:
        conn = sqlite3.connect(
            f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=busy_timeout_ms / 1000
        )
    except sqlite3.Error as exc:
        raise classify(exc, f"cannot connect to {path}") from exc
    try:
        reader = SqliteReader(conn, str(path))
        try:
            current = reader.scalar("SELECT version_num FROM alembic_version")
        except Exception:
            current = None
        if current is None or current != head_revision():
            from db.engine import make_engine  # the exact refusal, worded in one place
            from db.migrate import require_current

            engine = make_engine(f"sqlite:///{path}", create=False)
            try:
                require_current(engine)
            finally:
                engine.dispose()
        yield reader
    finally:
        conn.close()
