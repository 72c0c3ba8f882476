"""Table definitions (SQLAlchemy Core): the schema at the newest migration.

The database itself is created and changed only by the Alembic migrations in
``meshroom/store/migrations/``; a change here needs a new revision there (a test
compares the two on every backend).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

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
    TypeDecorator,
    UniqueConstraint,
    false,
)

metadata = MetaData()


class UtcDateTime(TypeDecorator[dt.datetime]):
    """An aware UTC datetime on every backend.

    PostgreSQL keeps the instant (``timestamptz``) but hands it back in the
    session's time zone; SQLite keeps the wall-clock digits and drops the
    offset. Writing UTC and reading back UTC makes both behave the same. A naive
    datetime is taken to be UTC already (everything meshroom writes is).
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None or value.tzinfo is None:
            return value
        return value.astimezone(dt.UTC)

    def process_result_value(self, value: Any, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)  # type: ignore[no-any-return]
        return value.astimezone(dt.UTC)  # type: ignore[no-any-return]


meetings = Table(
    "meetings",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("title", String(200), nullable=False),
    Column("room_code", String(16), nullable=False, unique=True),
    Column("host_emp_id", String(128), nullable=False),
    Column("status", String(16), nullable=False, index=True),
    Column("scheduled_at", UtcDateTime()),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("started_at", UtcDateTime()),
    Column("ended_at", UtcDateTime()),
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
    Column("banned_at", UtcDateTime()),
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
    Column("joined_at", UtcDateTime(), nullable=False),
    Column("left_at", UtcDateTime()),
    Column("duration_seconds", Float),
    Column("leave_reason", String(32)),
    # Written for live peers every heartbeat; crash recovery closes a dangling row here.
    Column("last_seen_at", UtcDateTime()),
    # True when the row was closed at the next start after a crash, not by a real leave.
    Column("closed_by_recovery", Boolean, nullable=False, default=False, server_default=false()),
    Index("ix_attendance_meeting", "meeting_id"),
    Index("ix_attendance_emp_joined", "emp_id", "joined_at"),
)

# Open rows only: what heartbeats touch and crash recovery scans.
Index(
    "ix_attendance_open",
    attendance.c.meeting_id,
    sqlite_where=attendance.c.left_at.is_(None),
    postgresql_where=attendance.c.left_at.is_(None),
)

# Webhooks (revision 0003): endpoints, and the transactional outbox — events written
# in the transaction of the change they describe, one delivery row per endpoint.

webhook_endpoints = Table(
    "webhook_endpoints",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("url", String(2000), nullable=False),
    Column("secret", String(200), nullable=False),
    # Comma-separated event types the endpoint wants; NULL = every type.
    Column("event_types", Text),
    Column("source", String(16), nullable=False),
    Column("enabled", Boolean, nullable=False),
    Column("description", String(500)),
    Column("created_at", UtcDateTime(), nullable=False),
)

webhook_events = Table(
    "webhook_events",
    metadata,
    # Commit order within a meeting: every transaction that writes events of a meeting
    # holds that meeting's row lock, so a later seq of one meeting commits later.
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("id", String(40), nullable=False, unique=True),  # the webhook-id header
    Column("type", String(40), nullable=False),
    Column("meeting_id", String(36), ForeignKey("meetings.id"), nullable=False),
    Column("occurred_at", UtcDateTime(), nullable=False),
    Column("data", Text, nullable=False),  # JSON
)

webhook_deliveries = Table(
    "webhook_deliveries",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("event_seq", Integer, ForeignKey("webhook_events.seq"), nullable=False),
    Column(
        "endpoint_id",
        String(64),
        ForeignKey("webhook_endpoints.id", ondelete="CASCADE"),
        nullable=False,
    ),
    # The event's meeting, here too: the per-meeting order check reads only this table.
    Column("meeting_id", String(36), nullable=False),
    Column("status", String(16), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("next_attempt_at", UtcDateTime(), nullable=False),
    # A worker attempting the delivery holds it until lease_until (a SIGKILLed worker's
    # lease runs out and another attempt follows: at-least-once).
    Column("lease_until", UtcDateTime()),
    Column("lease_token", String(32)),
    Column("last_attempt_at", UtcDateTime()),
    Column("last_status_code", Integer),
    Column("last_error", String(500)),
    Column("delivered_at", UtcDateTime()),
    UniqueConstraint("event_seq", "endpoint_id", name="uq_webhook_deliveries_event_endpoint"),
)

# Pending deliveries only: what the worker claims and the per-meeting order check reads.
Index(
    "ix_webhook_deliveries_pending",
    webhook_deliveries.c.endpoint_id,
    webhook_deliveries.c.meeting_id,
    webhook_deliveries.c.event_seq,
    sqlite_where=webhook_deliveries.c.status == "pending",
    postgresql_where=webhook_deliveries.c.status == "pending",
)
Index("ix_webhook_deliveries_status", webhook_deliveries.c.status, webhook_deliveries.c.id)
