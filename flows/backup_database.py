"""Flow `backup-database`: one verified online backup, then rotation."""

from __future__ import annotations

from prefect import flow
from prefect.artifacts import create_table_artifact

from db.engine import make_engine
from db.migrate import require_current
from flows.naming import stamped
from powerwatch.backup import Manifest
from powerwatch.settings import get_settings
from tasks.backup import backup_database_task, rotate_backups_task


@flow(name="backup-database", flow_run_name=stamped("backup-database"), log_prints=True)
def backup_database() -> Manifest:
    """Runbook: check the schema, back up (checked before it counts), rotate, publish."""
    require_current(make_engine(get_settings().database_url))
    _path, manifest = backup_database_task()
    removed = rotate_backups_task()
    create_table_artifact(
        key="backup-database",
        table=[
            {
                "file": manifest.file,
                "bytes": manifest.bytes,
                "database bytes": manifest.raw_bytes,
                "readings": manifest.rows.get("power_readings"),
                "check": manifest.integrity_check,
                "seconds": manifest.seconds,
                "rotated out": len(removed),
            }
        ],
        description=f"backup {manifest.file}; {len(removed)} old backup(s) rotated out",
    )
    return manifest
