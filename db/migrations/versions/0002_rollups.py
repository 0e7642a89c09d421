"""Rollups: hourly and daily per-station rollups kept forever, and their work queue.

Existing readings are queued (one mark per station, hour and batch) so that the
first `refresh_rollups` builds the rollups of everything already stored.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

HOUR_MS = 3_600_000
CHANNEL_COLUMNS = [f"active_power{i}" for i in range(1, 7)] + [f"mux_power{i}" for i in range(1, 5)]
MUX_COLUMNS = [f"mux_power{i}" for i in range(1, 5)]


def _rollup_columns() -> list[sa.Column[object]]:
    # Frozen copy of db.tables.rollup_columns() as of this revision.
    columns: list[sa.Column[object]] = [
        sa.Column("station_id", sa.Integer, sa.ForeignKey("stations.id"), nullable=False),
        sa.Column("start_ts", sa.BigInteger, nullable=False),
        sa.Column("samples", sa.BigInteger, nullable=False),
        sa.Column("first_ts", sa.BigInteger, nullable=False),
        sa.Column("last_ts", sa.BigInteger, nullable=False),
        sa.Column("normal_interval_ms", sa.Double),
    ]
    for name in CHANNEL_COLUMNS:
        columns += [
            sa.Column(f"{name}_count", sa.BigInteger, nullable=False),
            sa.Column(f"{name}_sum", sa.Double),
            sa.Column(f"{name}_min", sa.Double),
            sa.Column(f"{name}_max", sa.Double),
        ]
    for name in MUX_COLUMNS:
        columns += [
            sa.Column(f"{name}_kwh", sa.Double, nullable=False),
            sa.Column(f"{name}_resets", sa.Integer, nullable=False),
            sa.Column(f"{name}_gaps", sa.Integer, nullable=False),
            sa.Column(f"{name}_last", sa.Double),
            sa.Column(f"{name}_last_ts", sa.BigInteger),
        ]
    return columns


def upgrade() -> None:
    for table in ("rollup_hourly", "rollup_daily"):
        op.create_table(
            table,
            *_rollup_columns(),
            sa.PrimaryKeyConstraint("station_id", "start_ts", name=f"pk_{table}"),
            sqlite_with_rowid=False,
        )
    op.create_table(
        "rollup_dirty",
        sa.Column("station_id", sa.Integer, nullable=False),
        sa.Column("hour_ts", sa.BigInteger, nullable=False),
        sa.Column("batch_id", sa.Integer, nullable=False),
        sa.Column("readings", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_rollup_dirty_station_hour", "rollup_dirty", ["station_id", "hour_ts"])
    # Queue what is already stored: the first refresh builds its rollups.
    op.execute(
        "INSERT INTO rollup_dirty (station_id, hour_ts, batch_id, readings) "
        f"SELECT station_id, (ts / {HOUR_MS}) * {HOUR_MS}, batch_id, count(*) "
        f"FROM power_readings GROUP BY station_id, ts / {HOUR_MS}, batch_id"
    )


def downgrade() -> None:
    op.drop_index("ix_rollup_dirty_station_hour", "rollup_dirty")
    op.drop_table("rollup_dirty")
    op.drop_table("rollup_daily")
    op.drop_table("rollup_hourly")
