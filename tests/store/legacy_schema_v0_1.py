"""meshroom 0.1's schema module, verbatim: what its databases were made from (create_all)."""

from __future__ import annotations

from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

metadata = MetaData()

meetings = Table(
    "meetings",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("title", String(200), nullable=False),
    Column("room_code", String(16), nullable=False, unique=True),
    Column("host_emp_id", String(128), nullable=False),
    Column("status", String(16), nullable=False, index=True),
    Column("scheduled_at", DateTime(timezone=True)),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("started_at", DateTime(timezone=True)),
    Column("ended_at", DateTime(timezone=True)),
)

participants = Table(
    "participants",
    metadata,
    Column("meeting_id", String(36), ForeignKey("meetings.id"), primary_key=True),
    Column("emp_id", String(128), primary_key=True),
    Column("display_name", String(200), nullable=False),
    Column("last_role", String(16), nullable=False),
    # Set when a host promotes or demotes this employee; wins over the token's role.
    Column("role_override", String(16)),
    Column("banned", Boolean, nullable=False, default=False),
    Column("banned_at", DateTime(timezone=True)),
    Column("banned_by", String(128)),
    Column("ban_reason", Text),
)

attendance = Table(
    "attendance",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("meeting_id", String(36), ForeignKey("meetings.id"), nullable=False),
    Column("emp_id", String(128), nullable=False),
    Column("display_name", String(200), nullable=False),
    Column("role", String(16), nullable=False),
    Column("joined_at", DateTime(timezone=True), nullable=False),
    Column("left_at", DateTime(timezone=True)),
    Column("duration_seconds", Float),
    Column("leave_reason", String(32)),
    Index("ix_attendance_meeting", "meeting_id"),
    Index("ix_attendance_emp_joined", "emp_id", "joined_at"),
)
