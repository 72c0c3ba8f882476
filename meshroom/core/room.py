"""A room: the live side of one meeting.

Each room runs a nursery that owns its peers' tasks (a reader and a writer per
peer). Relaying is peer -> room -> the target's bounded outbox, drained by the
target's writer. Removal (leave, kick, ban, replacement, meeting end) is one
synchronous step, :meth:`Room._remove`, followed by cancelling the peer's read
scope; the peer's own task then closes its connection and records its leave,
and sets ``peer.finished``. Whoever must know the removal is complete waits on
that event.

A peer outlives its connections. Its task (``_run_peer``, owned by the room's
nursery) runs one *session* per connection. When a connection drops rather than
being removed (exit ``disconnected`` or ``timeout``) and the room allows
resumes, the peer stays a member, detached: its task waits, still in the
room's nursery, for a connection that presents its resume token
(:meth:`Room.resume`) or for the grace window to run out, while its outbox keeps
taking what the room sends it. The other peers see nothing of it unless the
window runs out: then it leaves, as of the moment its connection dropped.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import enum
import logging
import math
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final

import trio

from ..protocol import (
    CloseCode,
    ErrorCode,
    LeaveReason,
    ProtocolError,
    Request,
    decode_request,
    encode_ack,
    encode_error,
    encode_event,
    encode_protocol_error,
)
from ..roles import Action, Role, may
from ..store import Leave, Meeting, StoreUnavailable
from . import peer as exits
from .connection import Connection, ConnectionClosed, ConnectionTimedOut, MessageTooLarge
from .limits import Verdict, rate_limiter
from .peer import Exit, Peer, Takeover

if TYPE_CHECKING:
    from .hub import Hub

log = logging.getLogger(__name__)

# The payload field each signal carries, relayed untouched.
SIGNAL_PAYLOADS: Final = {
    "signal:offer": "offer",
    "signal:answer": "answer",
    "signal:ice": "candidate",
}
# Frames a writer sends in one go when its queue has backed up.
WRITE_BATCH: Final = 256
# A reader lets the other tasks (the targets' writers) run after this many frames.
YIELD_EVERY: Final = 32
# One relayed signal in this many is timed for the relay latency histogram.
LATENCY_SAMPLE_EVERY: Final = 32

Handler = Callable[[Peer, Request], Awaitable[bool]]


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class _Outcome(enum.Enum):
    """How one connection of a peer ended."""

    END = "end"  # the peer leaves the room
    DETACH = "detach"  # the connection dropped; the peer waits for a resume
    TAKEOVER = "takeover"  # another connection resumed the peer


class Room:
    def __init__(self, hub: Hub, meeting: Meeting) -> None:
        self.hub = hub
        self.meeting = meeting
        self.peers: dict[str, Peer] = {}  # insertion order is join order
        self.ending = False
        self.closed = False
        self._nursery: trio.Nursery | None = None
        self._close_requested = trio.Event()
        self.done = trio.Event()
        self._handlers: dict[str, Handler] = {
            "presence:update": self._on_presence,
            "peer:leave": self._on_leave,
            "ping": self._on_ping,
            "auth": self._on_auth_again,
            "host:kick": self._on_kick,
            "host:ban": self._on_ban,
            "host:unban": self._on_unban,
            "host:end": self._on_end,
            "host:promote": self._on_promote,
            "host:demote": self._on_demote,
        }

    @property
    def id(self) -> str:
        return self.meeting.id

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own the peers' tasks until the room empties (or the hub is cancelled)."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                await self._close_requested.wait()
        finally:
            self.closed = True
            self.hub._forget_room(self)
            self.done.set()

    # Membership

    def attach(
        self,
        peer: Peer,
        conn: Connection,
        request_id: Any = None,
        done: trio.Event | None = None,
    ) -> None:
        """Admit an authenticated peer: snapshot to it, ``peer:joined`` to the others.

        Synchronous on purpose: between the check that a room is open and the
        moment the peer is in it, nothing else can run. ``done`` is set once the
        room is finished with ``conn`` (the peer may live on, resumed elsewhere).
        """
        assert self._nursery is not None and not self.closed
        existing = self.peers.get(peer.emp_id)
        if existing is not None:
            self._remove(
                existing,
                Exit.removed(
                    LeaveReason.REPLACED,
                    CloseCode.REPLACED,
                    None,
                    "the same employee joined from another connection",
                ),
            )
        self._send(peer, encode_event("room:joined", self._snapshot(peer), request_id))
        self._broadcast(encode_event("peer:joined", peer.public()))
        self.peers[peer.emp_id] = peer
        self.hub.metrics.peer_joined()
        if peer.role is Role.HOST:
            self._restore_roles_after_host_return()
        elif existing is not None and existing.role is Role.HOST:
            self._hand_over_host()  # an acting host reconnected: the room keeps a host
        if done is None:
            done = trio.Event()
        self._nursery.start_soon(self._run_peer, peer, conn, done, name=f"peer:{peer.emp_id}")

    def _snapshot(self, peer: Peer) -> dict[str, Any]:
        snapshot = {
            "self": peer.public(),
            "meeting": {
                "id": self.meeting.id,
                "title": self.meeting.title,
                "roomCode": self.meeting.room_code,
                "hostEmpId": self.meeting.host_emp_id,
            },
            "peers": [p.public() for p in self.peers.values() if p is not peer],
            "iceServers": self.hub.config.ice.servers_for(peer.emp_id),
        }
        if self.hub.config.resume_grace > 0:
            snapshot["resumeToken"] = peer.new_resume_token()
        return snapshot

    def resume(
        self, emp_id: str, resume_token: str, conn: Connection, request_id: Any = None
    ) -> trio.Event | None:
        """Hand ``conn`` to the member ``emp_id`` if ``resume_token`` is its current one.

        Works whether the peer is detached or still attached (its client may have
        noticed the drop first); the old connection is then closed (4013). The token
        is used up at once; the new connection gets a fresh one in ``room:resumed``.
        Returns the event set once the room is done with ``conn``, or None (nothing
        changed) if the peer is not here, is being removed, or the token is wrong.
        Synchronous, like :meth:`attach`.
        """
        peer = self.peers.get(emp_id)
        if (
            peer is None
            or self.ending
            or self.closed
            or (peer.exit is not None and not peer.exit.resumable)
            or not peer.resume_token_matches(resume_token)
        ):
            return None
        peer.resume_token = None
        done = trio.Event()
        previous, peer.takeover = peer.takeover, Takeover(conn, request_id, done)
        if previous is not None:  # cannot happen (the token is single-use), but never leak one
            previous.done.set()
        # The old connection's writer stops now (a batch it was writing is kept in
        # peer.unsent); what is queued from here on goes to the new connection.
        peer.write_scope.cancel()
        if peer.detached or peer.receiving:
            # Waiting for a resume, or for a frame: stop waiting. A reader busy with a
            # request is left to finish it (cancelling a host command halfway could leave
            # it half done) and stops before reading again.
            peer.read_scope.cancel()
        return done

    def _remove(self, peer: Peer, exit: Exit, *, cancel: bool = True) -> bool:
        """Take a peer out of the room now. False if it was no longer a member."""
        if self.peers.get(peer.emp_id) is not peer:
            return False
        del self.peers[peer.emp_id]
        if peer.exit is None or peer.exit.resumable:
            peer.exit = exit
        if cancel:
            peer.read_scope.cancel()
        self.hub.metrics.peer_left(peer.exit.reason)
        if not self.ending:
            self._broadcast(
                encode_event("peer:left", {"empId": peer.emp_id, "reason": peer.exit.reason.value})
            )
            if peer.role is Role.HOST:
                self._hand_over_host()
        return True

    def _maybe_close(self) -> None:
        if not self.peers and not self.closed:
            # Forget the room now, synchronously, so that the next join opens a fresh one.
            self.closed = True
            self.hub._forget_room(self)
            self._close_requested.set()

    # Delivery

    def _send(self, peer: Peer, frame: bytes) -> None:
        try:
            peer.outbox.send_nowait(frame)
        except trio.WouldBlock:
            # The peer reads slower than the room talks to it (or, detached, did not come
            # back before its outbox filled). Dropping frames would corrupt its WebRTC
            # negotiation, so it is disconnected instead.
            if peer.exit is None or peer.exit.resumable:
                # (A dropped peer whose queue overflows cannot resume: a frame is lost.)
                peer.exit = exits.SLOW_CONSUMER
                log.warning("disconnecting slow consumer %s in %s", peer.emp_id, self.id)
            peer.read_scope.cancel()
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass  # the peer is already winding down

    def _broadcast(self, frame: bytes, *, exclude: Peer | None = None) -> None:
        for peer in list(self.peers.values()):
            if peer is not exclude:
                self._send(peer, frame)

    # A peer's life

    async def _run_peer(self, peer: Peer, conn: Connection, done: trio.Event) -> None:
        """The peer's whole membership: a session per connection, detached between them."""
        config = self.hub.config
        try:
            while True:
                outcome = await self._run_session(peer, conn, done)
                # Closing the dropped connection took time: a resume or a removal may
                # have come meanwhile, and then there is nothing to wait for.
                if outcome is _Outcome.DETACH and self._session_end(peer) is _Outcome.DETACH:
                    peer.detached = True
                    # A fresh scope: _remove and resume() cancel it, as they would a reader.
                    with trio.CancelScope(deadline=peer.grace_ends) as peer.read_scope:
                        await trio.sleep_forever()
                    peer.detached = False
                takeover = peer.takeover
                if takeover is None or self._session_end(peer) is not _Outcome.TAKEOVER:
                    break
                # Resumed: the new connection's first frame is room:resumed, then what
                # could not be written before, then everything queued since.
                peer.takeover = None
                peer.exit = None
                peer.dropped_at = None
                conn, done = takeover.conn, takeover.done
                resumed = self._snapshot(peer)
                resumed["queued"] = len(peer.unsent) + peer.outbox.statistics().current_buffer_used
                peer.unsent.insert(0, encode_event("room:resumed", resumed, takeover.request_id))
                self.hub.metrics.resumed()
        finally:
            with trio.CancelScope(shield=True):
                if peer.exit is None:
                    # Cancelled from outside (the hub stopping) without being told why.
                    peer.exit = exits.SHUTDOWN
                peer.detached = False
                self._remove(peer, peer.exit, cancel=False)
                peer.outbox.close()
                if peer.takeover is not None:
                    # A resume that lost the race with this peer's removal.
                    with trio.move_on_after(config.close_timeout):
                        await peer.takeover.conn.close(
                            peer.exit.close_code, peer.exit.close_reason
                        )
                    peer.takeover.done.set()
                    peer.takeover = None
                await self._record_leave(peer)
                done.set()  # the last connection's serve() returns once its leave is written
                peer.finished.set()
                self._maybe_close()

    def _session_end(self, peer: Peer) -> _Outcome:
        """What the end of the current connection means for the peer."""
        if self.peers.get(peer.emp_id) is not peer or self.ending or self.hub.stopping:
            return _Outcome.END
        if peer.exit is not None and not peer.exit.resumable:
            return _Outcome.END
        if peer.takeover is not None:
            return _Outcome.TAKEOVER
        if peer.exit is not None and self.hub.config.resume_grace > 0:
            return _Outcome.DETACH
        return _Outcome.END

    async def _run_session(self, peer: Peer, conn: Connection, done: trio.Event) -> _Outcome:
        """Read and write one connection of the peer until it ends, and close it.

        Unless the peer leaves with it (END: the caller finishes the peer, then sets
        ``done``), ``done`` is set here, once the connection is closed.
        """
        config = self.hub.config
        outcome = _Outcome.END
        peer.read_scope = trio.CancelScope()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._write_loop, peer, conn)
                with peer.read_scope:
                    await self._read_loop(peer, conn)
                outcome = self._session_end(peer)
                if outcome is _Outcome.END:
                    exit = peer.exit or exits.DISCONNECTED
                    self._remove(peer, exit, cancel=False)
                    if exit.reason is LeaveReason.SLOW_CONSUMER:
                        # Its queue is full of frames it will never use: drop them, so the
                        # notice saying why it is cut off is next in line.
                        _discard_queued(peer)
                    for frame in exit.frames():
                        self._send(peer, frame)
                    # The writer drains what is queued (the notices last), then stops; a
                    # client that does not take it within close_timeout is cut off.
                    peer.outbox.close()
                    nursery.cancel_scope.deadline = trio.current_time() + config.close_timeout
                else:
                    # The outbox stays open for the next connection; the writer stops now.
                    if outcome is _Outcome.DETACH:
                        peer.dropped_at = utcnow()
                        peer.grace_ends = trio.current_time() + config.resume_grace
                    nursery.cancel_scope.cancel()
        except Exception:
            log.exception("peer session %s in room %s failed", peer.emp_id, self.id)
            if peer.exit is None or peer.exit.resumable:
                peer.exit = exits.INTERNAL
            outcome = _Outcome.END
        finally:
            with trio.CancelScope(shield=True):
                if outcome is _Outcome.TAKEOVER:
                    code, reason = CloseCode.RESUMED_ELSEWHERE, "resumed on another connection"
                else:
                    if peer.exit is None:
                        peer.exit = exits.SHUTDOWN  # cancelled from outside: the hub stopping
                    if outcome is _Outcome.END:
                        self._remove(peer, peer.exit, cancel=False)
                    code, reason = peer.exit.close_code, peer.exit.close_reason
                with trio.move_on_after(config.close_timeout):
                    await conn.close(code, reason)
                if outcome is not _Outcome.END:
                    done.set()
        return outcome

    async def _record_leave(self, peer: Peer) -> None:
        if peer.leave_recorded:
            return
        assert peer.exit is not None
        # The hub's leave writer owns it from here: written now if the database is up,
        # else kept and retried until it is (never lost, never written twice).
        peer.leave_recorded = True
        # A peer whose connection dropped left when it dropped, not when its window ran out.
        left_at = peer.dropped_at or utcnow()
        await self.hub.leaves.record(Leave(peer.attendance_id, left_at, peer.exit.reason.value))

    async def _write_loop(self, peer: Peer, conn: Connection) -> None:
        reader = peer.outbox_reader
        samples = peer.latency_samples
        with trio.CancelScope() as peer.write_scope:
            try:
                if peer.unsent:  # a resumed connection: what the last one could not write
                    await conn.send(peer.unsent)
                    peer.unsent = []
                async for frame in reader:
                    batch = [frame]
                    while len(batch) < WRITE_BATCH:
                        try:
                            batch.append(reader.receive_nowait())
                        except (trio.WouldBlock, trio.EndOfChannel):
                            break
                    # Samples taken so far belong to frames already queued, hence in this
                    # batch (or an earlier one) unless the batch was cut at WRITE_BATCH.
                    timed = len(samples)
                    # Kept until written: if the connection drops now, a resume resends them.
                    peer.unsent = batch
                    await conn.send(batch)
                    peer.unsent = []
                    if timed:
                        self.hub.metrics.observe_relay(samples, timed, trio.current_time())
            except ConnectionClosed as exc:
                if peer.exit is None:
                    timed_out = isinstance(exc, ConnectionTimedOut)
                    peer.exit = exits.TIMEOUT if timed_out else exits.DISCONNECTED
                peer.read_scope.cancel()

    async def _read_loop(self, peer: Peer, conn: Connection) -> None:
        handlers = self._handlers
        config = self.hub.config
        limiter = rate_limiter(config.rate_limit, config.rate_burst)
        handled = 0
        while not peer.is_superseded():
            handled += 1
            if handled % YIELD_EVERY == 0:
                # One network read can hold hundreds of frames; without a pause here the
                # targets' writers would not run until all are relayed, and a burst
                # could overflow a reader that is not slow at all.
                await trio.lowlevel.checkpoint()
            peer.receiving = True  # only then may a resume cancel this reader (see resume)
            try:
                message: str | bytes | MessageTooLarge = await conn.receive()
            except ConnectionClosed as exc:
                if peer.exit is None:
                    timed_out = isinstance(exc, ConnectionTimedOut)
                    peer.exit = exits.TIMEOUT if timed_out else exits.DISCONNECTED
                return
            except MessageTooLarge as exc:
                message = exc
            finally:
                peer.receiving = False
            if peer.is_superseded():
                return  # resumed on another connection: this one is done
            if limiter is not None and (verdict := limiter.check()) is not Verdict.ALLOW:
                if verdict is Verdict.CLOSE:
                    if peer.exit is None:
                        peer.exit = exits.RATE_LIMITED
                    return
                self._send(peer, _rate_limited(message))
                continue
            if isinstance(message, MessageTooLarge):
                self._send(peer, encode_error(ErrorCode.FRAME_TOO_LARGE, str(message)))
                continue
            if not isinstance(message, str):
                self._send(
                    peer,
                    encode_error(ErrorCode.BINARY_NOT_SUPPORTED, "frames must be JSON text"),
                )
                continue
            try:
                request = decode_request(message)
                if request.event in SIGNAL_PAYLOADS:
                    self._relay(peer, request)
                elif await handlers[request.event](peer, request):
                    return
            except ProtocolError as exc:
                self._send(peer, encode_protocol_error(exc))
            except StoreUnavailable:
                self._send(
                    peer,
                    encode_error(
                        ErrorCode.STORE_UNAVAILABLE,
                        "the database is unavailable; try again",
                        request_id=request.id,
                        event=request.event,
                    ),
                )

    # Signals and presence

    def _relay(self, peer: Peer, request: Request) -> None:
        data = request.data
        target = self.peers.get(data["targetEmpId"])
        if target is None or target is peer:
            raise _refusal(
                request,
                ErrorCode.TARGET_NOT_FOUND if target is None else ErrorCode.CANNOT_TARGET_SELF,
                f"no peer {data['targetEmpId']!r} in this room"
                if target is None
                else "a peer cannot signal itself",
            )
        key = SIGNAL_PAYLOADS[request.event]
        self._send(target, encode_event(request.event, {"fromEmpId": peer.emp_id, key: data[key]}))
        if self.hub.metrics.relayed(request.event) % LATENCY_SAMPLE_EVERY == 0:
            target.latency_samples.append(trio.current_time())
        if request.id is not None:
            self._send(peer, encode_ack(request.id))

    async def _on_presence(self, peer: Peer, request: Request) -> bool:
        peer.presence.update(request.data)  # validated: only known boolean keys
        for key in list(peer.presence):
            if key not in ("muted", "cameraOff", "handRaised"):
                del peer.presence[key]
        self._broadcast(
            encode_event("presence:updated", {"empId": peer.emp_id, "presence": peer.presence}),
            exclude=peer,
        )
        self._ack(peer, request, {"presence": peer.presence})
        return False

    async def _on_leave(self, peer: Peer, request: Request) -> bool:
        peer.exit = exits.LEFT
        self._ack(peer, request)
        return True

    async def _on_ping(self, peer: Peer, request: Request) -> bool:
        self._ack(peer, request, {"serverTime": utcnow().isoformat()})
        return False

    async def _on_auth_again(self, peer: Peer, request: Request) -> bool:
        raise _refusal(request, ErrorCode.ALREADY_AUTHENTICATED, "this connection already joined")

    # Host controls

    def _target_for(self, actor: Peer, request: Request, action: Action) -> Peer:
        if not may(actor.role, action):
            raise _refusal(request, ErrorCode.FORBIDDEN, f"a {actor.role.value} may not {action}")
        emp_id = request.data["targetEmpId"]
        target = self.peers.get(emp_id)
        if target is None:
            raise _refusal(request, ErrorCode.TARGET_NOT_FOUND, f"no peer {emp_id!r} in this room")
        if target is actor:
            raise _refusal(request, ErrorCode.CANNOT_TARGET_SELF, f"a peer cannot {action} itself")
        if not may(actor.role, action, target.role):
            raise _refusal(
                request,
                ErrorCode.FORBIDDEN,
                f"a {actor.role.value} may not {action} a {target.role.value}",
            )
        return target

    async def _on_kick(self, actor: Peer, request: Request) -> bool:
        target = self._target_for(actor, request, Action.KICK)
        await self.kick(target.emp_id, by=actor.emp_id)
        self._ack(actor, request, {"targetEmpId": target.emp_id})
        return False

    async def kick(self, emp_id: str, *, by: str | None) -> bool:
        """Remove a live peer; returns once its connection is closed and its leave written."""
        target = self.peers.get(emp_id)
        if target is None:
            return False
        self._remove(
            target,
            Exit.removed(
                LeaveReason.KICKED, CloseCode.KICKED, by, "removed from the meeting by a host"
            ),
        )
        await target.finished.wait()
        return True

    async def _on_ban(self, actor: Peer, request: Request) -> bool:
        target = self._target_for(actor, request, Action.BAN)
        await self.hub.ban(
            self.id, target.emp_id, by=actor.emp_id, reason=request.data.get("reason")
        )
        self._ack(actor, request, {"targetEmpId": target.emp_id})
        return False

    async def remove_banned(self, emp_id: str, *, by: str | None) -> None:
        target = self.peers.get(emp_id)
        if target is None:
            return
        self._remove(
            target,
            Exit.removed(
                LeaveReason.BANNED, CloseCode.BANNED, by, "banned from the meeting by a host"
            ),
        )
        await target.finished.wait()

    async def _on_unban(self, actor: Peer, request: Request) -> bool:
        if not may(actor.role, Action.UNBAN):
            raise _refusal(request, ErrorCode.FORBIDDEN, f"a {actor.role.value} may not unban")
        emp_id = request.data["targetEmpId"]
        lifted = await self.hub.store.unban(meeting_id=self.id, emp_id=emp_id)
        self._ack(actor, request, {"targetEmpId": emp_id, "unbanned": lifted})
        return False

    async def _on_end(self, actor: Peer, request: Request) -> bool:
        if not may(actor.role, Action.END):
            raise _refusal(
                request, ErrorCode.FORBIDDEN, f"a {actor.role.value} may not end the meeting"
            )
        await self.hub.end_meeting(self.id, by=actor.emp_id, actor=actor)
        self._ack(actor, request, {"meetingId": self.id})
        return True

    async def end(self, *, by: str | None, actor: Peer | None = None) -> None:
        """Close every peer after the meeting was marked ENDED (and their rows closed).

        Returns once every peer but ``actor`` is closed; the actor's own session
        finishes when its handler returns.
        """
        self.ending = True
        notice = encode_event("meeting:ended", {"by": by})
        exit = Exit(
            LeaveReason.MEETING_ENDED, CloseCode.MEETING_ENDED, "the meeting has ended", notice
        )
        peers = list(self.peers.values())
        for peer in peers:
            peer.leave_recorded = True  # the store closed every open row with the meeting
            self._remove(peer, exit, cancel=peer is not actor)
        for peer in peers:
            if peer is not actor:
                await peer.finished.wait()

    async def _on_promote(self, actor: Peer, request: Request) -> bool:
        return await self._change_role(actor, request, Action.PROMOTE, Role.COHOST)

    async def _on_demote(self, actor: Peer, request: Request) -> bool:
        return await self._change_role(actor, request, Action.DEMOTE, Role.PARTICIPANT)

    async def _change_role(self, actor: Peer, request: Request, action: Action, to: Role) -> bool:
        target = self._target_for(actor, request, action)
        await self.hub.store.set_role_override(meeting_id=self.id, emp_id=target.emp_id, role=to)
        if self.peers.get(target.emp_id) is target:
            self._set_role(target, to, reason=action.value, by=actor.emp_id)
        self._ack(actor, request, {"targetEmpId": target.emp_id, "role": to.value})
        return False

    def _set_role(self, peer: Peer, role: Role, *, reason: str, by: str | None) -> None:
        previous, peer.role = peer.role, role
        self._broadcast(
            encode_event(
                "role:changed",
                {
                    "empId": peer.emp_id,
                    "role": role.value,
                    "previousRole": previous.value,
                    "reason": reason,
                    "by": by,
                },
            )
        )

    def _hand_over_host(self) -> None:
        """Never leave a room without someone who can end it."""
        if any(p.role is Role.HOST for p in self.peers.values()):
            return
        successor = next((p for p in self.peers.values() if p.role is Role.COHOST), None)
        if successor is None:
            successor = next(iter(self.peers.values()), None)
        if successor is not None:
            successor.acting_host_from = successor.role
            self._set_role(successor, Role.HOST, reason="host-left", by=None)

    def _restore_roles_after_host_return(self) -> None:
        for peer in list(self.peers.values()):
            if peer.acting_host_from is not None:
                role, peer.acting_host_from = peer.acting_host_from, None
                self._set_role(peer, role, reason="host-returned", by=None)

    def _ack(self, peer: Peer, request: Request, data: dict[str, Any] | None = None) -> None:
        if request.id is not None:
            self._send(peer, encode_ack(request.id, data))

    # Introspection

    def describe(self) -> list[dict[str, Any]]:
        now = utcnow()
        return [
            {
                **p.public(),
                "joinedAt": p.joined_at.isoformat(),
                "secondsPresent": math.floor((now - p.joined_at).total_seconds()),
            }
            for p in self.peers.values()
        ]


def _rate_limited(message: str | bytes | MessageTooLarge) -> bytes:
    """The RATE_LIMITED error for a dropped frame, answering its request id if it has one."""
    request_id = event = None
    if isinstance(message, str):
        try:
            request = decode_request(message)
            request_id, event = request.id, request.event
        except ProtocolError as exc:
            request_id = exc.request_id
    return encode_error(
        ErrorCode.RATE_LIMITED,
        "too many frames: this one was dropped; slow down",
        request_id=request_id,
        event=event,
    )


def _refusal(request: Request, code: ErrorCode, message: str) -> ProtocolError:
    return ProtocolError(code, message, request_id=request.id, event=request.event)


def _discard_queued(peer: Peer) -> None:
    with contextlib.suppress(trio.WouldBlock, trio.EndOfChannel):
        while True:
            peer.outbox_reader.receive_nowait()
