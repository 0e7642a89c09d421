"""Initial schema: stations, provenance, load ledger, readings keyed by (station, ts), conflicts.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

CHANNEL_COLUMNS = [f"active_power{i}" for i in range(1, 7)] + [f"mux_power{i}" for i in range(1, 5)]


def _now() -> sa.sql.elements.TextClause:
    return sa.text("CURRENT_TIMESTAMP")


def upgrade() -> None:
    op.create_table(
        "stations",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
        sa.Column("uuid", sa.String(36), nullable=False, unique=True),
        sa.Column("ip_address", sa.String(64), nullable=False),
        sa.Column("scene", sa.String(200), nullable=False, server_default=""),
        sa.Column("url", sa.String(500), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=_now()),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=_now()),
    )
    op.create_table(
        "data_sources",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("reference", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=_now()),
    )
    op.create_table(
        "load_batches",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("source_id", sa.Integer, sa.ForeignKey("data_sources.id"), nullable=False),
        sa.Column("input_name", sa.Text, nullable=False),
        sa.Column("content_hash", sa.String(64), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        *(
            sa.Column(name, sa.BigInteger, nullable=False, server_default="0")
            for name in ("rows_in", "inserted", "duplicates", "conflicts", "rejected")
        ),
        sa.Column("rejected_by_reason", sa.Text, nullable=False, server_default="{}"),
        sa.Column("error", sa.Text),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
    )
    op.create_index("ix_load_batches_content_hash", "load_batches", ["content_hash"])
    op.create_table(
        "power_readings",
        sa.Column("station_id", sa.Integer, sa.ForeignKey("stations.id"), nullable=False),
        sa.Column("ts", sa.BigInteger, nullable=False),
        *(sa.Column(name, sa.Double) for name in CHANNEL_COLUMNS),
        sa.Column("batch_id", sa.Integer, sa.ForeignKey("load_batches.id"), nullable=False),
        sa.PrimaryKeyConstraint("station_id", "ts", name="pk_power_readings"),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "reading_conflicts",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("station_id", sa.Integer, sa.ForeignKey("stations.id"), nullable=False),
        sa.Column("ts", sa.BigInteger, nullable=False),
        sa.Column("batch_id", sa.Integer, sa.ForeignKey("load_batches.id"), nullable=False),
        sa.Column("stored_values", sa.Text, nullable=False),
        sa.Column("incoming_values", sa.Text, nullable=False),
    )
    op.create_index("ix_reading_conflicts_station_ts", "reading_conflicts", ["station_id", "ts"])


def downgrade() -> None:
    op.drop_index("ix_reading_conflicts_station_ts", "reading_conflicts")
    op.drop_table("reading_conflicts")
    op.drop_table("power_readings")
    op.drop_index("ix_load_batches_content_hash", "load_batches")
    op.drop_table("load_batches")
    op.drop_table("data_sources")
    op.drop_table("stations")
