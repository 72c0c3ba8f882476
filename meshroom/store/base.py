"""The persistence interface the rest of meshroom talks to.

Records are frozen dataclasses so nothing outside the store holds a database
session. Every method is async: implementations keep blocking I/O off the Trio
thread. Errors are the store's own, never a driver's.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..roles import Role


class MeetingStatus(enum.StrEnum):
    SCHEDULED = "SCHEDULED"
    LIVE = "LIVE"
    ENDED = "ENDED"


class StoreError(Exception):
    """Base class of the store's errors."""


class StoreUnavailable(StoreError):
    """The database cannot be reached or refused the work; retrying later may succeed."""


class SchemaError(StoreError):
    """The database's schema is not one this meshroom can use (the message says what to do)."""


class SchemaOutOfDate(SchemaError):
    """The schema is at an older revision; ``meshroom db upgrade`` brings it up to date."""


class MeetingNotFound(StoreError):
    pass


class MeetingNotLive(StoreError):
    def __init__(self, status: MeetingStatus) -> None:
        super().__init__(f"meeting is {status.value}")
        self.status = status


class EmployeeBanned(StoreError):
    pass


class InvalidTransition(StoreError):
    def __init__(self, current: MeetingStatus, wanted: MeetingStatus) -> None:
        super().__init__(f"cannot move a {current.value} meeting to {wanted.value}")
        self.current = current
        self.wanted = wanted


@dataclass(frozen=True, slots=True)
class Meeting:
    id: str
    title: str
    room_code: str
    host_emp_id: str
    status: MeetingStatus
    scheduled_at: dt.datetime | None
    created_at: dt.datetime
    started_at: dt.datetime | None
    ended_at: dt.datetime | None


@dataclass(frozen=True, slots=True)
class Admission:
    """What the store hands back when it lets an employee in."""

    meeting: Meeting
    attendance_id: int
    role: Role  # the token's role, unless a host promoted or demoted this employee


@dataclass(frozen=True, slots=True)
class Leave:
    attendance_id: int
    left_at: dt.datetime
    reason: str


@dataclass(frozen=True, slots=True)
class AttendanceRecord:
    id: int
    meeting_id: str
    emp_id: str
    display_name: str
    role: Role
    joined_at: dt.datetime
    left_at: dt.datetime | None
    duration_seconds: float | None
    leave_reason: str | None
    last_seen_at: dt.datetime | None = None  # the last heartbeat that found the peer live
    closed_by_recovery: bool = False  # closed at a start after a crash, at last_seen_at


# The leave_reason of rows that crash recovery closes.
RECOVERED_LEAVE_REASON = "server-crash"


@dataclass(frozen=True, slots=True)
class Ban:
    meeting_id: str
    emp_id: str
    banned_at: dt.datetime
    banned_by: str | None
    reason: str | None


class Store(Protocol):
    """Meetings, participants (roles, bans) and attendance."""

    async def open(self) -> None:
        """Connect and make sure the schema is usable."""

    async def close(self) -> None: ...

    async def ping(self) -> None:
        """Raise StoreUnavailable unless the database answers."""

    # Meetings
    async def create_meeting(
        self, *, title: str, host_emp_id: str, scheduled_at: dt.datetime | None = None
    ) -> Meeting: ...
    async def get_meeting(self, meeting_id: str) -> Meeting | None: ...
    async def get_meeting_by_code(self, room_code: str) -> Meeting | None: ...
    async def list_meetings(
        self, *, status: MeetingStatus | None = None, limit: int = 50, offset: int = 0
    ) -> tuple[list[Meeting], int]: ...
    async def transition(
        self, meeting_id: str, to: MeetingStatus, *, by: str | None = None
    ) -> Meeting:
        """SCHEDULED -> LIVE -> ENDED (``by``: who ended it, for the record).

        Raises MeetingNotFound or InvalidTransition.
        """
        ...

    async def ended_among(self, meeting_ids: Sequence[str]) -> set[str]:
        """Which of these meetings are ENDED (one query; ended by anyone, anywhere)."""
        ...

    # Joining and leaving
    async def admit(
        self, *, meeting_id: str, emp_id: str, display_name: str, role: Role, at: dt.datetime
    ) -> Admission:
        """Check the meeting is live and the employee not banned, then open an attendance row.

        Raises MeetingNotFound, MeetingNotLive or EmployeeBanned. Cancelled before its
        write began, it raises Cancelled and writes nothing; once begun, it finishes
        and returns (the caller's next checkpoint raises Cancelled), so the caller always
        learns of a row it opened and can close it. An implementation may write the joins
        that wait at the same time in one transaction (SqlStore does).
        """
        ...

    async def record_leaves(self, leaves: Sequence[Leave]) -> int:
        """Close attendance rows; a row already closed is left as it is (idempotent).

        Returns how many rows this call closed.
        """
        ...

    async def touch_attendance(self, attendance_ids: Sequence[int], at: dt.datetime) -> int:
        """Set ``last_seen_at`` of those rows still open, in one statement; how many."""
        ...

    async def recover_open_attendance(self, *, stale_before: dt.datetime | None = None) -> int:
        """Close every open row at its last_seen_at (else joined_at), marked as recovered.

        Only for a server starting up, when no peer of its own can be live; in a
        cluster, where other nodes' peers are live, only rows last seen before
        ``stale_before`` (their node stopped stamping them: it died).
        Returns how many rows were closed.
        """
        ...

    # Moderation
    async def ban(
        self, *, meeting_id: str, emp_id: str, by: str | None, reason: str | None, at: dt.datetime
    ) -> None: ...
    async def unban(self, *, meeting_id: str, emp_id: str, by: str | None = None) -> bool:
        """Lift a ban; False if the employee was not banned."""
        ...

    async def list_bans(self, meeting_id: str) -> list[Ban]: ...
    async def set_role_override(
        self,
        *,
        meeting_id: str,
        emp_id: str,
        role: Role | None,
        reason: str | None = None,
        by: str | None = None,
    ) -> None:
        """Remember a promotion or demotion so it survives a reconnect.

        ``reason`` (promote, demote) and ``by`` are for the record (webhooks).
        """

    # Attendance
    async def attendance_for_meeting(self, meeting_id: str) -> list[AttendanceRecord]: ...
    async def attendance_for_employee(
        self, emp_id: str, *, since: dt.datetime | None = None, until: dt.datetime | None = None
    ) -> list[AttendanceRecord]: ...


# Webhooks: the transactional outbox.
#
# Every store method that changes a meeting, attendance, a ban or a role writes the
# events describing the change into the outbox *in the same transaction* (one
# delivery row per enabled endpoint that wants the event type), so an event exists
# exactly when its change was committed. The delivery worker (meshroom.webhooks)
# drains the outbox through the WebhookStore methods below.


class WebhookEventType(enum.StrEnum):
    MEETING_STARTED = "meeting.started"
    MEETING_ENDED = "meeting.ended"
    PARTICIPANT_JOINED = "participant.joined"
    PARTICIPANT_LEFT = "participant.left"
    PARTICIPANT_ROLE_CHANGED = "participant.role_changed"
    PARTICIPANT_BANNED = "participant.banned"
    PARTICIPANT_UNBANNED = "participant.unbanned"
    ATTENDANCE_CLOSED = "attendance.closed"


class EndpointSource(enum.StrEnum):
    SETTINGS = "settings"  # from MESHROOM_WEBHOOKS, synced at every start
    API = "api"  # created through the REST API


class DeliveryStatus(enum.StrEnum):
    PENDING = "pending"  # not yet delivered: due, waiting for a retry, or in flight
    DELIVERED = "delivered"  # the endpoint answered 2xx
    DEAD = "dead"  # every attempt failed; only a retry (CLI, API) sends it again


class EndpointNotFound(StoreError):
    pass


class DeliveryNotFound(StoreError):
    pass


@dataclass(frozen=True, slots=True)
class WebhookEndpoint:
    id: str
    url: str
    secret: str = field(repr=False)  # whsec_<base64>: never in a log line
    event_types: frozenset[WebhookEventType] | None  # None: every type
    source: EndpointSource
    enabled: bool
    description: str | None
    created_at: dt.datetime

    def accepts(self, event_type: WebhookEventType) -> bool:
        return self.event_types is None or event_type in self.event_types


@dataclass(frozen=True, slots=True)
class WebhookDelivery:
    """One event on its way to one endpoint."""

    id: int
    endpoint_id: str
    event_id: str  # the webhook-id header: the same on every attempt and every endpoint
    event_type: WebhookEventType
    meeting_id: str
    occurred_at: dt.datetime
    data: Mapping[str, Any]
    status: DeliveryStatus
    attempts: int
    next_attempt_at: dt.datetime
    last_attempt_at: dt.datetime | None
    last_status_code: int | None
    last_error: str | None
    delivered_at: dt.datetime | None


@dataclass(frozen=True, slots=True)
class ClaimedDelivery:
    """A delivery leased to one worker for one attempt (``delivery.attempts`` counts it)."""

    delivery: WebhookDelivery
    lease_token: str
    url: str
    secret: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class Claim:
    deliveries: list[ClaimedDelivery]
    # The earliest time a delivery not claimable now may become so (a retry falls due,
    # a lease runs out); None if none is waiting for a time.
    next_due: dt.datetime | None


class AttemptOutcome(enum.StrEnum):
    DELIVERED = "delivered"
    RETRY = "retry"  # failed; pending again from next_attempt_at
    DEAD = "dead"  # failed for the last time
    RELEASED = "released"  # not attempted after all (shutdown): pending, attempt not counted


@dataclass(frozen=True, slots=True)
class AttemptResult:
    delivery_id: int
    lease_token: str
    outcome: AttemptOutcome
    at: dt.datetime
    next_attempt_at: dt.datetime | None = None  # for RETRY
    status_code: int | None = None
    error: str | None = None


class WebhookStore(Protocol):
    """What the webhook delivery worker, the API and the CLI need of the outbox."""

    async def list_webhook_endpoints(self) -> list[WebhookEndpoint]: ...

    async def put_webhook_endpoint(self, endpoint: WebhookEndpoint) -> None:
        """Create the endpoint, or replace the one with its id."""

    async def delete_webhook_endpoint(self, endpoint_id: str) -> bool:
        """Delete an endpoint and its deliveries; False if there was none."""
        ...

    async def claim_webhook_deliveries(
        self,
        *,
        limit_per_endpoint: int,
        in_flight: Mapping[str, int],
        now: dt.datetime,
        lease: dt.timedelta,
    ) -> Claim:
        """Lease the deliveries that may be attempted now, oldest event first.

        A delivery is claimable when it is pending and due, nobody holds an unexpired
        lease on it, its endpoint is enabled, and no earlier event of the same meeting
        is still pending for the same endpoint (per-meeting order). At most
        ``limit_per_endpoint - in_flight[endpoint]`` per endpoint.
        """
        ...

    async def finish_webhook_delivery(self, result: AttemptResult) -> bool:
        """Record an attempt; False if the lease was lost (another worker took it over)."""
        ...

    async def list_webhook_deliveries(
        self,
        *,
        status: DeliveryStatus | None = None,
        endpoint_id: str | None = None,
        meeting_id: str | None = None,
        delivery_ids: Sequence[int] | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> tuple[list[WebhookDelivery], int]:
        """Deliveries, newest first, and how many match in all."""
        ...

    async def retry_webhook_deliveries(
        self,
        *,
        delivery_ids: Sequence[int] | None = None,
        endpoint_id: str | None = None,
        now: dt.datetime,
    ) -> int:
        """Make deliveries due again with a fresh attempt count; how many.

        By id (any status; one in flight right now is left alone), else every dead
        one (of ``endpoint_id``, if given).
        """
        ...

    async def prune_webhook_deliveries(self, *, delivered_before: dt.datetime) -> int:
        """Forget deliveries delivered before that time (and events left with none)."""
        ...
