"""Energy accounting: meter events, statements, wraps/flags/first values in the rollups.

Every hour whose raw readings are present is queued again (a mark of 0 readings, batch
0), so the next `refresh_rollups` recomputes it under the new rules: deltas across gaps
counted, resets counting from 0, wraps. Hours whose readings were archived keep their
rollups as they were (their raw deltas are gone).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

HOUR_MS = 3_600_000
MUX_COLUMNS = [f"mux_power{i}" for i in range(1, 5)]


def upgrade() -> None:
    op.add_column("stations", sa.Column("meter_modulus", sa.Double))
    for table in ("rollup_hourly", "rollup_daily"):
        with op.batch_alter_table(table) as batch:
            for name in MUX_COLUMNS:
                batch.add_column(
                    sa.Column(f"{name}_wraps", sa.Integer, nullable=False, server_default="0")
                )
                batch.add_column(
                    sa.Column(f"{name}_flagged", sa.Integer, nullable=False, server_default="0")
                )
                batch.add_column(sa.Column(f"{name}_first", sa.Double))
                batch.add_column(sa.Column(f"{name}_first_ts", sa.BigInteger))
    op.create_table(
        "energy_events",
        sa.Column("station_id", sa.Integer, sa.ForeignKey("stations.id"), nullable=False),
        sa.Column("meter", sa.Integer, nullable=False),
        sa.Column("ts", sa.BigInteger, nullable=False),
        sa.Column("prev_ts", sa.BigInteger, nullable=False),
        sa.Column("prev_kwh", sa.Double, nullable=False),
        sa.Column("value_kwh", sa.Double, nullable=False),
        sa.Column("kind", sa.String(12), nullable=False),
        sa.Column("gap", sa.Integer, nullable=False),
        sa.Column("spread", sa.Integer, nullable=False),
        sa.Column("kwh", sa.Double, nullable=False),
        sa.Column("reason", sa.Text, nullable=False, server_default=""),
        sa.PrimaryKeyConstraint("station_id", "ts", "meter", name="pk_energy_events"),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "energy_statements",
        sa.Column("month", sa.String(7), nullable=False),
        sa.Column("tz", sa.String(64), nullable=False),
        sa.Column("revision", sa.Integer, nullable=False),
        sa.Column("station_id", sa.Integer, sa.ForeignKey("stations.id"), nullable=False),
        sa.Column("broadcaster", sa.String(16), nullable=False),
        sa.Column("period_start", sa.BigInteger, nullable=False),
        sa.Column("period_end", sa.BigInteger, nullable=False),
        sa.Column("opening_ts", sa.BigInteger),
        sa.Column("opening_kwh", sa.Double),
        sa.Column("closing_ts", sa.BigInteger),
        sa.Column("closing_kwh", sa.Double),
        sa.Column("consumption_kwh", sa.Double, nullable=False),
        sa.Column("estimated_kwh", sa.Double, nullable=False),
        sa.Column("resets", sa.Integer, nullable=False),
        sa.Column("wraps", sa.Integer, nullable=False),
        sa.Column("flagged", sa.Integer, nullable=False),
        sa.Column("completeness", sa.Double, nullable=False),
        sa.Column("share", sa.Double),
        sa.Column(
            "issued_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.text("CURRENT_TIMESTAMP"),
        ),
        sa.PrimaryKeyConstraint(
            "month", "tz", "revision", "station_id", "broadcaster", name="pk_energy_statements"
        ),
    )
    # Recompute every hour still in power_readings under the new rules (see above).
    op.execute(
        "INSERT INTO rollup_dirty (station_id, hour_ts, batch_id, readings) "
        f"SELECT DISTINCT station_id, (ts / {HOUR_MS}) * {HOUR_MS}, 0, 0 FROM power_readings"
    )


def downgrade() -> None:
    op.drop_table("energy_statements")
    op.drop_table("energy_events")
    for table in ("rollup_hourly", "rollup_daily"):
        with op.batch_alter_table(table) as batch:
            for name in MUX_COLUMNS:
                for suffix in ("first_ts", "first", "flagged", "wraps"):
                    batch.drop_column(f"{name}_{suffix}")
    # Plain DROP COLUMN (SQLite >= 3.35): a batch copy of `stations` would break the
    # foreign keys that point at it.
    op.execute("ALTER TABLE stations DROP COLUMN meter_modulus")
