"""The hub: the registry of live rooms and the one entry point transports call.

``Hub.serve(conn)`` authenticates a connection, admits it through the store,
attaches it to its meeting's room and returns when the peer's session is over.
The hub also carries the operations the HTTP API and CLI share with host
commands (end a meeting, kick, ban), so there is one implementation of each.
"""

from __future__ import annotations

import datetime as dt
import enum
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

import trio

from ..auth import Claims, TokenError, TokenKeys, verify_token
from ..ice import IceConfig
from ..metrics import Metrics
from ..protocol import (
    CloseCode,
    ErrorCode,
    LeaveReason,
    ProtocolError,
    RequestId,
    decode_request,
    encode_error,
)
from ..store import (
    EmployeeBanned,
    InvalidTransition,
    Leave,
    Meeting,
    MeetingNotFound,
    MeetingNotLive,
    MeetingStatus,
    Store,
    StoreUnavailable,
)
from . import peer as exits
from .attendance import AttendanceConfig, LeaveWriter, run_heartbeats
from .connection import Connection, ConnectionClosed, MessageTooLarge
from .limits import ConnectionSlots
from .locks import KeyedLocks
from .peer import Peer
from .room import Room, utcnow

log = logging.getLogger(__name__)


class DuplicatePolicy(enum.StrEnum):
    """What happens when an employee already in the room joins again."""

    REPLACE = "replace"  # the new connection takes over; the old one is closed (4007)
    REJECT = "reject"  # the new connection is refused (4008); the old one stays


@dataclass(frozen=True, slots=True)
class HubConfig:
    auth_timeout: float = 10.0
    close_timeout: float = 5.0
    outbox_size: int = 2048
    duplicate_policy: DuplicatePolicy = DuplicatePolicy.REPLACE
    ice: IceConfig = field(default_factory=IceConfig)
    # Seconds a peer whose connection dropped keeps its place for a resume. Off (0) in
    # the core's defaults; ``meshroom serve`` turns it on (Settings.resume_grace).
    resume_grace: float = 0.0
    # Frames per second a connection may send on average, and at once (0 = no limit).
    rate_limit: float = 200.0
    rate_burst: float = 1000.0
    max_room_peers: int = 100  # 0 = no limit
    max_connections: int = 10000  # per process, over every transport; 0 = no limit
    # The reconnect hint of server:shutdown, in seconds (each peer gets 1x to 2x of it).
    shutdown_reconnect_after: float = 5.0
    # Seconds a kicked employee is refused (KICKED, 4005) before it may join again. Off
    # (0) in the core's defaults; ``meshroom serve`` sets it (Settings.kick_rejoin_block).
    kick_rejoin_block: float = 0.0


class JoinRefused(Exception):
    def __init__(self, code: ErrorCode, close_code: CloseCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.close_code = close_code
        self.message = message


# How long an ended meeting is remembered in memory, to close the window between
# a join's admission (meeting still LIVE) and its attachment (meeting ended since).
_ENDED_MEMORY_SECONDS = 120.0


class Hub:
    def __init__(
        self,
        store: Store,
        keys: TokenKeys,
        config: HubConfig | None = None,
        *,
        metrics: Metrics | None = None,
        attendance: AttendanceConfig | None = None,
    ) -> None:
        self.store = store
        self.attendance = attendance or AttendanceConfig()
        # Every leave goes through this one writer (see core/attendance.py).
        self.leaves = LeaveWriter(store, self.attendance)
        self.keys = keys
        self.config = config or HubConfig()
        self.metrics = metrics or Metrics()
        if getattr(store, "on_call", False) is None:
            store.on_call = self.metrics.db_call  # type: ignore[attr-defined]
        self.rooms: dict[str, Room] = {}
        self._nursery: trio.Nursery | None = None
        self._room_locks = KeyedLocks()
        self._employee_locks = KeyedLocks()
        self._recently_ended: dict[str, float] = {}
        # Connections held by every transport of this process, against max_connections.
        self.slots = ConnectionSlots(self.config.max_connections)
        # Joins between their room-size check and their attachment, per meeting.
        self._joining: dict[str, int] = {}
        # Connections that have not authenticated yet; shutdown closes them (1001).
        self._unjoined: set[trio.CancelScope] = set()
        self.stopping = False

    # Lifecycle

    async def run(self, *, task_status: trio.TaskStatus[Hub] = trio.TASK_STATUS_IGNORED) -> None:
        """Own every room until cancelled; on the way out every peer is closed (1001)."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                await nursery.start(self.leaves.run)
                nursery.start_soon(
                    run_heartbeats,
                    self.store,
                    self._live_attendance_ids,
                    self.attendance.heartbeat_interval,
                )
                task_status.started(self)
                await trio.sleep_forever()
        finally:
            self._nursery = None
            # Every peer is gone now; write the leaves still queued (bounded, logged).
            with trio.CancelScope(shield=True):
                await self.leaves.close()

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Hub]:
        """``async with hub.running():`` — run the hub in a nursery of its own for a block."""
        async with trio.open_nursery() as nursery:
            await nursery.start(self.run)
            try:
                yield self
            finally:
                await self.shutdown()
                nursery.cancel_scope.cancel()

    async def shutdown(self, reason: exits.Exit | None = None) -> None:
        """Tell every peer, close every connection, record every leave; then return.

        Every peer gets ``server:shutdown`` (with a jittered reconnect hint) and
        ``session:closed``, then a 1001 close; joins from here on are refused
        (SHUTTING_DOWN, 1001), and so are connections still authenticating.
        """
        self.stopping = True
        for scope in list(self._unjoined):
            scope.cancel()
        for room in list(self.rooms.values()):
            room.ending = True
            for peer in list(room.peers.values()):
                room._remove(
                    peer, reason or exits.shutdown(self.config.shutdown_reconnect_after)
                )
        for room in list(self.rooms.values()):
            await room.done.wait()

    # The transport entry point

    async def serve(
        self, conn: Connection, *, token: str | None = None, resume_token: str | None = None
    ) -> None:
        """Run one client connection to the end. Never raises for anything the client does.

        ``token`` (and ``resume_token``) when the transport took them from the URL;
        otherwise the first frame must be an ``auth`` request carrying them.
        """
        request_id: RequestId | None = None
        if self.stopping:
            await self._refuse(conn, self._shutting_down(), None)
            return
        if token is None:
            with trio.CancelScope() as waiting:
                self._unjoined.add(waiting)
                try:
                    token, resume_token, request_id = await self._await_auth(conn)
                except JoinRefused as refusal:
                    await self._refuse(conn, refusal, None)
                    return
                except ConnectionClosed:
                    return
                finally:
                    self._unjoined.discard(waiting)
            if token is None:  # the server began shutting down first
                await self._refuse(conn, self._shutting_down(), None)
                return
        try:
            claims = verify_token(self.keys, token)
        except TokenError as exc:
            self.metrics.rejected("auth-failed")
            await self._refuse(
                conn,
                JoinRefused(ErrorCode.AUTH_FAILED, CloseCode.AUTH_FAILED, str(exc)),
                request_id,
            )
            return
        try:
            done = await self._join(claims, conn, request_id, resume_token)
        except JoinRefused as refusal:
            await self._refuse(conn, refusal, request_id)
            return
        await done.wait()

    def _shutting_down(self) -> JoinRefused:
        return JoinRefused(
            ErrorCode.SHUTTING_DOWN, CloseCode.GOING_AWAY, "server is shutting down; reconnect"
        )

    async def _await_auth(self, conn: Connection) -> tuple[str, str | None, RequestId | None]:
        with trio.move_on_after(self.config.auth_timeout):
            while True:
                try:
                    message = await conn.receive()
                except MessageTooLarge:
                    raise JoinRefused(
                        ErrorCode.AUTH_REQUIRED, CloseCode.AUTH_REQUIRED, "auth frame is too large"
                    ) from None
                if not isinstance(message, str):
                    raise JoinRefused(
                        ErrorCode.AUTH_REQUIRED,
                        CloseCode.AUTH_REQUIRED,
                        "first frame must be JSON text",
                    )
                try:
                    request = decode_request(message)
                except ProtocolError as exc:
                    raise JoinRefused(
                        ErrorCode.AUTH_REQUIRED,
                        CloseCode.AUTH_REQUIRED,
                        f"first frame must be an auth request: {exc.message}",
                    ) from None
                if request.event != "auth":
                    raise JoinRefused(
                        ErrorCode.AUTH_REQUIRED,
                        CloseCode.AUTH_REQUIRED,
                        f"first frame must be an auth request, not {request.event!r}",
                    )
                data = request.data
                return data["meetingAccessToken"], data.get("resumeToken"), request.id
        self.metrics.rejected("auth-timeout")
        raise JoinRefused(
            ErrorCode.AUTH_TIMEOUT,
            CloseCode.AUTH_TIMEOUT,
            f"no auth request within {self.config.auth_timeout:g} seconds",
        )

    async def _refuse(
        self, conn: Connection, refusal: JoinRefused, request_id: RequestId | None
    ) -> None:
        with trio.move_on_after(self.config.close_timeout):
            with suppress(ConnectionClosed):
                await conn.send(
                    [encode_error(refusal.code, refusal.message, request_id=request_id)]
                )
            await conn.close(refusal.close_code, refusal.message[:120])

    async def _join(
        self,
        claims: Claims,
        conn: Connection,
        request_id: RequestId | None,
        resume_token: str | None = None,
    ) -> trio.Event:
        """Attach ``conn`` to its peer; the event is set when the room is done with ``conn``."""
        meeting_id, emp_id = claims.meeting_id, claims.emp_id
        self._check_not_ended(meeting_id)
        async with self._employee_locks.hold((meeting_id, emp_id)):
            if self.stopping:
                raise self._shutting_down()
            room = self.rooms.get(meeting_id)
            if resume_token is not None:
                # The access token proved who this is; the resume token proves it is the
                # connection that held the place. Anything less is an ordinary join.
                done = room.resume(emp_id, resume_token, conn, request_id) if room else None
                if done is not None:
                    return done
                self.metrics.resume_refused()
            existing = room.peers.get(emp_id) if room is not None else None
            if (
                existing is not None
                and not existing.detached  # a place kept for a resume is taken over instead
                and self.config.duplicate_policy is DuplicatePolicy.REJECT
            ):
                self.metrics.rejected("duplicate")
                raise JoinRefused(
                    ErrorCode.DUPLICATE_SESSION,
                    CloseCode.DUPLICATE_SESSION,
                    "this employee is already connected to the meeting",
                )
            if existing is None:
                self._check_room_size(meeting_id, room)
            self._joining[meeting_id] = self._joining.get(meeting_id, 0) + 1
            try:
                return await self._admit_and_attach(claims, conn, request_id, room)
            finally:
                self._joining[meeting_id] -= 1
                if not self._joining[meeting_id]:
                    del self._joining[meeting_id]

    def _check_room_size(self, meeting_id: str, room: Room | None) -> None:
        limit = self.config.max_room_peers
        present = len(room.peers) if room is not None else 0
        if limit and present + self._joining.get(meeting_id, 0) >= limit:
            self.metrics.rejected("room-full")
            raise JoinRefused(
                ErrorCode.ROOM_FULL, CloseCode.ROOM_FULL, f"the room is full ({limit} peers)"
            )

    async def _admit_and_attach(
        self, claims: Claims, conn: Connection, request_id: RequestId | None, room: Room | None
    ) -> trio.Event:
        meeting_id, emp_id = claims.meeting_id, claims.emp_id
        joined_at = utcnow()
        admission = await self._admit(claims, joined_at)
        try:
            room = await self._room_for(admission.meeting)
            self._check_not_ended(meeting_id)
            if self.stopping:
                raise self._shutting_down()
        except BaseException:
            # Admitted but never attached: the attendance row must still be closed,
            # and a room opened for this join alone must not stay open, empty.
            if room is not None:
                room._maybe_close()
            with trio.CancelScope(shield=True):
                reason = LeaveReason.SERVER_SHUTDOWN if self.stopping else LeaveReason.MEETING_ENDED
                await self._close_row(admission.attendance_id, reason)
            raise
        peer = Peer(
            emp_id=emp_id,
            display_name=claims.display_name,
            role=admission.role,
            attendance_id=admission.attendance_id,
            joined_at=joined_at,
            outbox_size=self.config.outbox_size,
        )
        done = trio.Event()
        room.attach(peer, conn, request_id, done)
        self.metrics.admitted()
        return done

    async def _admit(self, claims: Claims, at: dt.datetime) -> Any:
        try:
            return await self.store.admit(
                meeting_id=claims.meeting_id,
                emp_id=claims.emp_id,
                display_name=claims.display_name,
                role=claims.role,
                at=at,
            )
        except MeetingNotFound:
            self.metrics.rejected("meeting-not-found")
            raise JoinRefused(
                ErrorCode.MEETING_NOT_FOUND, CloseCode.MEETING_UNAVAILABLE, "meeting does not exist"
            ) from None
        except MeetingNotLive as exc:
            if exc.status is MeetingStatus.ENDED:
                self.metrics.rejected("meeting-ended")
                raise JoinRefused(
                    ErrorCode.MEETING_ENDED, CloseCode.MEETING_ENDED, "meeting has ended"
                ) from None
            self.metrics.rejected("meeting-not-live")
            raise JoinRefused(
                ErrorCode.MEETING_NOT_LIVE,
                CloseCode.MEETING_UNAVAILABLE,
                "meeting has not started yet",
            ) from None
        except EmployeeBanned:
            self.metrics.rejected("banned")
            raise JoinRefused(
                ErrorCode.BANNED, CloseCode.BANNED, "you are banned from this meeting"
            ) from None
        except StoreUnavailable:
            self.metrics.rejected("store-unavailable")
            raise JoinRefused(
                ErrorCode.STORE_UNAVAILABLE,
                CloseCode.TRY_AGAIN_LATER,
                "the database is unavailable; try again shortly",
            ) from None

    def _check_not_ended(self, meeting_id: str) -> None:
        now = trio.current_time()
        for mid, until in list(self._recently_ended.items()):
            if until < now:
                del self._recently_ended[mid]
        if meeting_id in self._recently_ended:
            self.metrics.rejected("meeting-ended")
            raise JoinRefused(ErrorCode.MEETING_ENDED, CloseCode.MEETING_ENDED, "meeting has ended")

    def _live_attendance_ids(self) -> list[int]:
        return [
            p.attendance_id
            for room in self.rooms.values()
            for p in room.peers.values()
            if not p.detached  # not seen since its connection dropped
        ]

    async def _close_row(self, attendance_id: int, reason: LeaveReason) -> None:
        await self.leaves.record(Leave(attendance_id, utcnow(), reason.value))

    async def _room_for(self, meeting: Meeting) -> Room:
        room = self.rooms.get(meeting.id)
        if room is not None and not room.closed:
            return room
        async with self._room_locks.hold(meeting.id):
            room = self.rooms.get(meeting.id)
            if room is None or room.closed:
                if self._nursery is None:
                    raise JoinRefused(
                        ErrorCode.INTERNAL_ERROR, CloseCode.GOING_AWAY, "server is shutting down"
                    )
                room = Room(self, meeting)
                await self._nursery.start(room.run, name=f"room:{meeting.id}")
                self.rooms[meeting.id] = room
                self.metrics.room_opened()
            return room

    def _forget_room(self, room: Room) -> None:
        if self.rooms.get(room.id) is room:
            del self.rooms[room.id]
            self.metrics.room_closed()

    # Operations shared by host commands, the HTTP API and the CLI

    async def end_meeting(
        self, meeting_id: str, *, by: str | None, actor: Peer | None = None
    ) -> Meeting:
        """Mark the meeting ENDED (closing every open attendance row) and close its room.

        Returns once every peer (but ``actor``, whose own handler is running) is closed.
        Raises MeetingNotFound or InvalidTransition.
        """
        # Queued leaves first: the end would otherwise close those rows at the end time.
        await self.leaves.write_now()
        try:
            meeting = await self.store.transition(meeting_id, MeetingStatus.ENDED)
        except InvalidTransition as exc:
            # Ended elsewhere (the CLI, another server) while its room lives here: close it too.
            ended = await self.store.get_meeting(meeting_id)
            if exc.current is not MeetingStatus.ENDED or meeting_id not in self.rooms or not ended:
                raise
            meeting = ended
        self._recently_ended[meeting_id] = trio.current_time() + _ENDED_MEMORY_SECONDS
        room = self.rooms.get(meeting_id)
        if room is not None:
            self._forget_room(room)  # at once: an ended meeting has no room, even while it closes
            await room.end(by=by, actor=actor)
        return meeting

    async def kick(self, meeting_id: str, emp_id: str, *, by: str | None = None) -> bool:
        """Remove a live peer. False if it is not in the room."""
        room = self.rooms.get(meeting_id)
        return room is not None and await room.kick(emp_id, by=by)

    async def ban(
        self, meeting_id: str, emp_id: str, *, by: str | None = None, reason: str | None = None
    ) -> None:
        """Ban an employee (present or not) and remove it if it is in the room."""
        async with self._employee_locks.hold((meeting_id, emp_id)):
            await self.store.ban(
                meeting_id=meeting_id, emp_id=emp_id, by=by, reason=reason, at=utcnow()
            )
            room = self.rooms.get(meeting_id)
            if room is not None:
                await room.remove_banned(emp_id, by=by)

    def live_peers(self, meeting_id: str) -> list[dict[str, Any]]:
        room = self.rooms.get(meeting_id)
        return room.describe() if room is not None else []
