"""The hub: the registry of live rooms and the one entry point transports call.

``Hub.serve(conn)`` authenticates a connection, admits it through the store,
attaches it to its meeting's room and returns when the peer's session is over.
Host controls (kick, ban, end, roles) live in :mod:`meshroom.core.controls`;
``hub.controls`` is the one instance the rooms, the HTTP API and the CLI share.
The hub tells the world what happens through ``hub.events``
(:mod:`meshroom.core.events`); metrics subscribe there.
"""

from __future__ import annotations

import collections
import datetime as dt
import functools
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from typing import Any

import trio

from ..auth import Claims, TokenError, TokenKeys, verify_token
from ..protocol import (
    CloseCode,
    ErrorCode,
    LeaveReason,
    ProtocolError,
    RequestId,
    decode_request,
    encode_error,
)
from ..store.base import (
    Admission,
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
from . import lifecycle
from .attendance import AttendanceConfig, AttendanceJournal, LeaveWriter, run_heartbeats
from .connection import Connection, ConnectionClosed, MessageTooLarge
from .controls import HostControls
from .events import EventBus, JoinRejected, ResumeRefused, RoomClosed, RoomOpened
from .lifecycle import Exit
from .limits import ConnectionSlots
from .locks import KeyedLocks
from .options import DuplicatePolicy, HubConfig, JoinRefused, RoomClaims
from .peer import Peer
from .room import Room, utcnow

log = logging.getLogger(__name__)

__all__ = ["Authenticated", "DuplicatePolicy", "Hub", "HubConfig", "JoinRefused"]


@dataclass(frozen=True, slots=True)
class Authenticated:
    """A connection that proved who it is; what it asked for comes with it."""

    claims: Claims
    token: str
    resume_token: str | None = None
    last_seq: int | None = None
    request_id: RequestId | None = None


@dataclass(frozen=True, slots=True)
class Bookkeeping:
    """What the hub holds besides its rooms; all zero when it is idle (tests check this)."""

    tasks: tuple[str, ...]  # the hub's own long-running tasks
    room_locks: int
    employee_locks: int
    joining: int  # joins between their room-size check and their attachment
    unjoined: int  # connections that have not authenticated yet


class Hub:
    """Owns the rooms (each a nursery of its peers' tasks) and admits connections to them."""

    def __init__(
        self,
        store: Store,
        keys: TokenKeys,
        config: HubConfig | None = None,
        *,
        attendance: AttendanceConfig | None = None,
        journal: AttendanceJournal | None = None,
        claims: RoomClaims | None = None,
    ) -> None:
        self.store = store
        # Set by a cluster: a room runs here only while this node holds its lease.
        self.claims = claims
        self.attendance = attendance or AttendanceConfig()
        self.journal = journal
        # Every leave goes through this one writer (see core/attendance.py).
        self.leaves = LeaveWriter(store, self.attendance, journal)
        self.keys = keys
        self._config = config or HubConfig()
        self._events = EventBus()
        # Signals relayed, by event: counted here, not as events (the hot path).
        self._relay_counts: collections.Counter[str] = collections.Counter()
        self.rooms: dict[str, Room] = {}
        self._nursery: trio.Nursery | None = None
        self._room_locks = KeyedLocks()
        self._employee_locks = KeyedLocks()
        self._controls = HostControls(
            store=store,
            rooms=self,
            leaves=self.leaves,
            config=self._config,
            events=self._events,
            employee_locks=self._employee_locks,
        )
        # Connections held by every transport of this process, against max_connections.
        self.slots = ConnectionSlots(self._config.max_connections)
        # Joins between their room-size check and their attachment, per meeting.
        self._joining: dict[str, int] = {}
        # Connections that have not authenticated yet; shutdown closes them (1001).
        self._unjoined: set[trio.CancelScope] = set()
        self.stopping = False

    # What rooms see of the hub (room.RoomOwner), and what controls see (RoomRegistry)

    @property
    def config(self) -> HubConfig:
        return self._config

    @property
    def events(self) -> EventBus:
        return self._events

    @property
    def controls(self) -> HostControls:
        return self._controls

    @property
    def relay_counts(self) -> collections.Counter[str]:
        return self._relay_counts

    async def record_leave(self, leave: Leave) -> None:
        await self.leaves.record(leave)

    def room(self, meeting_id: str) -> Room | None:
        return self.rooms.get(meeting_id)

    def forget(self, room: Room) -> None:
        if self.rooms.get(room.id) is room:
            del self.rooms[room.id]
            self._events.emit(RoomClosed(room.id))

    # Lifecycle

    async def run(self, *, task_status: trio.TaskStatus[Hub] = trio.TASK_STATUS_IGNORED) -> None:
        """Own every room until cancelled; on the way out every peer is closed (1001)."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                await nursery.start(self.leaves.run)
                nursery.start_soon(
                    functools.partial(
                        run_heartbeats,
                        self.store,
                        self.live_attendance_ids,
                        self.attendance.heartbeat_interval,
                        journal=self.journal,
                    ),
                    name="attendance heartbeats",
                )
                if self._config.ended_check_interval > 0:
                    nursery.start_soon(self._watch_for_meetings_ended_elsewhere)
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

    async def shutdown(self, exit: Exit | None = None) -> None:
        """Tell every peer, close every connection, record every leave; then return.

        Every peer gets ``server:shutdown`` (with a jittered reconnect hint) and
        ``session:closed``, then a 1001 close; joins from here on are refused
        (SHUTTING_DOWN, 1001), and so are connections still authenticating.
        """
        self.stopping = True
        for scope in list(self._unjoined):
            scope.cancel()
        reconnect_after = self._config.shutdown_reconnect_after

        def make_exit() -> Exit:
            return exit or lifecycle.shutdown(reconnect_after)

        rooms = list(self.rooms.values())
        async with trio.open_nursery() as nursery:
            for room in rooms:
                nursery.start_soon(room.close_all, make_exit)
        for room in rooms:
            await room.done.wait()

    async def _watch_for_meetings_ended_elsewhere(self) -> None:
        """Close live rooms whose meeting is ENDED in the database (``meshroom meeting end``
        from a shell, or another process): their peers get ``meeting:ended`` and 4006."""
        failing = False
        while True:
            await trio.sleep(self._config.ended_check_interval)
            live = [meeting_id for meeting_id, room in self.rooms.items() if not room.ending]
            if not live:
                continue
            try:
                ended = await self.store.ended_among(live)
            except Exception as exc:
                if not failing:
                    log.warning("could not check for meetings ended elsewhere: %s", exc)
                failing = True
                continue
            failing = False
            for meeting_id in ended:
                if meeting_id in self.rooms:
                    log.info("meeting %s was ended elsewhere: closing its room", meeting_id)
                    with suppress(MeetingNotFound, InvalidTransition, StoreUnavailable):
                        await self._controls.end_meeting(meeting_id, by=None)

    def bookkeeping(self) -> Bookkeeping:
        tasks = tuple(t.name for t in self._nursery.child_tasks) if self._nursery else ()
        return Bookkeeping(
            tasks=tasks,
            room_locks=len(self._room_locks),
            employee_locks=len(self._employee_locks),
            joining=sum(self._joining.values()),
            unjoined=len(self._unjoined),
        )

    # The transport entry point

    async def serve(
        self,
        conn: Connection,
        *,
        token: str | None = None,
        resume_token: str | None = None,
        last_seq: int | None = None,
        request_id: RequestId | None = None,
    ) -> None:
        """Run one client connection to the end. Never raises for anything the client does.

        ``token`` (and ``resume_token``, ``last_seq``) when the transport took them from
        the URL; otherwise the first frame must be an ``auth`` request carrying them.
        """
        finished = trio.Event()
        if await self.hand_over(
            conn,
            token=token,
            resume_token=resume_token,
            last_seq=last_seq,
            request_id=request_id,
            done=finished.set,
        ):
            await finished.wait()

    async def hand_over(
        self,
        conn: Connection,
        *,
        token: str | None = None,
        resume_token: str | None = None,
        last_seq: int | None = None,
        request_id: RequestId | None = None,
        done: Callable[[], None],
    ) -> bool:
        """Authenticate ``conn`` and give it to its room; :meth:`serve` without the wait.

        True once a room has the connection: the room's tasks read, write and close it,
        and call ``done()`` once they are finished with it. False if it was refused (and
        closed, here). So a transport need not keep a task waiting for each joined
        connection, as the standalone listener does not (a task costs ~3 KB per peer).
        """
        auth = await self.authenticate(
            conn,
            token=token,
            resume_token=resume_token,
            last_seq=last_seq,
            request_id=request_id,
        )
        return auth is not None and await self.hand_over_authenticated(conn, auth, done=done)

    async def authenticate(
        self,
        conn: Connection,
        *,
        token: str | None = None,
        resume_token: str | None = None,
        last_seq: int | None = None,
        request_id: RequestId | None = None,
    ) -> Authenticated | None:
        """The connection's verified claims, or None once it has been refused and closed.

        Waits for the ``auth`` frame when the token did not come with the connection.
        """
        if self.stopping:
            await self._refuse(conn, self._shutting_down(), None)
            return None
        if token is None:
            with trio.CancelScope() as waiting:
                self._unjoined.add(waiting)
                try:
                    token, resume_token, last_seq, request_id = await self._await_auth(conn)
                except JoinRefused as refusal:
                    await self._refuse(conn, refusal, None)
                    return None
                except ConnectionClosed:
                    return None
                finally:
                    self._unjoined.discard(waiting)
            if token is None:  # the server began shutting down first
                await self._refuse(conn, self._shutting_down(), None)
                return None
        try:
            claims = verify_token(self.keys, token)
        except TokenError as exc:
            self._events.emit(JoinRejected("auth-failed"))
            await self._refuse(
                conn,
                JoinRefused(ErrorCode.AUTH_FAILED, CloseCode.AUTH_FAILED, str(exc)),
                request_id,
            )
            return None
        return Authenticated(claims, token, resume_token, last_seq, request_id)

    async def serve_authenticated(self, conn: Connection, auth: Authenticated) -> None:
        """Join the authenticated connection to its room and return when it is done there."""
        finished = trio.Event()
        if await self.hand_over_authenticated(conn, auth, done=finished.set):
            await finished.wait()

    async def hand_over_authenticated(
        self, conn: Connection, auth: Authenticated, *, done: Callable[[], None]
    ) -> bool:
        """Give the authenticated connection to its room (see :meth:`hand_over`)."""
        try:
            await self._join(
                auth.claims, conn, auth.request_id, done, auth.resume_token, auth.last_seq
            )
        except JoinRefused as refusal:
            await self._refuse(conn, refusal, auth.request_id)
            return False
        return True

    async def refuse(
        self, conn: Connection, refusal: JoinRefused, request_id: RequestId | None
    ) -> None:
        """Send ``refusal``'s error frame and close the connection with its code."""
        await self._refuse(conn, refusal, request_id)

    def _shutting_down(self) -> JoinRefused:
        return JoinRefused(
            ErrorCode.SHUTTING_DOWN, CloseCode.GOING_AWAY, "server is shutting down; reconnect"
        )

    async def _await_auth(
        self, conn: Connection
    ) -> tuple[str, str | None, int | None, RequestId | None]:
        with trio.move_on_after(self._config.auth_timeout):
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
                token = data["meetingAccessToken"]
                return token, data.get("resumeToken"), data.get("lastSeq"), request.id
        self._events.emit(JoinRejected("auth-timeout"))
        raise JoinRefused(
            ErrorCode.AUTH_TIMEOUT,
            CloseCode.AUTH_TIMEOUT,
            f"no auth request within {self._config.auth_timeout:g} seconds",
        )

    async def _refuse(
        self, conn: Connection, refusal: JoinRefused, request_id: RequestId | None
    ) -> None:
        with trio.move_on_after(self._config.close_timeout):
            with suppress(ConnectionClosed):
                await conn.send(
                    [encode_error(refusal.code, refusal.message, request_id=request_id)]
                )
            await conn.close(refusal.close_code, refusal.message[:120])

    def _check_may_join(self, meeting_id: str, emp_id: str) -> None:
        try:
            self._controls.check_may_join(meeting_id, emp_id)
        except JoinRefused as refusal:
            self._events.emit(JoinRejected(refusal.code.lower().replace("_", "-")))
            raise

    async def _join(
        self,
        claims: Claims,
        conn: Connection,
        request_id: RequestId | None,
        done: Callable[[], None],
        resume_token: str | None = None,
        last_seq: int | None = None,
    ) -> None:
        """Attach ``conn`` to its peer; ``done()`` is called when the room is done with it."""
        meeting_id, emp_id = claims.meeting_id, claims.emp_id
        self._check_may_join(meeting_id, emp_id)
        if self.claims is not None:
            await self.claims.claim(meeting_id)
        async with self._employee_locks.hold((meeting_id, emp_id)):
            if self.stopping:
                raise self._shutting_down()
            room = self.rooms.get(meeting_id)
            if resume_token is not None:
                # The access token proved who this is; the resume token proves it is the
                # connection that held the place. Anything less is an ordinary join.
                if room is not None and room.resume(
                    emp_id, resume_token, conn, done, request_id, last_seq
                ):
                    return
                self._events.emit(ResumeRefused(meeting_id, emp_id))
            existing = room.member(emp_id) if room is not None else None
            if (
                existing is not None
                and not existing.detached  # a place kept for a resume is taken over instead
                and self._config.duplicate_policy is DuplicatePolicy.REJECT
            ):
                self._events.emit(JoinRejected("duplicate"))
                raise JoinRefused(
                    ErrorCode.DUPLICATE_SESSION,
                    CloseCode.DUPLICATE_SESSION,
                    "this employee is already connected to the meeting",
                )
            if existing is None:
                self._check_room_size(meeting_id, room)
            self._joining[meeting_id] = self._joining.get(meeting_id, 0) + 1
            try:
                await self._admit_and_attach(claims, conn, request_id, room, done)
            finally:
                self._joining[meeting_id] -= 1
                if not self._joining[meeting_id]:
                    del self._joining[meeting_id]

    def _check_room_size(self, meeting_id: str, room: Room | None) -> None:
        limit = self._config.max_room_peers
        present = len(room.peers) if room is not None else 0
        if limit and present + self._joining.get(meeting_id, 0) >= limit:
            self._events.emit(JoinRejected("room-full"))
            raise JoinRefused(
                ErrorCode.ROOM_FULL, CloseCode.ROOM_FULL, f"the room is full ({limit} peers)"
            )

    async def _admit_and_attach(
        self,
        claims: Claims,
        conn: Connection,
        request_id: RequestId | None,
        room: Room | None,
        done: Callable[[], None],
    ) -> None:
        meeting_id, emp_id = claims.meeting_id, claims.emp_id
        joined_at = utcnow()
        admission = await self._admit(claims, joined_at)
        try:
            room = await self._room_for(admission.meeting)
            self._check_may_join(meeting_id, emp_id)
            if self.stopping:
                raise self._shutting_down()
        except BaseException:
            # Admitted but never attached: the attendance row must still be closed,
            # and a room opened for this join alone must not stay open, empty.
            if room is not None:
                room.close_if_empty()
            with trio.CancelScope(shield=True):
                reason = LeaveReason.SERVER_SHUTDOWN if self.stopping else LeaveReason.MEETING_ENDED
                await self.leaves.record(Leave(admission.attendance_id, utcnow(), reason.value))
            raise
        peer = Peer(
            emp_id=emp_id,
            display_name=claims.display_name,
            role=admission.role,
            attendance_id=admission.attendance_id,
            joined_at=joined_at,
            outbox_size=self._config.outbox_size,
        )
        room.attach(peer, conn, done, request_id)

    async def _admit(self, claims: Claims, at: dt.datetime) -> Admission:
        try:
            return await self.store.admit(
                meeting_id=claims.meeting_id,
                emp_id=claims.emp_id,
                display_name=claims.display_name,
                role=claims.role,
                at=at,
            )
        except MeetingNotFound:
            self._events.emit(JoinRejected("meeting-not-found"))
            raise JoinRefused(
                ErrorCode.MEETING_NOT_FOUND, CloseCode.MEETING_UNAVAILABLE, "meeting does not exist"
            ) from None
        except MeetingNotLive as exc:
            if exc.status is MeetingStatus.ENDED:
                self._events.emit(JoinRejected("meeting-ended"))
                raise JoinRefused(
                    ErrorCode.MEETING_ENDED, CloseCode.MEETING_ENDED, "meeting has ended"
                ) from None
            self._events.emit(JoinRejected("meeting-not-live"))
            raise JoinRefused(
                ErrorCode.MEETING_NOT_LIVE,
                CloseCode.MEETING_UNAVAILABLE,
                "meeting has not started yet",
            ) from None
        except EmployeeBanned:
            self._events.emit(JoinRejected("banned"))
            raise JoinRefused(
                ErrorCode.BANNED, CloseCode.BANNED, "you are banned from this meeting"
            ) from None
        except StoreUnavailable:
            self._events.emit(JoinRejected("store-unavailable"))
            raise JoinRefused(
                ErrorCode.STORE_UNAVAILABLE,
                CloseCode.TRY_AGAIN_LATER,
                "the database is unavailable; try again shortly",
            ) from None

    def live_attendance_ids(self) -> list[int]:
        """Attendance rows of every member seen now (for the last-seen heartbeat)."""
        return [i for room in self.rooms.values() for i in room.live_attendance_ids()]

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
                self._events.emit(RoomOpened(meeting.id))
            return room

    async def evict(self, meeting_id: str, exit: Exit | None = None) -> None:
        """Close one room as a shutdown would (every peer told to reconnect, 1001), and
        return once its peers are done. A cluster node does this to a room whose lease it
        lost or hands over; the meeting itself goes on (elsewhere)."""
        room = self.rooms.get(meeting_id)
        if room is None:
            return
        reconnect_after = self._config.shutdown_reconnect_after
        await room.close_all(lambda: exit or lifecycle.shutdown(reconnect_after))
        await room.done.wait()

    # Shortcuts to the host controls, for the service layer

    async def end_meeting(
        self, meeting_id: str, *, by: str | None, actor: Peer | None = None
    ) -> Meeting:
        return await self._controls.end_meeting(meeting_id, by=by, actor=actor)

    async def kick(self, meeting_id: str, emp_id: str, *, by: str | None = None) -> bool:
        return await self._controls.kick(meeting_id, emp_id, by=by)

    async def ban(
        self, meeting_id: str, emp_id: str, *, by: str | None = None, reason: str | None = None
    ) -> None:
        await self._controls.ban(meeting_id, emp_id, by=by, reason=reason)

    async def unban(self, meeting_id: str, emp_id: str, *, by: str | None = None) -> bool:
        return await self._controls.unban(meeting_id, emp_id, by=by)

    def live_peers(self, meeting_id: str) -> list[dict[str, Any]]:
        room = self.rooms.get(meeting_id)
        return room.describe() if room is not None else []

    async def participants(self, meeting_id: str) -> list[dict[str, Any]]:
        """:meth:`live_peers`, as the service layer asks every live-room owner (a cluster's
        is on another node)."""
        return self.live_peers(meeting_id)
