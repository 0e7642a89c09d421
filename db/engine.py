"""The one place that opens database connections, from `POWERWATCH_DATABASE_URL`.

Two kinds of connection, same database:
- a SQLAlchemy `Engine` for schema, migrations, queries and small writes;
- an ADBC connection (`bulk_connection`) for the load hot path, which moves
  Arrow columns into the database without a Python object per row.

Rule for SQLite: never hold a SQLAlchemy (stdlib sqlite3) connection and an
ADBC connection to the same file open at once in one process. ADBC links its
own copy of SQLite; POSIX file locks are per process, so the two copies do not
see each other's locks, and closing one copy's file releases the other's locks
(it may even delete a WAL the other still writes). The SQLite engine therefore
uses NullPool: a SQLAlchemy connection lives exactly as long as its `with`
block, and bulk work happens outside such blocks. Between processes, locking
works as SQLite documents.

SQLite is tuned here for one busy writer and many readers: WAL (readers never
block the writer), a busy timeout (a second writer waits instead of failing),
foreign keys on, synchronous=NORMAL (durable at checkpoints; safe under WAL).

Waits are bounded everywhere, from `POWERWATCH_BUSY_TIMEOUT_MS`: SQLite's busy
timeout; PostgreSQL's `lock_timeout` (every session) and `connect_timeout` (rounded
up to seconds, at least 2, libpq's minimum). A wait past the bound is
`DatabaseUnavailable`, which the load retries with backoff.

Failures have names on every path: a driver error meaning "damaged", "disk full",
"I/O error" or "busy/unreachable" leaves the engine (SQLAlchemy's `handle_error`) or
an ADBC call (`db.bulk`) as `DatabaseCorrupt` / `DiskFull` / `StorageError` /
`DatabaseUnavailable`, never as a raw driver error and never retried as busy unless busy.

Commands that only read never create a database: `make_engine(create=False)` and
`bulk_connection(create=False)` refuse a SQLite file that is not there (SQLite would
otherwise create it, and its folders, empty).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError
from sqlalchemy.pool import NullPool

from db.bulk import BulkConnection, named_failure
from db.failures import classify
from powerwatch.core.errors import (
    DatabaseCorrupt,
    DatabaseUnavailable,
    InputError,
    SchemaVersionError,
)
from powerwatch.core.settings import get_settings


def parse_url(url: str | None = None) -> URL:
    raw = url if url is not None else get_settings().database_url
    try:
        parsed = make_url(raw)
    except ArgumentError as exc:
        raise InputError(f"POWERWATCH_DATABASE_URL is not a database URL: {raw!r}") from exc
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise InputError(
            f"unsupported database {parsed.get_backend_name()!r}: use sqlite:/// or postgresql://"
        )
    if parsed.get_backend_name() == "postgresql" and parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def is_sqlite(url: URL) -> bool:
    return url.get_backend_name() == "sqlite"


def sqlite_path(url: URL) -> Path | None:
    """The database file of a SQLite URL (None for in-memory)."""
    if not url.database or url.database == ":memory:":
        return None
    return Path(url.database)


def require_database(url: str | None = None) -> None:
    """A SQLite database file must be there already (PostgreSQL: the server says so).

    For every command but `db upgrade` and `restore`: a mistyped path is reported, not
    created empty. Exit 1, like a database without the schema: the remedy is the same.
    """
    parsed = parse_url(url)
    path = sqlite_path(parsed) if is_sqlite(parsed) else None
    if path is not None and not path.is_file():
        raise SchemaVersionError(f"no database at {path}: run `powerwatch db upgrade`")


def connect_timeout_s(busy_timeout_ms: int) -> int:
    """PostgreSQL's connect_timeout for a busy timeout: whole seconds, at least 2 (libpq)."""
    return max(2, math.ceil(busy_timeout_ms / 1000))


def _where(parsed: URL) -> str:
    """How a failure names the database: the SQLite file, or the URL without password."""
    path = sqlite_path(parsed) if is_sqlite(parsed) else None
    return str(path) if path is not None else parsed.render_as_string()


def _sqlite_pragmas(busy_timeout_ms: int, *, new_file: bool = False) -> list[str]:
    # Archive (powerwatch/archive/writer.py) gives deleted pages back in small steps with
    # `PRAGMA incremental_vacuum`. auto_vacuum can only be chosen while the file has no
    # page yet, before journal_mode=WAL writes the first one; on an existing file the
    # pragma would need the write lock (a connect would fail while a writer holds it),
    # so it is sent to new files only (`new_file`: `PRAGMA page_count` is 0).
    first = ["PRAGMA auto_vacuum=INCREMENTAL"] if new_file else []
    return [
        # First: every pragma after it may need a lock (journal_mode=WAL on a file another
        # connection is opening), and must then wait instead of failing at once.
        f"PRAGMA busy_timeout={int(busy_timeout_ms)}",
        *first,
        "PRAGMA journal_mode=WAL",
        "PRAGMA synchronous=NORMAL",
        # Whenever SQLite resets the -wal file (all of it checkpointed, no reader left on
        # it), it truncates it to this (64 MiB): a burst's WAL does not stay (db/wal.py).
        "PRAGMA journal_size_limit=67108864",
        "PRAGMA foreign_keys=ON",
        # Staging tables of a bulk load live in memory, and the key's B-tree pages
        # stay cached across a load's lookups (16 MiB; the default is 2 MiB; more bought no
        # speed and cost memory per connection: docs/benchmarks.md, "Tuning decisions").
        "PRAGMA temp_store=MEMORY",
        "PRAGMA cache_size=-16384",
    ]


def make_engine(url: str | None = None, *, create: bool = True) -> Engine:
    """Build the engine; for SQLite, create the file's folder and apply the pragmas.

    `create=False`: a SQLite file that is not there is refused (`require_database`).
    """
    parsed = parse_url(url)
    busy_timeout_ms = get_settings().busy_timeout_ms
    kwargs: dict[str, Any] = {}
    if is_sqlite(parsed):
        path = sqlite_path(parsed)
        if not create:
            require_database(parsed.render_as_string(hide_password=False))
        elif path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        kwargs["connect_args"] = {"timeout": busy_timeout_ms / 1000}
        kwargs["poolclass"] = NullPool
    else:
        kwargs["connect_args"] = {"connect_timeout": connect_timeout_s(busy_timeout_ms)}
    try:
        engine = create_engine(parsed, **kwargs)
    except NoSuchModuleError as exc:
        raise InputError(f"no driver for database URL {parsed.render_as_string()!r}") from exc
    where = _where(parsed)

    @event.listens_for(engine, "handle_error")
    def _named(context: Any) -> None:
        # Damaged / disk full / I/O error / busy: raised by name (SQLAlchemy then skips its
        # own wrapping); any other driver error stays SQLAlchemy's.
        failure = named_failure(context.original_exception, where)
        if failure is not None:
            raise failure from context.original_exception

    if is_sqlite(parsed):

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            new_file = cursor.execute("PRAGMA page_count").fetchone()[0] == 0
            for pragma in _sqlite_pragmas(busy_timeout_ms, new_file=new_file):
                cursor.execute(pragma)
            cursor.close()

    else:

        @event.listens_for(engine, "connect")
        def _on_pg_connect(dbapi_connection: Any, _record: Any) -> None:
            # Session-wide: no statement (LOCK TABLE, DDL of a migration, a read behind an
            # ACCESS EXCLUSIVE lock) waits for a lock longer than the busy timeout.
            with dbapi_connection.cursor() as cursor:
                cursor.execute(f"SET lock_timeout = {int(busy_timeout_ms)}")
            dbapi_connection.commit()

    return engine


def check_connection(engine: Engine) -> None:
    """Fail with one line if the database cannot be reached."""
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except DBAPIError as exc:
        raise classify(exc, f"cannot use {engine.url.render_as_string()}") from exc
    except DatabaseUnavailable as exc:  # named by the engine already: say what it was doing
        raise DatabaseUnavailable(f"cannot connect: {exc}") from exc


def check_integrity(engine: Engine) -> None:
    """SQLite: `PRAGMA quick_check` (every page read once; O(file size)), so a damaged
    file is `DatabaseCorrupt` even where no query would touch the damage yet. For
    `db upgrade` (rare, and about to rewrite the schema); PostgreSQL checks its own pages.
    """
    if engine.dialect.name != "sqlite":
        return
    with engine.connect() as conn:
        found = [str(row[0]) for row in conn.execute(text("PRAGMA quick_check"))]
    if found != ["ok"]:
        # One row may hold many lines ("*** in database main ***", then one per problem).
        problems = [line for row in found for line in row.splitlines()]
        problems = [line for line in problems if line.strip() and not line.startswith("***")]
        first = problems[0] if problems else "no answer"
        more = f" and {len(problems) - 1} more" if len(problems) > 1 else ""
        raise DatabaseCorrupt(
            f"{_where(engine.url)}: the database is damaged ({first}{more}); restore the "
            "newest backup, then re-load what landed since (README: Recovering)"
        )


@contextmanager
def bulk_connection(url: str | None = None, *, create: bool = True) -> Iterator[BulkConnection]:
    """An ADBC DB-API connection to the same database, for Arrow bulk loads.

    SQLite: opened in autocommit mode so the pragmas apply; the caller issues
    `BEGIN IMMEDIATE` / `COMMIT` itself. PostgreSQL: a normal transaction, with
    `lock_timeout` set for the session and a `connect_timeout`.
    `create=False`: a SQLite file that is not there is refused, not created.
    """
    parsed = parse_url(url)
    busy_timeout_ms = get_settings().busy_timeout_ms
    if not create:
        require_database(parsed.render_as_string(hide_password=False))
    try:
        if is_sqlite(parsed):
            import adbc_driver_sqlite.dbapi as adbc_sqlite

            path = sqlite_path(parsed)
            conn = adbc_sqlite.connect(str(path) if path else ":memory:", autocommit=True)
            cursor = conn.cursor()
            # The busy timeout before anything that reads: `page_count` met a checkpoint
            # of another process (two loaders ending together) and failed at once.
            cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
            cursor.fetchall()
            cursor.execute("PRAGMA page_count")
            new_file = cursor.fetchall()[0][0] == 0
            for pragma in _sqlite_pragmas(busy_timeout_ms, new_file=new_file):
                cursor.execute(pragma)
                cursor.fetchall()
            cursor.close()
        else:
            import adbc_driver_postgresql.dbapi as adbc_pg

            libpq = parsed.set(
                drivername="postgresql",
                query=dict(parsed.query)
                | {"connect_timeout": str(connect_timeout_s(busy_timeout_ms))},
            ).render_as_string(hide_password=False)
            conn = adbc_pg.connect(libpq)
            with conn.cursor() as cursor:
                cursor.execute(f"SET lock_timeout = {int(busy_timeout_ms)}")
            conn.commit()
    except Exception as exc:
        raise classify(exc, f"cannot connect to {_where(parsed)}") from exc
    try:
        yield BulkConnection(
            conn, sqlite=is_sqlite(parsed), lock_timeout_ms=busy_timeout_ms, where=_where(parsed)
        )
    finally:
        conn.close()
