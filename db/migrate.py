"""Schema versions: upgrade, downgrade, and refusing a database newer than this code."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

from powerwatch.errors import SchemaVersionError

MIGRATIONS = Path(__file__).with_name("migrations")


def _config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(_config()).get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def _known(revision: str) -> bool:
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
    config = _config()
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        getattr(command, action)(config, revision)


def require_current(engine: Engine) -> None:
    """For every job: the database must be exactly at the code's schema version."""
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
