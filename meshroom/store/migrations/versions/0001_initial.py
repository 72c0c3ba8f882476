"""The schema meshroom 0.1 created with ``metadata.create_all``: meetings, participants, attendance.

Revision ID: 0001
Revises:
Create Date: 2026-11-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "meetings",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("title", sa.String(200), nullable=False),
        sa.Column("room_code", sa.String(16), nullable=False, unique=True),
        sa.Column("host_emp_id", sa.String(128), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("scheduled_at", sa.DateTime(timezone=True)),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True)),
        sa.Column("ended_at", sa.DateTime(timezone=True)),
    )
    op.create_index("ix_meetings_status", "meetings", ["status"])
    op.create_table(
        "participants",
        sa.Column("meeting_id", sa.String(36), sa.ForeignKey("meetings.id"), primary_key=True),
        sa.Column("emp_id", sa.String(128), primary_key=True),
        sa.Column("display_name", sa.String(200), nullable=False),
        sa.Column("last_role", sa.String(16), nullable=False),
        sa.Column("role_override", sa.String(16)),
        sa.Column("banned", sa.Boolean, nullable=False),
        sa.Column("banned_at", sa.DateTime(timezone=True)),
        sa.Column("banned_by", sa.String(128)),
        sa.Column("ban_reason", sa.Text),
    )
    op.create_table(
        "attendance",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("meeting_id", sa.String(36), sa.ForeignKey("meetings.id"), nullable=False),
        sa.Column("emp_id", sa.String(128), nullable=False),
        sa.Column("display_name", sa.String(200), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("joined_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("left_at", sa.DateTime(timezone=True)),
        sa.Column("duration_seconds", sa.Float),
        sa.Column("leave_reason", sa.String(32)),
    )
    op.create_index("ix_attendance_meeting", "attendance", ["meeting_id"])
    op.create_index("ix_attendance_emp_joined", "attendance", ["emp_id", "joined_at"])


def downgrade() -> None:
    op.drop_table("attendance")
    op.drop_table("participants")
    op.drop_table("meetings")
