"""Host controls: kick, ban, unban, promote, demote, end — the one implementation of each.

Three callers share these operations: a host's ``host:*`` command on its own
connection (the handlers at the bottom, which check permissions first), the
HTTP API and the CLI (through :class:`meshroom.service.MeetingService`).

What runs after a kick, for example::

    HostControls.kick
      → Room.remove(peer, kicked(by))      peer:left to the others, the peer CLOSING
      → the peer's own task (Room._teardown): session:closed, close 4005, leave written
      → kick returns once that is done; the employee is refused (KICKED) for
        kick_rejoin_block seconds
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final, Protocol

import trio

from ..protocol import CloseCode, ErrorCode, Request
from ..roles import Action, Role, may
from ..store.base import InvalidTransition, Meeting, MeetingStatus, Store
from . import lifecycle
from .attendance import LeaveWriter, utcnow
from .events import EventBus, MeetingEnded
from .locks import KeyedLocks
from .options import HubConfig, JoinRefused
from .room import refusal

if TYPE_CHECKING:
    from .peer import Peer
    from .room import Handler, Room

# How long an ended meeting is remembered in memory, to close the window between
# a join's admission (meeting still LIVE) and its attachment (meeting ended since).
ENDED_MEMORY_SECONDS: Final = 120.0


class RoomRegistry(Protocol):
    """The rooms the controls act on (the hub)."""

    def room(self, meeting_id: str) -> Room | None: ...

    def forget(self, room: Room) -> None: ...


class HostControls:
    def __init__(
        self,
        *,
        store: Store,
        rooms: RoomRegistry,
        leaves: LeaveWriter,
        config: HubConfig,
        events: EventBus,
        employee_locks: KeyedLocks,
    ) -> None:
        self.store = store
        self.rooms = rooms
        self.leaves = leaves
        self.config = config
        self.events = events
        # Held by a join and by a ban of the same employee, so neither overtakes the other.
        self.employee_locks = employee_locks
        self._recently_ended: dict[str, float] = {}  # meeting id -> trio time to forget it
        self._recently_kicked: dict[tuple[str, str], float] = {}  # -> trio time block ends
        self.handlers: dict[str, Handler] = {
            "host:kick": self._on_kick,
            "host:ban": self._on_ban,
            "host:unban": self._on_unban,
            "host:end": self._on_end,
            "host:promote": self._on_promote,
            "host:demote": self._on_demote,
        }

    # What a join must respect

    def check_may_join(self, meeting_id: str, emp_id: str) -> None:
        """Raise JoinRefused if the meeting just ended or the employee was just kicked."""
        now = trio.current_time()
        _forget_expired(self._recently_ended, now)
        _forget_expired(self._recently_kicked, now)
        if meeting_id in self._recently_ended:
            raise JoinRefused(ErrorCode.MEETING_ENDED, CloseCode.MEETING_ENDED, "meeting has ended")
        until = self._recently_kicked.get((meeting_id, emp_id))
        if until is not None:
            raise JoinRefused(
                ErrorCode.KICKED,
                CloseCode.KICKED,
                f"removed from this meeting by a host; you may rejoin in {until - now:.0f} s",
            )

    # The operations

    async def kick(self, meeting_id: str, emp_id: str, *, by: str | None = None) -> bool:
        """Remove a live peer; returns once its connection is closed and its leave written.

        False if it is not in the room.
        """
        room = self.rooms.room(meeting_id)
        if room is None or room.member(emp_id) is None:
            return False
        if self.config.kick_rejoin_block > 0:
            # Before the removal: a client that reconnects at once must find the block.
            self._recently_kicked[(meeting_id, emp_id)] = (
                trio.current_time() + self.config.kick_rejoin_block
            )
        return await room.remove_and_wait(emp_id, lifecycle.kicked(by))

    async def ban(
        self, meeting_id: str, emp_id: str, *, by: str | None = None, reason: str | None = None
    ) -> None:
        """Ban an employee (present or not) and remove it if it is in the room."""
        async with self.employee_locks.hold((meeting_id, emp_id)):
            await self.store.ban(
                meeting_id=meeting_id, emp_id=emp_id, by=by, reason=reason, at=utcnow()
            )
            room = self.rooms.room(meeting_id)
            if room is not None:
                await room.remove_and_wait(emp_id, lifecycle.banned(by))

    async def unban(self, meeting_id: str, emp_id: str, *, by: str | None = None) -> bool:
        """Lift a ban (and a kick's rejoin block). True if there was a ban."""
        self._recently_kicked.pop((meeting_id, emp_id), None)
        return await self.store.unban(meeting_id=meeting_id, emp_id=emp_id, by=by)

    async def set_role(
        self, meeting_id: str, emp_id: str, role: Role, *, reason: str, by: str | None
    ) -> None:
        """Persist a role override; a member present now gets it at once."""
        await self.store.set_role_override(
            meeting_id=meeting_id, emp_id=emp_id, role=role, reason=reason, by=by
        )
        room = self.rooms.room(meeting_id)
        peer = room.member(emp_id) if room is not None else None
        if room is not None and peer is not None:
            room.set_role(peer, role, reason=reason, by=by)

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
            meeting = await self.store.transition(meeting_id, MeetingStatus.ENDED, by=by)
        except InvalidTransition as exc:
            # Ended elsewhere (the CLI, another server) while its room lives here: close it too.
            ended = await self.store.get_meeting(meeting_id)
            live_here = self.rooms.room(meeting_id) is not None
            if exc.current is not MeetingStatus.ENDED or not live_here or ended is None:
                raise
            meeting = ended
        self._recently_ended[meeting_id] = trio.current_time() + ENDED_MEMORY_SECONDS
        self.events.emit(MeetingEnded(meeting_id, by))
        room = self.rooms.room(meeting_id)
        if room is not None:
            self.rooms.forget(room)  # at once: an ended meeting has no room, even while it closes
            await room.close_all(lambda: lifecycle.meeting_ended(by), actor=actor)
        return meeting

    # The host:* commands, as a peer sends them

    def _target_for(self, room: Room, actor: Peer, request: Request, action: Action) -> Peer:
        if not may(actor.role, action):
            raise refusal(request, ErrorCode.FORBIDDEN, f"a {actor.role.value} may not {action}")
        emp_id = request.data["targetEmpId"]
        target = room.member(emp_id)
        if target is None:
            raise refusal(request, ErrorCode.TARGET_NOT_FOUND, f"no peer {emp_id!r} in this room")
        if target is actor:
            raise refusal(request, ErrorCode.CANNOT_TARGET_SELF, f"a peer cannot {action} itself")
        if not may(actor.role, action, target.role):
            raise refusal(
                request,
                ErrorCode.FORBIDDEN,
                f"a {actor.role.value} may not {action} a {target.role.value}",
            )
        return target

    async def _on_kick(self, room: Room, actor: Peer, request: Request) -> bool:
        target = self._target_for(room, actor, request, Action.KICK)
        await self.kick(room.id, target.emp_id, by=actor.emp_id)
        room.ack(actor, request, {"targetEmpId": target.emp_id})
        return False

    async def _on_ban(self, room: Room, actor: Peer, request: Request) -> bool:
        target = self._target_for(room, actor, request, Action.BAN)
        await self.ban(room.id, target.emp_id, by=actor.emp_id, reason=request.data.get("reason"))
        room.ack(actor, request, {"targetEmpId": target.emp_id})
        return False

    async def _on_unban(self, room: Room, actor: Peer, request: Request) -> bool:
        if not may(actor.role, Action.UNBAN):
            raise refusal(request, ErrorCode.FORBIDDEN, f"a {actor.role.value} may not unban")
        emp_id = request.data["targetEmpId"]
        lifted = await self.unban(room.id, emp_id, by=actor.emp_id)
        room.ack(actor, request, {"targetEmpId": emp_id, "unbanned": lifted})
        return False

    async def _on_end(self, room: Room, actor: Peer, request: Request) -> bool:
        if not may(actor.role, Action.END):
            raise refusal(
                request, ErrorCode.FORBIDDEN, f"a {actor.role.value} may not end the meeting"
            )
        await self.end_meeting(room.id, by=actor.emp_id, actor=actor)
        room.ack(actor, request, {"meetingId": room.id})
        return True

    async def _on_promote(self, room: Room, actor: Peer, request: Request) -> bool:
        return await self._change_role(room, actor, request, Action.PROMOTE, Role.COHOST)

    async def _on_demote(self, room: Room, actor: Peer, request: Request) -> bool:
        return await self._change_role(room, actor, request, Action.DEMOTE, Role.PARTICIPANT)

    async def _change_role(
        self, room: Room, actor: Peer, request: Request, action: Action, to: Role
    ) -> bool:
        target = self._target_for(room, actor, request, action)
        await self.set_role(room.id, target.emp_id, to, reason=action.value, by=actor.emp_id)
        room.ack(actor, request, {"targetEmpId": target.emp_id, "role": to.value})
        return False


def _forget_expired(memory: dict[Any, float], now: float) -> None:
    for key, until in list(memory.items()):
        if until < now:
            del memory[key]
