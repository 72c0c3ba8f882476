"""The events the store writes to the webhook outbox, built from what a transaction changed.

Each builder returns an :class:`OutboxEvent` whose ``data`` is the JSON object a
webhook receiver gets under ``data`` (camelCase keys, ISO 8601 UTC times ending in
``Z``). The same shapes are declared as pydantic models in
:mod:`meshroom.webhooks.payloads` (for the OpenAPI document and the docs); a test
validates every event the store writes against them, so the two cannot drift.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from typing import Any

from ..roles import Role
from .base import Meeting, WebhookEventType


@dataclass(frozen=True, slots=True)
class OutboxEvent:
    type: WebhookEventType
    meeting_id: str
    occurred_at: dt.datetime
    data: dict[str, Any]


def new_event_id() -> str:
    """A webhook-id: unique per event, the same on every attempt to every endpoint."""
    return "msg_" + uuid.uuid4().hex


def iso(value: dt.datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:  # SQLite hands back naive UTC
        value = value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def _meeting(meeting: Meeting) -> dict[str, Any]:
    return {
        "meetingId": meeting.id,
        "title": meeting.title,
        "roomCode": meeting.room_code,
        "hostEmpId": meeting.host_emp_id,
        "status": meeting.status.value,
        "scheduledAt": iso(meeting.scheduled_at),
        "createdAt": iso(meeting.created_at),
        "startedAt": iso(meeting.started_at),
        "endedAt": iso(meeting.ended_at),
    }


def meeting_started(meeting: Meeting) -> OutboxEvent:
    assert meeting.started_at is not None
    return OutboxEvent(
        WebhookEventType.MEETING_STARTED, meeting.id, meeting.started_at, _meeting(meeting)
    )


def meeting_ended(meeting: Meeting, by: str | None) -> OutboxEvent:
    assert meeting.ended_at is not None
    data = {**_meeting(meeting), "by": by}
    return OutboxEvent(WebhookEventType.MEETING_ENDED, meeting.id, meeting.ended_at, data)


def participant_joined(
    *,
    meeting_id: str,
    attendance_id: int,
    emp_id: str,
    display_name: str,
    role: Role,
    joined_at: dt.datetime,
) -> OutboxEvent:
    return OutboxEvent(
        WebhookEventType.PARTICIPANT_JOINED,
        meeting_id,
        joined_at,
        {
            "meetingId": meeting_id,
            "attendanceId": attendance_id,
            "empId": emp_id,
            "displayName": display_name,
            "role": role.value,
            "joinedAt": iso(joined_at),
        },
    )


@dataclass(frozen=True, slots=True)
class ClosedRow:
    """An attendance row as one transaction closed it."""

    attendance_id: int
    meeting_id: str
    emp_id: str
    display_name: str
    role: str
    joined_at: dt.datetime
    left_at: dt.datetime
    reason: str
    duration_seconds: float
    last_seen_at: dt.datetime | None = None
    closed_by_recovery: bool = False


def row_closed(row: ClosedRow) -> list[OutboxEvent]:
    """A closed row is two events: the participant left, and its attendance is final."""
    person = {
        "meetingId": row.meeting_id,
        "attendanceId": row.attendance_id,
        "empId": row.emp_id,
        "displayName": row.display_name,
        "role": row.role,
        "joinedAt": iso(row.joined_at),
        "leftAt": iso(row.left_at),
    }
    return [
        OutboxEvent(
            WebhookEventType.PARTICIPANT_LEFT,
            row.meeting_id,
            row.left_at,
            {**person, "reason": row.reason, "durationSeconds": row.duration_seconds},
        ),
        OutboxEvent(
            WebhookEventType.ATTENDANCE_CLOSED,
            row.meeting_id,
            row.left_at,
            {
                **person,
                "durationSeconds": row.duration_seconds,
                "leaveReason": row.reason,
                "lastSeenAt": iso(row.last_seen_at),
                "closedByRecovery": row.closed_by_recovery,
            },
        ),
    ]


def role_changed(
    *,
    meeting_id: str,
    emp_id: str,
    display_name: str,
    role: Role,
    previous: Role,
    reason: str | None,
    by: str | None,
    at: dt.datetime,
) -> OutboxEvent:
    return OutboxEvent(
        WebhookEventType.PARTICIPANT_ROLE_CHANGED,
        meeting_id,
        at,
        {
            "meetingId": meeting_id,
            "empId": emp_id,
            "displayName": display_name,
            "role": role.value,
            "previousRole": previous.value,
            "reason": reason,
            "by": by,
            "changedAt": iso(at),
        },
    )


def banned(
    *, meeting_id: str, emp_id: str, by: str | None, reason: str | None, at: dt.datetime
) -> OutboxEvent:
    return OutboxEvent(
        WebhookEventType.PARTICIPANT_BANNED,
        meeting_id,
        at,
        {"meetingId": meeting_id, "empId": emp_id, "bannedAt": iso(at), "by": by, "reason": reason},
    )


def unbanned(*, meeting_id: str, emp_id: str, by: str | None, at: dt.datetime) -> OutboxEvent:
    return OutboxEvent(
        WebhookEventType.PARTICIPANT_UNBANNED,
        meeting_id,
        at,
        {"meetingId": meeting_id, "empId": emp_id, "unbannedAt": iso(at), "by": by},
    )
