"""A thin, dialect-aware wrapper over an ADBC connection: Arrow in, Arrow out, SQL text.

Only the load hot path uses it. It exists so that code above it writes one SQL
text with named parameters (`:station`, as SQLAlchemy's `text()` and the stdlib
`sqlite3` take them) for both SQLite and PostgreSQL and never touches ADBC's
per-driver differences: SQLAlchemy compiles each text for the connection's dialect
into the positional form its ADBC driver binds (`?` on SQLite, `$1` on PostgreSQL),
once per distinct text (`_compiled`).

A driver error that names a failure (damaged file, disk full, I/O error, busy or
unreachable) leaves every call here as that failure (`named_failure`), so a query
on a damaged file says so in one line and only "busy" is ever retried as busy.
PostgreSQL write transactions set `lock_timeout` before `LOCK TABLE`: a lock held
elsewhere is waited for at most the busy timeout, then `DatabaseUnavailable`.
"""

from __future__ import annotations

import functools
import queue
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import polars as pl
import pyarrow as pa
from adbc_driver_manager import dbapi
from sqlalchemy import text
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.sql.elements import ClauseElement

from db.failures import classify
from powerwatch.core.errors import JobError

Params = Mapping[str, Any]

_DIALECTS = {
    True: sqlite_dialect.dialect(paramstyle="qmark"),
    False: postgresql.dialect(paramstyle="numeric_dollar"),  # type: ignore[no-untyped-call]
}


@functools.lru_cache(maxsize=1024)
def _compiled(sql: str, sqlite: bool) -> tuple[str, tuple[str, ...]]:
    """`sql` with named parameters as the dialect's positional SQL, and the parameter
    names in binding order (SQLAlchemy's compiler: literals, comments and `::` casts are
    left as they are)."""
    compiled = text(sql).compile(dialect=_DIALECTS[sqlite])
    return str(compiled), tuple(compiled.positiontup or ())


def positional(sql: str, params: Params | None, sqlite: bool) -> tuple[str, list[Any] | None]:
    """The SQL and the parameter list an ADBC cursor of this dialect executes."""
    if not params:
        return sql, None
    statement, names = _compiled(sql, sqlite)
    return statement, [params[name] for name in names]


def named_failure(exc: BaseException, doing: str = "database") -> JobError | None:
    """The named failure (damaged, disk full, I/O, busy/unreachable) a driver error means,
    or None for any other driver error (a constraint, a bad statement: left as it is)."""
    failure = classify(exc, doing)
    return None if type(failure) is JobError else failure


@contextmanager
def _named(where: str) -> Iterator[None]:
    try:
        yield
    except dbapi.Error as exc:
        failure = named_failure(exc, where)
        if failure is None:
            raise
        raise failure from exc


@dataclass
class BulkConnection:
    conn: Any  # adbc_driver_manager.dbapi.Connection
    sqlite: bool
    lock_timeout_ms: int | None = None  # PostgreSQL: bound of a LOCK TABLE's wait
    where: str = "database"  # how failures name the database

    def compiled(self, clause: ClauseElement) -> str:
        """A SQLAlchemy expression as this dialect's SQL text (e.g. `is_not_distinct_from`:
        `IS` on SQLite, `IS NOT DISTINCT FROM` on PostgreSQL)."""
        return str(clause.compile(dialect=_DIALECTS[self.sqlite]))

    def execute(self, sql: str, params: Params | None = None) -> None:
        with _named(self.where), self.conn.cursor() as cur:
            cur.execute(*positional(sql, params, self.sqlite))

    def rows(self, sql: str, params: Params | None = None) -> list[tuple[Any, ...]]:
        with _named(self.where), self.conn.cursor() as cur:
            cur.execute(*positional(sql, params, self.sqlite))
            return list(cur.fetchall())

    def arrow(self, sql: str, params: Params | None = None) -> pa.Table:
        with _named(self.where), self.conn.cursor() as cur:
            self._batch_rows(cur, 65_536)
            cur.execute(*positional(sql, params, self.sqlite))
            table: pa.Table = cur.fetch_arrow_table()
            return table

    def batches(
        self, sql: str, params: Params | None = None, *, rows: int = 65_536
    ) -> Iterator[pa.RecordBatch]:
        """Stream a result as Arrow record batches of about `rows` rows (bounded memory)."""
        with _named(self.where), self.conn.cursor() as cur:
            self._batch_rows(cur, rows)
            cur.execute(*positional(sql, params, self.sqlite))
            for batch in cur.fetch_record_batch():
                if batch.num_rows:
                    yield batch

    def _batch_rows(self, cur: Any, rows: int) -> None:
        # SQLite's driver defaults to 1,024-row batches: the per-batch cost then dominates.
        if self.sqlite:
            cur.adbc_statement.set_options(**{"adbc.sqlite.query.batch_rows": str(rows)})

    def frame(self, sql: str, params: Params | None = None) -> pl.DataFrame:
        frame = pl.from_arrow(self.arrow(sql, params))
        assert isinstance(frame, pl.DataFrame)
        return frame

    def scalar(self, sql: str, params: Params | None = None) -> Any:
        result = self.rows(sql, params)
        return result[0][0] if result else None

    def ingest(self, table_name: str, data: pa.Table, *, temporary: bool = False) -> None:
        """Append Arrow data to an existing table, or create a temporary one from it."""
        mode = "create" if temporary else "append"
        with _named(self.where), self.conn.cursor() as cur:
            cur.adbc_ingest(table_name, data, mode=mode, temporary=temporary)

    @contextmanager
    def readers(self, count: int) -> Iterator[queue.Queue[BulkConnection]]:
        """`count` more connections to the same database, for reads in worker threads: take
        one from the queue, read, put it back (one thread per connection at a time)."""
        pool: queue.Queue[BulkConnection] = queue.Queue()
        opened: list[Any] = []
        try:
            for _ in range(count):
                opened.append(self.conn.adbc_clone())
                pool.put(BulkConnection(opened[-1], self.sqlite, self.lock_timeout_ms, self.where))
            yield pool
        finally:
            for conn in opened:
                conn.close()

    def delete(self, from_where: str, params: Params | None = None) -> int:
        """`DELETE <from_where>`; returns how many rows it deleted (one statement, no re-count)."""
        if self.sqlite:
            self.execute(f"DELETE {from_where}", params)
            return int(self.scalar("SELECT changes()"))
        return int(
            self.scalar(
                f"WITH gone AS (DELETE {from_where} RETURNING 1) SELECT count(*) FROM gone", params
            )
        )

    @contextmanager
    def transaction(
        self, lock_tables: Sequence[str] = (), *, check_foreign_keys: bool = True
    ) -> Iterator[None]:
        """One write transaction that holds the write lock from its first statement.

        SQLite: `BEGIN IMMEDIATE` takes the database's single write lock at once,
        so what we read (the stored keys) cannot change before we write.
        PostgreSQL: the named tables are locked against other writers (readers
        go on), which gives the same single-writer guarantee per table.

        `check_foreign_keys=False` (SQLite; PostgreSQL never checks on this side)
        skips SQLite's parent lookups for every deleted child row: deleting
        readings cannot orphan anything, and the lookups made the archive's delete
        much slower (docs/benchmarks.md, "Tuning decisions"). Only for transactions
        that delete, and insert nothing but rows derived from rows already stored
        (the archive's rollup refresh), never for a load.
        """
        toggle = self.sqlite and not check_foreign_keys
        if toggle:  # a no-op inside a transaction: set before BEGIN, reset after the end
            self.execute("PRAGMA foreign_keys=OFF")
        try:
            yield from self._transaction(lock_tables)
        finally:
            if toggle:
                self.execute("PRAGMA foreign_keys=ON")

    def _transaction(self, lock_tables: Sequence[str]) -> Iterator[None]:
        try:
            if self.sqlite:
                self.execute("BEGIN IMMEDIATE")
            else:
                if lock_tables and self.lock_timeout_ms is not None:
                    # Bounded: a lock held elsewhere ends as "lock timeout" (DatabaseUnavailable).
                    self.execute(f"SET LOCAL lock_timeout = {int(self.lock_timeout_ms)}")
                for name in lock_tables:
                    self.execute(f"LOCK TABLE {name} IN SHARE ROW EXCLUSIVE MODE")
            try:
                yield
            except BaseException:
                self._rollback()
                raise
            if self.sqlite:
                self.execute("COMMIT")
            else:
                self.conn.commit()
        except dbapi.Error as exc:
            # Locked past the busy timeout or the server gone: DatabaseUnavailable (worth a
            # retry); a full disk, a damaged file, an I/O error: named, never retried.
            raise classify(exc, self.where) from exc

    def _rollback(self) -> None:
        try:
            if self.sqlite:
                self.execute("ROLLBACK")
            else:
                self.conn.rollback()
        except dbapi.Error:
            pass  # the transaction is gone already (connection lost): nothing to undo
