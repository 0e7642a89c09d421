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
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError
from sqlalchemy.pool import NullPool

from db.bulk import BulkConnection
from db.failures import classify
from powerwatch.errors import InputError
from powerwatch.settings import get_settings


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


def _sqlite_pragmas(busy_timeout_ms: int, *, new_file: bool = False) -> list[str]:
    # Archive (powerwatch/archive.py) gives deleted pages back in small steps with
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
        "PRAGMA foreign_keys=ON",
        # Staging tables of a bulk load live in memory, and the key's B-tree pages
        # stay cached across a load's lookups (16 MiB; the default is 2 MiB; 64 MiB bought
        # no speed in bench_load and cost 60 MB of peak memory per connection).
        "PRAGMA temp_store=MEMORY",
        "PRAGMA cache_size=-16384",
    ]


def make_engine(url: str | None = None) -> Engine:
    """Build the engine; for SQLite, create the file's folder and apply the pragmas."""
    parsed = parse_url(url)
    kwargs: dict[str, Any] = {}
    if is_sqlite(parsed):
        path = sqlite_path(parsed)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        kwargs["connect_args"] = {"timeout": get_settings().busy_timeout_ms / 1000}
        kwargs["poolclass"] = NullPool
    try:
        engine = create_engine(parsed, **kwargs)
    except NoSuchModuleError as exc:
        raise InputError(f"no driver for database URL {parsed.render_as_string()!r}") from exc
    if is_sqlite(parsed):
        busy_timeout_ms = get_settings().busy_timeout_ms

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            new_file = cursor.execute("PRAGMA page_count").fetchone()[0] == 0
            for pragma in _sqlite_pragmas(busy_timeout_ms, new_file=new_file):
                cursor.execute(pragma)
            cursor.close()

    return engine


def check_connection(engine: Engine) -> None:
    """Fail with one line if the database cannot be reached."""
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except DBAPIError as exc:
        raise classify(exc, f"cannot use {engine.url.render_as_string()}") from exc


@contextmanager
def bulk_connection(url: str | None = None) -> Iterator[BulkConnection]:
    """An ADBC DB-API connection to the same database, for Arrow bulk loads.

    SQLite: opened in autocommit mode so the pragmas apply; the caller issues
    `BEGIN IMMEDIATE` / `COMMIT` itself. PostgreSQL: a normal transaction.
    """
    parsed = parse_url(url)
    try:
        if is_sqlite(parsed):
            import adbc_driver_sqlite.dbapi as adbc_sqlite

            path = sqlite_path(parsed)
            conn = adbc_sqlite.connect(str(path) if path else ":memory:", autocommit=True)
            cursor = conn.cursor()
            cursor.execute("PRAGMA page_count")
            new_file = cursor.fetchall()[0][0] == 0
            for pragma in _sqlite_pragmas(get_settings().busy_timeout_ms, new_file=new_file):
                cursor.execute(pragma)
                cursor.fetchall()
            cursor.close()
        else:
            import adbc_driver_postgresql.dbapi as adbc_pg

            libpq = parsed.set(drivername="postgresql").render_as_string(hide_password=False)
            conn = adbc_pg.connect(libpq)
    except Exception as exc:
        raise classify(exc, f"cannot connect to {parsed.render_as_string()}") from exc
    try:
        yield BulkConnection(conn, sqlite=is_sqlite(parsed))
    finally:
        conn.close()
