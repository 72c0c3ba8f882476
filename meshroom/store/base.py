"""The persistence interface the rest of meshroom talks to.

Records are frozen dataclasses so nothing outside the store holds a database
session. Every method is async: implementations keep blocking I/O off the Trio
thread. Errors are the store's own, never a driver's.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

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
    async def transition(self, meeting_id: str, to: MeetingStatus) -> Meeting:
        """SCHEDULED -> LIVE -> ENDED. Raises MeetingNotFound or InvalidTransition."""
        ...

    async def ended_among(self, meeting_ids: Sequence[str]) -> set[str]:
        """Which of these meetings are ENDED (one query; ended by anyone, anywhere)."""
        ...

    # Joining and leaving
    async def admit(
        self, *, meeting_id: str, emp_id: str, display_name: str, role: Role, at: dt.datetime
    ) -> Admission:
        """Check the meeting is live and the employee not banned, then open an attendance row.

        Raises MeetingNotFound, MeetingNotLive or EmployeeBanned.
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
    async def unban(self, *, meeting_id: str, emp_id: str) -> bool:
        """Lift a ban; False if the employee was not banned."""
        ...

    async def list_bans(self, meeting_id: str) -> list[Ban]: ...
    async def set_role_override(self, *, meeting_id: str, emp_id: str, role: Role | None) -> None:
        """Remember a promotion or demotion so it survives a reconnect."""

    # Attendance
    async def attendance_for_meeting(self, meeting_id: str) -> list[AttendanceRecord]: ...
    async def attendance_for_employee(
        self, emp_id: str, *, since: dt.datetime | None = None, until: dt.datetime | None = None
    ) -> list[AttendanceRecord]: ...
