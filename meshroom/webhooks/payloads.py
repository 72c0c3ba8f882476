"""What a webhook receiver gets: the JSON body of every event type, as pydantic models.

Every body has the Standard Webhooks shape ``{"type", "timestamp", "data"}``:
``type`` is the event type, ``timestamp`` when it happened (not when it was
sent: the ``webhook-timestamp`` header says that), ``data`` the event's fields.
The store writes ``data`` (:mod:`meshroom.store.outbox`) in the transaction of
the change; :func:`body` wraps it. These models are what the OpenAPI document
and docs/webhooks.md show, and a test validates every event the store writes
against them.
"""

from __future__ import annotations

import datetime as dt
import enum
from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from ..roles import Role
from ..store.base import MeetingStatus, WebhookDelivery, WebhookEventType
from ..store.outbox import iso


class _Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", serialize_by_alias=True
    )


class LeaveReason(enum.StrEnum):
    """Why an attendance row closed: the peer's leave reason, or ``server-crash``."""

    LEFT = "left"
    DISCONNECTED = "disconnected"
    KICKED = "kicked"
    BANNED = "banned"
    MEETING_ENDED = "meeting-ended"
    REPLACED = "replaced"
    SLOW_CONSUMER = "slow-consumer"
    TIMEOUT = "timeout"
    RATE_LIMITED = "rate-limited"
    SERVER_SHUTDOWN = "server-shutdown"
    ERROR = "error"
    # Closed at the next start after a crash, at the row's last heartbeat.
    SERVER_CRASH = "server-crash"


Actor = Annotated[
    str | None,
    Field(description="who did it: a host's employee id, `api`, `cli`, or null (meshroom)"),
]


class MeetingData(_Model):
    meeting_id: str
    title: str
    room_code: str
    host_emp_id: str
    status: MeetingStatus
    scheduled_at: dt.datetime | None
    created_at: dt.datetime
    started_at: dt.datetime | None
    ended_at: dt.datetime | None


class MeetingEndedData(MeetingData):
    by: Actor


class ParticipantJoinedData(_Model):
    meeting_id: str
    attendance_id: int = Field(description="the attendance row this join opened")
    emp_id: str
    display_name: str
    role: Role = Field(description="the role the participant joined with")
    joined_at: dt.datetime


class ParticipantLeftData(ParticipantJoinedData):
    left_at: dt.datetime
    reason: LeaveReason
    duration_seconds: float = Field(description="leftAt - joinedAt, seconds")


class AttendanceClosedData(ParticipantJoinedData):
    left_at: dt.datetime
    duration_seconds: float = Field(description="the row's final duration, seconds")
    leave_reason: LeaveReason
    last_seen_at: dt.datetime | None = Field(
        description="the last heartbeat that found the participant present"
    )
    closed_by_recovery: bool = Field(
        description="true when closed at a start after a crash (leftAt = lastSeenAt, or "
        "joinedAt if no heartbeat came): the duration undercounts by up to one heartbeat"
    )


class RoleChangedData(_Model):
    meeting_id: str
    emp_id: str
    display_name: str
    role: Role
    previous_role: Role
    reason: str | None = Field(description="promote or demote")
    by: Actor
    changed_at: dt.datetime


class BannedData(_Model):
    meeting_id: str
    emp_id: str
    banned_at: dt.datetime
    by: Actor
    reason: str | None


class UnbannedData(_Model):
    meeting_id: str
    emp_id: str
    unbanned_at: dt.datetime
    by: Actor


class _Event(_Model):
    timestamp: dt.datetime = Field(description="when it happened (the header says when sent)")


class MeetingStartedEvent(_Event):
    """A meeting went LIVE."""

    type: Literal["meeting.started"]
    data: MeetingData


class MeetingEndedEvent(_Event):
    """A meeting ended; the participant.left / attendance.closed of everyone still present
    come before it."""

    type: Literal["meeting.ended"]
    data: MeetingEndedData


class ParticipantJoinedEvent(_Event):
    """A participant was admitted (an attendance row opened). A resume is not a new join."""

    type: Literal["participant.joined"]
    data: ParticipantJoinedData


class ParticipantLeftEvent(_Event):
    """A participant's attendance row closed: it left, was removed, or the meeting ended
    (or, found at the next start, the server had crashed: reason server-crash)."""

    type: Literal["participant.left"]
    data: ParticipantLeftData


class ParticipantRoleChangedEvent(_Event):
    """A host promoted or demoted a participant (the change is kept across reconnects)."""

    type: Literal["participant.role_changed"]
    data: RoleChangedData


class ParticipantBannedEvent(_Event):
    """An employee was banned from the meeting (present or not)."""

    type: Literal["participant.banned"]
    data: BannedData


class ParticipantUnbannedEvent(_Event):
    """A ban was lifted: the employee may join again."""

    type: Literal["participant.unbanned"]
    data: UnbannedData


class AttendanceClosedEvent(_Event):
    """An attendance row is final: its duration for payroll, crash recovery included."""

    type: Literal["attendance.closed"]
    data: AttendanceClosedData


WebhookPayload = Annotated[
    MeetingStartedEvent
    | MeetingEndedEvent
    | ParticipantJoinedEvent
    | ParticipantLeftEvent
    | ParticipantRoleChangedEvent
    | ParticipantBannedEvent
    | ParticipantUnbannedEvent
    | AttendanceClosedEvent,
    Field(discriminator="type"),
]

EVENT_MODELS: dict[WebhookEventType, type[_Event]] = {
    WebhookEventType.MEETING_STARTED: MeetingStartedEvent,
    WebhookEventType.MEETING_ENDED: MeetingEndedEvent,
    WebhookEventType.PARTICIPANT_JOINED: ParticipantJoinedEvent,
    WebhookEventType.PARTICIPANT_LEFT: ParticipantLeftEvent,
    WebhookEventType.PARTICIPANT_ROLE_CHANGED: ParticipantRoleChangedEvent,
    WebhookEventType.PARTICIPANT_BANNED: ParticipantBannedEvent,
    WebhookEventType.PARTICIPANT_UNBANNED: ParticipantUnbannedEvent,
    WebhookEventType.ATTENDANCE_CLOSED: AttendanceClosedEvent,
}


def envelope(delivery: WebhookDelivery) -> dict[str, Any]:
    """The body as a JSON-ready object."""
    return {
        "type": delivery.event_type.value,
        "timestamp": iso(delivery.occurred_at),
        "data": delivery.data,
    }


def body(delivery: WebhookDelivery) -> bytes:
    """The exact bytes sent (and signed): the same on every attempt."""
    return orjson.dumps(envelope(delivery))


def parse(raw: bytes | str | dict[str, Any]) -> _Event:
    """A received body as its model (raises pydantic.ValidationError if it is not one)."""
    value = orjson.loads(raw) if isinstance(raw, (bytes, str)) else raw
    return EVENT_MODELS[WebhookEventType(value["type"])].model_validate(value)
