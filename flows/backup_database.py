"""Flow `backup-database`: one verified online backup, then rotation."""

from __future__ import annotations

from pathlib import Path
from typing import cast

from prefect import State, flow
from prefect.artifacts import create_table_artifact
from prefect.states import Completed, Failed

from db.engine import make_engine
from db.migrate import require_current
from flows.naming import stamped
from powerwatch.backup.snapshots import Manifest
from powerwatch.core.diskguard import low_space
from powerwatch.core.settings import get_settings
from tasks.backup import backup_database_task, rotate_backups_task


@flow(name="backup-database", flow_run_name=stamped("backup-database"), log_prints=True)
def backup_database() -> State:
    """Runbook: check the schema, back up (checked before it counts), rotate, publish.
    A named failure (disk full) fails the run with its one line (the error as data)."""
    settings = get_settings()
    if (low := low_space(settings, "backup")) is not None:
        return Failed(message=str(low), data=low)
    require_current(make_engine(settings.database_url))
    made = backup_database_task(return_state=True)
    if not made.is_completed():
        return Failed(message=made.message, data=made.result(raise_on_failure=False))
    _path, manifest = cast(tuple[Path, Manifest], made.result())
    rotated = rotate_backups_task(return_state=True)
    if not rotated.is_completed():
        return Failed(message=rotated.message, data=rotated.result(raise_on_failure=False))
    removed = cast(list[str], rotated.result())
    create_table_artifact(
        key="backup-database",
        table=[
            {  # what an operator looks at first; fits the UI at 1,440 px
                "file": manifest.file,
                "check": manifest.integrity_check,
                "readings": manifest.rows.get("power_readings"),
                "bytes": manifest.bytes,
                "database bytes": manifest.raw_bytes,
                "rotated out": len(removed),
                "seconds": round(manifest.seconds, 2),
            }
        ],
        description=f"backup {manifest.file}; {len(removed)} old backup(s) rotated out",
    )
    return Completed(message=f"backup {manifest.file}", data=manifest)
