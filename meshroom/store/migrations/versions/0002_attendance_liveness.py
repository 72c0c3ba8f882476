"""Attendance liveness: ``last_seen_at`` (heartbeats), ``closed_by_recovery``, open-row index.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Plain ADD COLUMNs (nullable, or NOT NULL with a default): no table rewrite on
    # either backend, so this is quick on a large attendance table.
    op.add_column("attendance", sa.Column("last_seen_at", sa.DateTime(timezone=True)))
    op.add_column(
        "attendance",
        sa.Column("closed_by_recovery", sa.Boolean, nullable=False, server_default=sa.false()),
    )
    op.create_index(
        "ix_attendance_open",
        "attendance",
        ["meeting_id"],
        sqlite_where=sa.text("left_at IS NULL"),
        postgresql_where=sa.text("left_at IS NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_attendance_open", table_name="attendance")
    with op.batch_alter_table("attendance") as batch:
        batch.drop_column("closed_by_recovery")
        batch.drop_column("last_seen_at")
