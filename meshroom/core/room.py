"""A room: the live side of one meeting.

Each room runs a nursery that owns its peers' tasks. Relaying is peer -> room ->
the target's bounded outbox, drained by the target's writer. A peer moves
through the states of :mod:`~meshroom.core.lifecycle`; the room is what drives
it, and the only place that does:

* :meth:`Room.attach` makes an admitted peer a member (LIVE) and starts its task.
* :meth:`Room.remove` takes a member out at once (CLOSING) — for a kick, a ban,
  a meeting end, a replacement, a leave, a slow consumer — and cancels its
  reader; the peer's own task then runs its one teardown (:meth:`Room._teardown`):
  last frames, close, leave written, ``peer.finished`` set.
* A connection that drops (rather than being removed) leaves the peer DETACHED
  when the room keeps places for a resume: its task waits, still in the room's
  nursery, for a connection presenting its resume token (:meth:`Room.resume`)
  or for the grace window to run out, while its outbox keeps taking what the
  room sends it.

Host commands (``host:*``) are handled in :mod:`meshroom.core.controls`; what
the room needs from its owner (the hub) is the small :class:`RoomOwner`.
"""

from __future__ import annotations

import collections
import datetime as dt
import logging
import math
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final, Protocol

import trio

from ..protocol import (
    CloseCode,
    ErrorCode,
    ProtocolError,
    Request,
    decode_request,
    encode_ack,
    encode_error,
    encode_event,
    encode_protocol_error,
)
from ..roles import Role
from ..store.base import Leave, Meeting, StoreUnavailable
from . import lifecycle
from .connection import (
    Connection,
    ConnectionClosed,
    ConnectionTimedOut,
    MessageTooLarge,
    SendsAtOnce,
)
from .events import (
    EventBus,
    PeerDetached,
    PeerFinished,
    PeerJoined,
    PeerLeft,
    PeerResumed,
    RelayLatency,
    RoleChanged,
    SignalRelayed,
)
from .lifecycle import Exit, Outcome
from .limits import RateLimiter, Verdict, rate_limiter
from .options import HubConfig
from .peer import Peer, Takeover

if TYPE_CHECKING:
    from .controls import HostControls

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

Handler = Callable[["Room", Peer, Request], Awaitable[bool]]


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class RoomOwner(Protocol):
    """What a room needs from whoever owns it (the hub): nothing more."""

    @property
    def config(self) -> HubConfig: ...

    @property
    def events(self) -> EventBus: ...

    @property
    def controls(self) -> HostControls: ...

    @property
    def relay_counts(self) -> collections.Counter[str]:
        """Signals relayed, by event (read by metrics when scraped)."""
        ...

    async def record_leave(self, leave: Leave) -> None:
        """Hand a leave to the leave writer (waits while the database is healthy)."""
        ...

    def forget(self, room: Room) -> None:
        """The room emptied (or its meeting ended): the next join opens a fresh one."""
        ...


class Room:
    def __init__(self, owner: RoomOwner, meeting: Meeting) -> None:
        self.owner = owner
        self.config = owner.config
        self.events = owner.events
        self.meeting = meeting
        self.peers: dict[str, Peer] = {}  # the members, in join order
        self.ending = False  # every member is being removed (meeting end, shutdown)
        self.closed = False
        self._nursery: trio.Nursery | None = None
        self._close_requested = trio.Event()
        self.done = trio.Event()
        # Peers with frames queued for the flusher (see send), and whether it is started.
        self._flush_due: list[Peer] = []
        self._flusher_started = False
        self._relay_counts = owner.relay_counts
        self._handlers: dict[str, Handler] = {
            "presence:update": Room._on_presence,
            "peer:leave": Room._on_leave,
            "ping": Room._on_ping,
            "auth": Room._on_auth_again,
            **owner.controls.handlers,
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
            self._close()
            self.done.set()

    def _close(self) -> None:
        if not self.closed:
            self.closed = True
            self.owner.forget(self)

    def _maybe_close(self) -> None:
        if not self.peers and not self.closed:
            # Forgotten now, synchronously, so that the next join opens a fresh room.
            self._close()
            self._close_requested.set()

    def close_if_empty(self) -> None:
        """For the owner: a join that opened this room failed before attaching."""
        self._maybe_close()

    # Membership

    def attach(
        self,
        peer: Peer,
        conn: Connection,
        done: Callable[[], None],
        request_id: Any = None,
    ) -> None:
        """Admit an authenticated peer: snapshot to it, ``peer:joined`` to the others.

        Synchronous on purpose: between the check that a room is open and the
        moment the peer is in it, nothing else can run. ``done()`` is called once the
        room is finished with ``conn`` (the peer may live on, resumed elsewhere).
        """
        assert self._nursery is not None and not self.closed
        existing = self.peers.get(peer.emp_id)
        if existing is not None:
            self.remove(existing, lifecycle.REPLACED)
        peer.life.attach()
        # With resume on, the frames the client has not acknowledged are kept for a replay.
        peer.keep = self.config.outbox_size if self.config.resume_grace > 0 else 0
        self.send(peer, encode_event("room:joined", self._snapshot(peer), request_id))
        self.broadcast(encode_event("peer:joined", peer.public()))
        self.peers[peer.emp_id] = peer
        self.events.emit(PeerJoined(self.id, peer.emp_id, peer.role, peer.attendance_id))
        if peer.role is Role.HOST:
            self._restore_roles_after_host_return()
        elif existing is not None and existing.role is Role.HOST:
            self._hand_over_host()  # an acting host reconnected: the room keeps a host
        self._nursery.start_soon(self._run_peer, peer, conn, done, name=f"peer:{peer.emp_id}")

    def member(self, emp_id: str) -> Peer | None:
        return self.peers.get(emp_id)

    def _snapshot(self, peer: Peer) -> dict[str, Any]:
        snapshot = {
            "self": peer.public(),
            "meeting": {
                "id": self.meeting.id,
                "title": self.meeting.title,
                "roomCode": self.meeting.room_code,
                "hostEmpId": self.meeting.host_emp_id,
            },
            "peers": [p.public_json() for p in self.peers.values() if p is not peer],
            "iceServers": self.config.ice.servers_for(peer.emp_id),
        }
        if self.config.resume_grace > 0:
            snapshot["resumeToken"] = peer.new_resume_token()
        return snapshot

    def resume(
        self,
        emp_id: str,
        resume_token: str,
        conn: Connection,
        done: Callable[[], None],
        request_id: Any = None,
        last_seq: int | None = None,
    ) -> bool:
        """Hand ``conn`` to the member ``emp_id`` if ``resume_token`` is its current one.

        Works whether the peer is detached or still live (its client may have
        noticed the drop first); the old connection is then closed (4013). The token
        is used up at once; the new connection gets a fresh one in ``room:resumed``,
        then every frame after ``last_seq`` (the last one the client has), exactly once.
        True if it did (``done()`` is then called once the room is done with ``conn``);
        False (nothing changed) if the peer is not here, is leaving, the token is wrong,
        or a frame the client lacks is no longer kept (it then joins afresh).
        Synchronous, like :meth:`attach`.
        """
        peer = self.peers.get(emp_id)
        if (
            peer is None
            or self.ending
            or self.closed
            or not peer.life.may_resume()
            or not peer.resume_token_matches(resume_token)
            or not peer.can_replay_after(last_seq)
        ):
            return False
        peer.resume_token = None
        was_detached = peer.detached
        peer.life.resume()
        peer.takeover = Takeover(conn, request_id, done, last_seq)
        # The old connection's writer stops now (what it wrote is kept in peer.sent);
        # what is queued from here on goes to the new connection.
        if peer.writer is not None:
            peer.writer.cancel()
        if was_detached or peer.receiving:
            # Waiting for a resume, or for a frame: stop waiting. A reader busy with a
            # request is left to finish it (cancelling a host command halfway could leave
            # it half done) and stops before reading again.
            peer.read_scope.cancel()
        return True

    def remove(self, peer: Peer, exit: Exit, *, cancel: bool = True) -> bool:
        """Take a member out of the room now. False if it was no longer a member.

        The peer's task notices (its reader is cancelled, unless ``cancel`` is false
        because the caller *is* that reader) and runs the teardown.
        """
        if self.peers.get(peer.emp_id) is not peer:
            return False
        del self.peers[peer.emp_id]
        peer.life.remove(exit)
        peer.removed_at = utcnow()
        if cancel:
            peer.read_scope.cancel()
        assert peer.life.exit is not None  # the exit in force: this one, or an earlier removal
        reason = peer.life.exit.reason
        self.events.emit(PeerLeft(self.id, peer.emp_id, reason, peer.attendance_id))
        if not self.ending:
            left = {"empId": peer.emp_id, "reason": reason.value}
            self.broadcast(encode_event("peer:left", left))
            if peer.role is Role.HOST:
                self._hand_over_host()
        return True

    async def remove_and_wait(self, emp_id: str, exit: Exit) -> bool:
        """Remove a member; returns once its connection is closed and its leave written."""
        peer = self.peers.get(emp_id)
        if peer is None or not self.remove(peer, exit):
            return False
        await peer.finished.wait()
        return True

    async def close_all(self, make_exit: Callable[[], Exit], *, actor: Peer | None = None) -> None:
        """Remove every member (``make_exit()`` each); return once all but ``actor`` are done.

        Used by a meeting's end and by server shutdown. The actor (a host ending the
        meeting from its own connection) finishes when its handler returns.
        """
        self.ending = True
        peers = list(self.peers.values())
        for peer in peers:
            self.remove(peer, make_exit(), cancel=peer is not actor)
        for peer in peers:
            if peer is not actor:
                await peer.finished.wait()

    # Delivery

    def send(self, peer: Peer, frame: bytes) -> None:
        if peer.outbox_closed:
            return  # the peer is already winding down
        outbox = peer.outbox
        if len(outbox) >= peer.outbox_size:
            # The peer reads slower than the room talks to it (or, detached, did not come
            # back before its outbox filled). Dropping frames would corrupt its WebRTC
            # negotiation, so it is removed instead (and cannot resume: a frame is lost).
            if self.remove(peer, lifecycle.SLOW_CONSUMER):
                log.warning("disconnecting slow consumer %s in %s", peer.emp_id, self.id)
            return
        outbox.append(frame)
        if peer.writer is None and not peer.flush_due and peer.conn is not None:
            self._write_soon(peer, peer.conn)

    def _write_soon(self, peer: Peer, conn: Connection) -> None:
        """Have what ``peer`` has queued written: by the room's flusher if ``conn`` can."""
        if peer.direct is None:
            self._start_writer(peer, conn)
            return
        # Written by the flusher, one write per peer, in the scheduler's next round (as
        # a writer task would be, so a burst queued meanwhile goes in the same write).
        peer.flush_due = True
        self._flush_due.append(peer)
        if not self._flusher_started:
            self._flusher_started = True
            assert self._nursery is not None
            self._nursery.start_soon(self._flush)

    async def _flush(self) -> None:
        """Write what each peer in ``_flush_due`` has queued, at once, from this one task.

        A writer task per peer, for a frame or two (a ``peer:joined`` fanned out to a room,
        a relayed candidate), cost several times the write itself: a task, a cancel scope,
        the stream's lock, trips through the scheduler. Whatever cannot be written at once
        (a write under way, a replay due, more than a batch, a socket that did not take it
        all) goes to the peer's writer task, as before.
        """
        self._flusher_started = False
        due, self._flush_due = self._flush_due, []
        for peer in due:
            peer.flush_due = False
            conn, direct = peer.conn, peer.direct
            if peer.writer is not None or not peer.outbox or conn is None:
                continue  # the writer takes it; or nothing left; or detached (kept)
            if direct is None or peer.resend or not direct.can_send_at_once():
                self._start_writer(peer, conn)
                continue
            numbered, timed = self._next_batch(peer)
            if direct.send_at_once(numbered):
                self._written(peer, timed)
                if not peer.outbox:
                    continue
            # More than a batch, or the socket kept some back: the writer goes on (and
            # counts the frames written once they all are).
            self._start_writer(peer, conn)

    def _start_writer(self, peer: Peer, conn: Connection) -> None:
        """Start a writer for what ``peer`` has queued; it stops once the outbox is empty.

        An idle peer has no writer task (one per peer would cost ~2 KB each, and a wake-up
        for every frame): the first frame queued starts one, in the room's nursery.
        """
        assert self._nursery is not None
        peer.writer = trio.CancelScope()
        self._nursery.start_soon(self._write_loop, peer, conn, peer.writer)

    def broadcast(self, frame: bytes, *, exclude: Peer | None = None) -> None:
        for peer in list(self.peers.values()):
            if peer is not exclude:
                self.send(peer, frame)

    def ack(
        self,
        peer: Peer,
        request: Request,
        data: dict[str, Any] | None = None,
        *,
        alone: bool = False,
    ) -> None:
        """Answer ``request`` if it has an id; ``alone``: through :meth:`reply`."""
        if request.id is not None:
            frame = encode_ack(request.id, data)
            if alone:
                self.reply(peer, frame)
            else:
                self.send(peer, frame)

    def reply(self, peer: Peer, frame: bytes) -> None:
        """Send a frame that goes alone: written at once if nothing else is on its way.

        For a ping's answer, most of what an idle peer is sent: written from the reader's
        own task, not even the flusher's round through the scheduler. Not for frames that
        come in bursts (relays, broadcasts): :meth:`send` leaves them to the flusher,
        which takes a burst in one write, cheaper still.
        """
        direct = peer.direct
        if (
            direct is not None
            and peer.writer is None
            and not peer.outbox
            and not peer.flush_due
            and not peer.resend
            and not peer.outbox_closed
            and direct.can_send_at_once()
        ):
            # Numbered and kept (for a resume) exactly as the writer would.
            if direct.send_at_once(peer.number([frame])):
                self._written(peer, 0)
            elif peer.conn is not None:
                self._start_writer(peer, peer.conn)  # to finish what the socket did not take
        else:
            self.send(peer, frame)

    # A peer's life: one task per peer, a connection at a time, one teardown

    async def _run_peer(self, peer: Peer, conn: Connection, done: Callable[[], None]) -> None:
        """The peer's whole membership: its connections in turn, then its teardown."""
        current: Connection | None = conn
        try:
            while True:
                outcome = await self._serve_connection(peer, conn)
                if outcome is Outcome.END:
                    break  # the teardown closes the connection, after the last frames
                # Closed aside, in the room's nursery: a connection that went silent can
                # take close_timeout to close, and a resume must not wait for that.
                assert self._nursery is not None
                self._nursery.start_soon(self._close_connection, peer, conn, outcome, done)
                current = None
                if peer.life.connection_ended(resume_allowed=True) is Outcome.DETACH:
                    peer.life.detach()
                    self.events.emit(PeerDetached(self.id, peer.emp_id))
                    # A fresh scope: remove() and resume() cancel it, as they would a reader.
                    with trio.CancelScope(deadline=peer.grace_ends) as peer.read_scope:
                        await trio.sleep_forever()
                if peer.life.connection_ended(resume_allowed=False) is not Outcome.TAKEOVER:
                    break  # removed, or the window ran out
                conn, done = self._switch_to_takeover(peer)
                current = conn
        finally:
            with trio.CancelScope(shield=True):
                await self._teardown(peer, current, done)

    def _switch_to_takeover(self, peer: Peer) -> tuple[Connection, Callable[[], None]]:
        """The resuming connection becomes the peer's; its first frame is ``room:resumed``."""
        takeover = peer.takeover
        assert takeover is not None
        peer.takeover = None
        peer.life.resumed()
        peer.dropped_at = None
        replay = peer.replay_after(takeover.last_seq)
        resumed = self._snapshot(peer)
        resumed["queued"] = len(replay) + len(peer.outbox)
        # Then every frame the client lacks (written into the old connection, or not),
        # then everything queued since; room:resumed itself has no seq.
        peer.resend = [encode_event("room:resumed", resumed, takeover.request_id), *replay]
        self.events.emit(PeerResumed(self.id, peer.emp_id))
        return takeover.conn, takeover.done

    async def _serve_connection(self, peer: Peer, conn: Connection) -> Outcome:
        """Read and write one connection until it ends; what that means for the peer.

        On END the peer is removed (if it was not already) and its last frames are
        queued and drained here, within close_timeout; the connection stays open for
        the teardown to close.
        """
        peer.read_scope = trio.CancelScope()
        peer.conn = conn
        peer.direct = conn if isinstance(conn, SendsAtOnce) else None
        try:
            if peer.resend:
                self._start_writer(peer, conn)
            elif peer.outbox:  # room:joined, and what was queued since
                self._write_soon(peer, conn)
            with peer.read_scope:
                await self._read_loop(peer, conn)
            resume_allowed = self.config.resume_grace > 0 and not self.ending
            outcome = peer.life.connection_ended(resume_allowed=resume_allowed)
            if outcome is Outcome.END:
                self._queue_last_frames(peer)
                if peer.outbox and peer.writer is None:
                    self._start_writer(peer, conn)  # (not the flusher: waited for below)
                # The writer drains what is queued (the notices last), then stops; a
                # client that does not take it within close_timeout is cut off.
                with trio.move_on_after(self.config.close_timeout):
                    await self._writer_stopped(peer)
            elif outcome is Outcome.DETACH:
                peer.dropped_at = utcnow()
                peer.grace_ends = trio.current_time() + self.config.resume_grace
            # The outbox stays open for the next connection (if any); the writer stops now.
            if peer.writer is not None:
                peer.writer.cancel()
                with trio.CancelScope(shield=True):
                    # A cancelled writer exits at its next checkpoint, so this is short; it
                    # must not be cut, or the next connection's writer could overlap it.
                    await self._writer_stopped(peer)
            return outcome
        except Exception:
            log.exception("peer session %s in room %s failed", peer.emp_id, self.id)
            peer.life.note(lifecycle.INTERNAL)
            return Outcome.END
        finally:
            peer.conn = peer.direct = None

    async def _writer_stopped(self, peer: Peer) -> None:
        """Return once ``peer`` has no writer running."""
        if peer.writer is None:
            return
        if peer.writer_exited is None:
            peer.writer_exited = trio.Event()
        await peer.writer_exited.wait()

    def _queue_last_frames(self, peer: Peer) -> None:
        self.remove(peer, peer.life.exit or lifecycle.DISCONNECTED, cancel=False)
        exit = peer.life.exit
        assert exit is not None
        if exit.reason is lifecycle.SLOW_CONSUMER.reason:
            # Its queue is full of frames it will never use: drop them, so the notice
            # saying why it is cut off is next in line.
            _discard_queued(peer)
        for frame in exit.frames():
            self.send(peer, frame)
        peer.outbox_closed = True

    async def _close_connection(
        self, peer: Peer, conn: Connection, outcome: Outcome, done: Callable[[], None]
    ) -> None:
        """Close a connection the peer no longer uses; ``done`` tells its transport."""
        if outcome is Outcome.TAKEOVER:
            code, reason = CloseCode.RESUMED_ELSEWHERE, "resumed on another connection"
        else:
            exit = peer.life.exit or lifecycle.DISCONNECTED
            code, reason = exit.close_code, exit.close_reason
        try:
            with trio.CancelScope(shield=True), trio.move_on_after(self.config.close_timeout):
                await conn.close(code, reason)
        finally:
            done()

    async def _teardown(
        self, peer: Peer, conn: Connection | None, done: Callable[[], None]
    ) -> None:
        """The one way a peer ends: out of the room, connections closed, leave recorded."""
        if peer.life.exit is None:
            # Cancelled from outside (the hub stopping) without being told why.
            peer.life.note(lifecycle.SHUTDOWN)
        exit = peer.life.exit
        assert exit is not None
        self.remove(peer, exit, cancel=False)
        peer.outbox_closed = True
        closing = [conn] if conn is not None else []
        takeover, peer.takeover = peer.takeover, None
        if takeover is not None:
            closing.append(takeover.conn)  # a resume that lost the race with the removal
        with trio.move_on_after(self.config.close_timeout):
            async with trio.open_nursery() as nursery:
                for each in closing:
                    nursery.start_soon(each.close, exit.close_code, exit.close_reason)
        if takeover is not None:
            takeover.done()
        if not exit.row_closed:
            # A peer whose connection dropped left when it dropped; one that was removed,
            # when it was removed (not when its close handshake finished).
            left_at = peer.dropped_at or peer.removed_at or utcnow()
            await self.owner.record_leave(Leave(peer.attendance_id, left_at, exit.reason.value))
        peer.life.finish()
        done()  # the last connection's serve() returns once its leave is written
        self.events.emit(PeerFinished(self.id, peer.emp_id, exit.reason, peer.attendance_id))
        peer.mark_finished()
        self._maybe_close()

    async def _write_loop(self, peer: Peer, conn: Connection, scope: trio.CancelScope) -> None:
        """Write what ``peer`` has queued to ``conn``, in batches, until the outbox is empty."""
        outbox = peer.outbox
        try:
            with scope:
                if peer.resend:  # a resumed connection: room:resumed, then the replay
                    await conn.send(peer.resend)
                    peer.resend = []
                    peer.written_through = peer.next_seq - 1
                elif not outbox:
                    # Started to finish a write the socket did not take at once (a
                    # connection sends what it holds back ahead of anything, even nothing).
                    timed = len(peer.latency_samples)
                    await conn.send([])
                    self._written(peer, timed)
                while outbox:
                    numbered, timed = self._next_batch(peer)
                    await conn.send(numbered)
                    del numbered  # (see _next_batch)
                    self._written(peer, timed)
        except ConnectionClosed as exc:
            timed_out = isinstance(exc, ConnectionTimedOut)
            peer.life.note(lifecycle.TIMEOUT if timed_out else lifecycle.DISCONNECTED)
            peer.read_scope.cancel()
        except Exception:
            # The writer runs in the room's nursery: a bug here must end this peer, not the room.
            log.exception("writer of %s in room %s failed", peer.emp_id, self.id)
            peer.life.note(lifecycle.INTERNAL)
            peer.read_scope.cancel()
        finally:
            if peer.writer is scope:
                peer.writer = None
                if peer.writer_exited is not None:
                    peer.writer_exited.set()
                    peer.writer_exited = None

    def _next_batch(self, peer: Peer) -> tuple[list[bytes], int]:
        """Take the next batch off ``peer``'s outbox, numbered; how many samples it carries.

        Numbered and kept (until acknowledged) before the write: if the connection drops
        now, a resume sends again what the client lacks. The queued frames are dropped
        here: orjson's output keeps a 4 KiB buffer however short the frame, and a writer
        waiting on a slow socket must hold no reference to one.
        """
        outbox = peer.outbox
        batch = outbox[:WRITE_BATCH]
        del outbox[:WRITE_BATCH]
        # Samples taken so far belong to frames already queued, hence in this batch (or
        # an earlier one) unless the batch was cut at WRITE_BATCH.
        timed = len(peer.latency_samples)
        return peer.number(batch), timed

    def _written(self, peer: Peer, timed: int) -> None:
        """Everything numbered so far is written; the first ``timed`` samples with it."""
        peer.written_through = peer.next_seq - 1
        if timed:
            samples = peer.latency_samples
            now = trio.current_time()
            for sample in samples[:timed]:
                self.events.emit(RelayLatency(now - sample))
            del samples[:timed]

    async def _read_loop(self, peer: Peer, conn: Connection) -> None:
        limiter = rate_limiter(self.config.rate_limit, self.config.rate_burst)
        handled = 0
        life = peer.life
        while life.live():
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
                timed_out = isinstance(exc, ConnectionTimedOut)
                life.note(lifecycle.TIMEOUT if timed_out else lifecycle.DISCONNECTED)
                return
            except MessageTooLarge as exc:
                message = exc
            finally:
                peer.receiving = False
            if not life.live():
                return  # resumed on another connection, or removed meanwhile
            if await self._handle(peer, message, limiter):
                return
            # An idle reader waits for the next frame holding nothing of the last one.
            del message

    async def _handle(
        self, peer: Peer, message: str | bytes | MessageTooLarge, limiter: RateLimiter | None
    ) -> bool:
        """Act on one message from the client; True if the peer stops reading (it left)."""
        if limiter is not None and (verdict := limiter.check()) is not Verdict.ALLOW:
            if verdict is Verdict.CLOSE:
                self.remove(peer, lifecycle.RATE_LIMITED, cancel=False)
                return True
            self.send(peer, _rate_limited(message))
            return False
        if isinstance(message, MessageTooLarge):
            self.send(peer, encode_error(ErrorCode.FRAME_TOO_LARGE, str(message)))
            return False
        if not isinstance(message, str):
            self.send(
                peer,
                encode_error(ErrorCode.BINARY_NOT_SUPPORTED, "frames must be JSON text"),
            )
            return False
        try:
            request = decode_request(message)
            if request.event in SIGNAL_PAYLOADS:
                self._relay(peer, request)
            elif await self._handlers[request.event](self, peer, request):
                return True
        except ProtocolError as exc:
            self.send(peer, encode_protocol_error(exc))
        except StoreUnavailable:
            self.send(
                peer,
                encode_error(
                    ErrorCode.STORE_UNAVAILABLE,
                    "the database is unavailable; try again",
                    request_id=request.id,
                    event=request.event,
                ),
            )
        return False

    # Signals and presence

    def _relay(self, peer: Peer, request: Request) -> None:
        data = request.data
        target = self.peers.get(data["targetEmpId"])
        if target is None or target is peer:
            raise refusal(
                request,
                ErrorCode.TARGET_NOT_FOUND if target is None else ErrorCode.CANNOT_TARGET_SELF,
                f"no peer {data['targetEmpId']!r} in this room"
                if target is None
                else "a peer cannot signal itself",
            )
        key = SIGNAL_PAYLOADS[request.event]
        self.send(target, encode_event(request.event, {"fromEmpId": peer.emp_id, key: data[key]}))
        counts = self._relay_counts
        counts[request.event] += 1
        if self.events.wants(SignalRelayed):
            self.events.emit(SignalRelayed(self.id, request.event, peer.emp_id, target.emp_id))
        if counts[request.event] % LATENCY_SAMPLE_EVERY == 0:
            target.latency_samples.append(trio.current_time())
        if request.id is not None:
            self.send(peer, encode_ack(request.id))

    async def _on_presence(self, peer: Peer, request: Request) -> bool:
        peer.presence.update(request.data)  # validated: only known boolean keys
        for key in list(peer.presence):
            if key not in ("muted", "cameraOff", "handRaised"):
                del peer.presence[key]
        peer.public_changed()
        self.broadcast(
            encode_event("presence:updated", {"empId": peer.emp_id, "presence": peer.presence}),
            exclude=peer,
        )
        self.ack(peer, request, {"presence": peer.presence})
        return False

    async def _on_leave(self, peer: Peer, request: Request) -> bool:
        self.ack(peer, request)
        self.remove(peer, lifecycle.LEFT, cancel=False)
        return True

    async def _on_ping(self, peer: Peer, request: Request) -> bool:
        last_seq = request.data.get("lastSeq")
        if last_seq is not None:
            peer.acknowledge(last_seq)
        self.ack(peer, request, {"serverTime": utcnow().isoformat()}, alone=True)
        return False

    async def _on_auth_again(self, peer: Peer, request: Request) -> bool:
        raise refusal(request, ErrorCode.ALREADY_AUTHENTICATED, "this connection already joined")

    # Roles

    def set_role(self, peer: Peer, role: Role, *, reason: str, by: str | None) -> None:
        previous, peer.role = peer.role, role
        peer.public_changed()
        self.broadcast(
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
        self.events.emit(RoleChanged(self.id, peer.emp_id, role, previous, reason, by))

    def _hand_over_host(self) -> None:
        """Never leave a room without someone who can end it."""
        if any(p.role is Role.HOST for p in self.peers.values()):
            return
        successor = next((p for p in self.peers.values() if p.role is Role.COHOST), None)
        if successor is None:
            successor = next(iter(self.peers.values()), None)
        if successor is not None:
            successor.acting_host_from = successor.role
            self.set_role(successor, Role.HOST, reason="host-left", by=None)

    def _restore_roles_after_host_return(self) -> None:
        for peer in list(self.peers.values()):
            if peer.acting_host_from is not None:
                role, peer.acting_host_from = peer.acting_host_from, None
                self.set_role(peer, role, reason="host-returned", by=None)

    # Introspection

    def live_attendance_ids(self) -> list[int]:
        """Rows of members seen now (a detached peer is not: its connection dropped)."""
        return [p.attendance_id for p in self.peers.values() if not p.detached]

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


def refusal(request: Request, code: ErrorCode, message: str) -> ProtocolError:
    """A request refused: the error frame answers the request's id and names its event."""
    return ProtocolError(code, message, request_id=request.id, event=request.event)


def _discard_queued(peer: Peer) -> None:
    peer.outbox.clear()
