"""Meeting operations shared by the HTTP API and the CLI.

One implementation of each operation; the HTTP API and the CLI are shells that
parse input and format output around it. With a live :class:`~meshroom.core.Hub`
the operations also act on connected peers (ending a meeting closes its room);
without one (the CLI) they act on the database only.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from .auth import TokenKeys, mint_token
from .roles import Role
from .roomcode import normalize_room_code
from .store import (
    AttendanceRecord,
    Ban,
    Meeting,
    MeetingNotFound,
    MeetingStatus,
    Store,
)


@dataclass(frozen=True, slots=True)
class IssuedToken:
    token: str
    meeting_id: str
    emp_id: str
    role: Role
    expires_at: dt.datetime


@dataclass(frozen=True, slots=True)
class AttendanceTotal:
    emp_id: str
    display_name: str
    sessions: int
    total_seconds: float
    first_joined_at: dt.datetime
    last_left_at: dt.datetime | None
    present: bool  # a session is still open


class LiveRooms(Protocol):
    """What acts on connected peers: the process's Hub, or a cluster node that reaches the
    node running each room (:class:`meshroom.cluster.ClusterRooms`)."""

    async def end_meeting(self, meeting_id: str, *, by: str | None) -> Meeting: ...

    async def kick(self, meeting_id: str, emp_id: str, *, by: str | None = None) -> bool: ...

    async def ban(
        self, meeting_id: str, emp_id: str, *, by: str | None = None, reason: str | None = None
    ) -> None: ...

    async def unban(self, meeting_id: str, emp_id: str, *, by: str | None = None) -> bool: ...

    async def participants(self, meeting_id: str) -> list[dict[str, Any]]: ...


class MeetingService:
    def __init__(self, store: Store, keys: TokenKeys, hub: LiveRooms | None = None) -> None:
        self.store = store
        self.keys = keys
        self.hub = hub

    async def create(
        self,
        *,
        title: str,
        host_emp_id: str,
        scheduled_at: dt.datetime | None = None,
        start: bool = False,
    ) -> Meeting:
        meeting = await self.store.create_meeting(
            title=title, host_emp_id=host_emp_id, scheduled_at=scheduled_at
        )
        if start:
            meeting = await self.store.transition(meeting.id, MeetingStatus.LIVE)
        return meeting

    async def find(self, ref: str) -> Meeting:
        """A meeting by id or room code (as a person types it).

        Raises:
            MeetingNotFound
        """
        return await find_meeting(self.store, ref)

    async def list_meetings(
        self, *, status: MeetingStatus | None = None, limit: int = 50, offset: int = 0
    ) -> tuple[list[Meeting], int]:
        return await self.store.list_meetings(status=status, limit=limit, offset=offset)

    async def start(self, ref: str) -> Meeting:
        meeting = await self.find(ref)
        return await self.store.transition(meeting.id, MeetingStatus.LIVE)

    async def end(self, ref: str, *, by: str | None = None) -> Meeting:
        """End the meeting; with a hub, every live peer is closed (4006) before this returns."""
        meeting = await self.find(ref)
        if self.hub is not None:
            return await self.hub.end_meeting(meeting.id, by=by)
        return await self.store.transition(meeting.id, MeetingStatus.ENDED, by=by)

    async def issue_token(
        self,
        ref: str,
        *,
        emp_id: str,
        display_name: str | None = None,
        role: Role = Role.PARTICIPANT,
        ttl: dt.timedelta = dt.timedelta(hours=2),
    ) -> IssuedToken:
        meeting = await self.find(ref)
        now = dt.datetime.now(dt.UTC).replace(microsecond=0)
        token = mint_token(
            self.keys,
            meeting_id=meeting.id,
            emp_id=emp_id,
            display_name=display_name or emp_id,
            role=role,
            ttl=ttl,
            now=now,
        )
        return IssuedToken(token, meeting.id, emp_id, role, now + ttl)

    async def live_participants(self, meeting: Meeting) -> list[dict[str, Any]]:
        return await self.hub.participants(meeting.id) if self.hub is not None else []

    async def kick(self, ref: str, emp_id: str, *, by: str | None = None) -> bool:
        meeting = await self.find(ref)
        return self.hub is not None and await self.hub.kick(meeting.id, emp_id, by=by)

    async def ban(
        self, ref: str, emp_id: str, *, by: str | None = None, reason: str | None = None
    ) -> Meeting:
        meeting = await self.find(ref)
        if self.hub is not None:
            await self.hub.ban(meeting.id, emp_id, by=by, reason=reason)
        else:
            await self.store.ban(
                meeting_id=meeting.id,
                emp_id=emp_id,
                by=by,
                reason=reason,
                at=dt.datetime.now(dt.UTC),
            )
        return meeting

    async def unban(self, ref: str, emp_id: str, *, by: str | None = None) -> bool:
        """Lift a ban (with a hub, also a kick's rejoin block); True if there was a ban."""
        meeting = await self.find(ref)
        if self.hub is not None:
            return await self.hub.unban(meeting.id, emp_id, by=by)
        return await self.store.unban(meeting_id=meeting.id, emp_id=emp_id, by=by)

    async def bans(self, ref: str) -> list[Ban]:
        meeting = await self.find(ref)
        return await self.store.list_bans(meeting.id)

    async def meeting_attendance(self, ref: str) -> tuple[Meeting, list[AttendanceRecord]]:
        meeting = await self.find(ref)
        return meeting, await self.store.attendance_for_meeting(meeting.id)

    async def employee_attendance(
        self, emp_id: str, *, since: dt.datetime | None = None, until: dt.datetime | None = None
    ) -> list[AttendanceRecord]:
        return await self.store.attendance_for_employee(emp_id, since=since, until=until)


async def find_meeting(store: Store, ref: str) -> Meeting:
    """A meeting by id or room code (as a person types it). Raises MeetingNotFound."""
    code = normalize_room_code(ref)
    meeting = await store.get_meeting_by_code(code) if code else None
    meeting = meeting or await store.get_meeting(ref)
    if meeting is None:
        raise MeetingNotFound(ref)
    return meeting


def attendance_totals(
    records: Iterable[AttendanceRecord], *, now: dt.datetime | None = None
) -> list[AttendanceTotal]:
    """Per-employee totals. A session still open counts up to ``now``."""
    now = now or dt.datetime.now(dt.UTC)
    grouped: dict[str, list[AttendanceRecord]] = {}
    for record in records:
        grouped.setdefault(record.emp_id, []).append(record)
    totals = []
    for emp_id, rows in grouped.items():
        seconds = sum(
            r.duration_seconds
            if r.duration_seconds is not None
            else max(0.0, (now - r.joined_at).total_seconds())
            for r in rows
        )
        closed = [r.left_at for r in rows if r.left_at is not None]
        totals.append(
            AttendanceTotal(
                emp_id=emp_id,
                display_name=rows[-1].display_name,
                sessions=len(rows),
                total_seconds=round(seconds, 3),
                first_joined_at=min(r.joined_at for r in rows),
                last_left_at=max(closed) if closed else None,
                present=any(r.left_at is None for r in rows),
            )
        )
    return sorted(totals, key=lambda t: t.emp_id)


RECORD_COLUMNS = (
    "id",
    "meeting_id",
    "emp_id",
    "display_name",
    "role",
    "joined_at",
    "left_at",
    "duration_seconds",
    "leave_reason",
)
TOTAL_COLUMNS = (
    "emp_id",
    "display_name",
    "sessions",
    "total_seconds",
    "first_joined_at",
    "last_left_at",
    "present",
)


def _cell(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if value is None:
        return ""
    value = getattr(value, "value", value)
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        # Spreadsheets run cells that start like a formula; a display name must not.
        return "'" + value
    return value


def records_csv(records: Iterable[AttendanceRecord]) -> str:
    return _csv(RECORD_COLUMNS, ([_cell(getattr(r, c)) for c in RECORD_COLUMNS] for r in records))


def totals_csv(totals: Iterable[AttendanceTotal]) -> str:
    return _csv(TOTAL_COLUMNS, ([_cell(getattr(t, c)) for c in TOTAL_COLUMNS] for t in totals))


def _csv(header: Iterable[str], rows: Iterable[list[Any]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue()
