"""Request and response models of the HTTP API.

These pydantic models are the single definition: quart-schema validates
requests against them and generates the OpenAPI document from them.
"""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic.alias_generators import to_camel

from ..roles import Role
from ..store import MeetingStatus
from ..store.base import DeliveryStatus, EndpointSource, WebhookEventType
from ..webhooks.endpoints import MAX_URL_LENGTH, check_url
from ..webhooks.payloads import WebhookPayload
from ..webhooks.signing import check_secret


class Model(BaseModel):
    # serialize_by_alias: camelCase out even when the embedding app's own QuartSchema
    # dumps models with its default options (pydantic >= 2.11; older ones ignore it).
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", serialize_by_alias=True
    )


EmpId = Field(min_length=1, max_length=128, pattern=r"^[^\s]+$")


class CreateMeeting(Model):
    title: str = Field(min_length=1, max_length=200)
    host_emp_id: str = EmpId
    scheduled_at: dt.datetime | None = None
    start: bool = Field(default=False, description="make the meeting LIVE at once")


class MeetingOut(Model):
    id: str
    title: str
    room_code: str
    host_emp_id: str
    status: MeetingStatus
    scheduled_at: dt.datetime | None
    created_at: dt.datetime
    started_at: dt.datetime | None
    ended_at: dt.datetime | None
    live_participants: int = 0


class ListMeetingsQuery(Model):
    status: MeetingStatus | None = None
    limit: int = Field(default=50, ge=1, le=500)
    offset: int = Field(default=0, ge=0)


class MeetingPage(Model):
    items: list[MeetingOut]
    total: int
    limit: int
    offset: int


class IssueToken(Model):
    emp_id: str = EmpId
    display_name: str | None = Field(default=None, min_length=1, max_length=200)
    role: Role = Role.PARTICIPANT
    ttl_seconds: int = Field(default=7200, ge=30, le=7 * 24 * 3600)


class TokenOut(Model):
    token: str
    meeting_id: str
    emp_id: str
    role: Role
    expires_at: dt.datetime
    signaling_path: str = "/meetings"


class Presence(Model):
    muted: bool
    camera_off: bool
    hand_raised: bool


class ParticipantOut(Model):
    emp_id: str
    display_name: str
    role: Role
    presence: Presence
    joined_at: dt.datetime
    seconds_present: int


class ParticipantList(Model):
    meeting_id: str
    participants: list[ParticipantOut]


class KickOut(Model):
    meeting_id: str
    emp_id: str
    kicked: bool


class CreateBan(Model):
    emp_id: str = EmpId
    reason: str | None = Field(default=None, max_length=500)


class BanOut(Model):
    meeting_id: str
    emp_id: str
    banned_at: dt.datetime
    banned_by: str | None
    reason: str | None


class BanList(Model):
    meeting_id: str
    bans: list[BanOut]


class AttendanceRecordOut(Model):
    id: int
    meeting_id: str
    emp_id: str
    display_name: str
    role: Role
    joined_at: dt.datetime
    left_at: dt.datetime | None
    duration_seconds: float | None
    leave_reason: str | None


class AttendanceTotalOut(Model):
    emp_id: str
    display_name: str
    sessions: int
    total_seconds: float
    first_joined_at: dt.datetime
    last_left_at: dt.datetime | None
    present: bool


class AttendanceOut(Model):
    records: list[AttendanceRecordOut]
    totals: list[AttendanceTotalOut]


class AttendanceQuery(Model):
    format: Literal["json", "csv"] = "json"
    view: Literal["records", "totals"] = Field(
        default="records", description="which table the CSV holds (JSON always has both)"
    )


class EmployeeAttendanceQuery(AttendanceQuery):
    since: dt.datetime | None = Field(default=None, alias="from")
    until: dt.datetime | None = Field(default=None, alias="to")


class ErrorDetail(Model):
    code: str
    message: str
    fields: list[dict[str, str]] | None = None


class ErrorOut(Model):
    error: ErrorDetail


class Health(Model):
    status: str
    detail: str | None = None


# Webhooks


class WebhookEndpointOut(Model):
    id: str
    url: str
    event_types: list[WebhookEventType] | None = Field(
        description="the event types sent to it; null = every type"
    )
    source: EndpointSource = Field(
        description="settings: from MESHROOM_WEBHOOKS (read-only here); api: created here"
    )
    enabled: bool
    description: str | None
    created_at: dt.datetime


class WebhookEndpointCreated(WebhookEndpointOut):
    secret: str = Field(
        description="the signing secret (whsec_…): verify deliveries with it. Shown only "
        "in this answer"
    )


class WebhookEndpointList(Model):
    items: list[WebhookEndpointOut]


class _EndpointFields(Model):
    @field_validator("url", check_fields=False)
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        return None if value is None else check_url(value)

    @field_validator("secret", check_fields=False)
    @classmethod
    def _secret(cls, value: str | None) -> str | None:
        return None if value is None else check_secret(value)


class CreateWebhookEndpoint(_EndpointFields):
    url: str = Field(max_length=MAX_URL_LENGTH, description="http:// or https:// URL to POST to")
    secret: str | None = Field(
        default=None,
        description="whsec_ and the base64 of 24 to 64 bytes; generated when absent",
    )
    event_types: list[WebhookEventType] | None = Field(
        default=None, description="the event types to send; absent or null = every type"
    )
    description: str | None = Field(default=None, max_length=500)
    enabled: bool = True


class UpdateWebhookEndpoint(_EndpointFields):
    """Only the fields present change; ``eventTypes: null`` means every type."""

    url: str | None = Field(default=None, max_length=MAX_URL_LENGTH)
    secret: str | None = None
    event_types: list[WebhookEventType] | None = None
    description: str | None = Field(default=None, max_length=500)
    enabled: bool | None = None


class WebhookDeliveryOut(Model):
    id: int
    endpoint_id: str
    event_id: str = Field(description="the webhook-id header: the same on every attempt")
    event_type: WebhookEventType
    meeting_id: str
    status: DeliveryStatus = Field(
        description="pending (due, in flight or waiting for a retry), delivered, or dead "
        "(every attempt failed; retry it to send it again)"
    )
    attempts: int
    next_attempt_at: dt.datetime
    last_attempt_at: dt.datetime | None
    last_status_code: int | None
    last_error: str | None
    delivered_at: dt.datetime | None
    payload: WebhookPayload = Field(description="the JSON body sent (and signed)")


class WebhookDeliveryPage(Model):
    items: list[WebhookDeliveryOut]
    total: int
    limit: int
    offset: int


class ListDeliveriesQuery(Model):
    status: DeliveryStatus | None = None
    endpoint_id: str | None = None
    meeting: str | None = Field(default=None, description="a meeting id or room code")
    limit: int = Field(default=50, ge=1, le=500)
    offset: int = Field(default=0, ge=0)


class RetryDeliveries(Model):
    delivery_ids: list[int] | None = Field(
        default=None,
        max_length=1000,
        description="these deliveries, whatever their status; absent = every dead one",
    )
    endpoint_id: str | None = Field(default=None, description="only this endpoint's")


class RetriedOut(Model):
    retried: int = Field(description="deliveries made due again now")
