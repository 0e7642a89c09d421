"""Schema versions: upgrade, downgrade, and refusing a database newer than this code.

Alembic is imported only where it works (upgrade, downgrade, wording a refusal): every job
checks the schema first, and importing Alembic costs about 0.5 s of CPU per process
(docs/benchmarks.md, CLI fixed costs). A current database is recognised by one query.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError

from powerwatch.core.errors import SchemaVersionError

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS = Path(__file__).with_name("migrations")


def _config() -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(_config()).get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def _known(revision: str) -> bool:
    from alembic.script import ScriptDirectory

    return any(
        s.revision == revision for s in ScriptDirectory.from_config(_config()).walk_revisions()
    )


def _refuse_unknown(engine: Engine) -> None:
    current = current_revision(engine)
    if current is not None and not _known(current):
        raise SchemaVersionError(
            f"database schema version {current!r} is newer than this powerwatch "
            f"(knows up to {head_revision()!r}); upgrade powerwatch, do not downgrade the database"
        )


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Create or upgrade the schema; idempotent. Refuses a database newer than the code."""
    _refuse_unknown(engine)
    _run(engine, "upgrade", revision)


def downgrade(engine: Engine, revision: str) -> None:
    _refuse_unknown(engine)
    _run(engine, "downgrade", revision)


def _run(engine: Engine, action: str, revision: str) -> None:
    from alembic import command

    config = _config()
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        getattr(command, action)(config, revision)


def require_current(engine: Engine) -> None:
    """For every job: the database must be exactly at the code's schema version."""
    if _stored_revision(engine) == declared_head():
        return  # the usual case, without Alembic
    current = current_revision(engine)
    head = head_revision()
    if current == head:
        return
    if current is None:
        raise SchemaVersionError("database has no powerwatch schema: run `powerwatch db upgrade`")
    _refuse_unknown(engine)
    raise SchemaVersionError(
        f"database schema {current!r} is older than this code ({head!r}): "
        "run `powerwatch db upgrade`"
    )


def _stored_revision(engine: Engine) -> str | None:
    """The revision recorded in the database, or None where there is none to read (no
    table yet: Alembic's own reading then words what is wrong)."""
    try:
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT version_num FROM alembic_version")).all()
    except DBAPIError:
        return None
    return str(rows[0][0]) if len(rows) == 1 else None


def declared_head() -> str | None:
    """The head revision read from the migration files (`db.reader.head_revision`)."""
    from db.reader import head_revision as from_files

    return from_files()
