"""A peer: one employee in one room, over one connection at a time.

Its state (live, detached, closing, ...) and how it ends live in
:class:`~meshroom.core.lifecycle.Lifecycle`; this module holds the identity and
the per-peer plumbing the room drives: a bounded outbox drained by a writer
task (one runs only while there is something to write), the cancel scopes that
stop its reader and writer, and the resume token.
"""

from __future__ import annotations

import datetime as dt
import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import trio

from ..protocol import EncodedJson
from ..roles import Role
from .connection import Connection, SendsAtOnce
from .lifecycle import Exit, Lifecycle, PeerState

# Bytes of unacknowledged frames kept per peer for a resume, at most. Clients acknowledge
# every 128 frames (~90 KiB of 700-byte signals); keeping more than this cost the relay
# benchmark ~10 % (memory traffic) for clients that never acknowledge.
KEEP_BYTES: Final = 256 * 1024


@dataclass(slots=True)
class Takeover:
    """A connection that resumed a peer, waiting for the peer's previous one to wind down."""

    conn: Connection
    request_id: Any
    done: Callable[[], None]  # called once the room is finished with ``conn``
    last_seq: int | None  # the last frame the client says it has (None: it did not say)


class Peer:
    """Identity, presence and the per-peer plumbing: an outbound queue and cancel scopes.

    Ten thousand idle peers are held at once, so what each one holds is kept small:
    slots instead of an instance dict, plain lists that stay empty (no deque block)
    until used, and the :attr:`finished` event made only when somebody waits for it.
    """

    __slots__ = (
        "_finished",
        "acting_host_from",
        "attendance_id",
        "conn",
        "direct",
        "display_name",
        "dropped_at",
        "dropped_through",
        "emp_id",
        "flush_due",
        "grace_ends",
        "joined_at",
        "keep",
        "latency_samples",
        "life",
        "next_seq",
        "outbox",
        "outbox_closed",
        "outbox_size",
        "presence",
        "public_encoded",
        "read_scope",
        "receiving",
        "removed_at",
        "resend",
        "resume_token",
        "role",
        "sent",
        "sent_bytes",
        "sent_from",
        "takeover",
        "writer",
        "writer_exited",
        "written_through",
    )

    def __init__(
        self,
        *,
        emp_id: str,
        display_name: str,
        role: Role,
        attendance_id: int,
        joined_at: dt.datetime,
        outbox_size: int,
    ) -> None:
        self.emp_id = emp_id
        self.display_name = display_name
        self.role = role
        self.attendance_id = attendance_id
        self.joined_at = joined_at
        self.life = Lifecycle()
        self.presence: dict[str, bool] = {"muted": False, "cameraOff": False, "handRaised": False}
        # public() as JSON, made when first asked for: in a room of N, each peer's view
        # goes into the snapshot of every later joiner. Whoever changes the role or the
        # presence calls public_changed().
        self.public_encoded: EncodedJson | None = None
        # Set when this peer became host because the host left; the role it goes back to.
        self.acting_host_from: Role | None = None
        # Frames queued for the client, oldest first. Bounded by outbox_size: a relay never
        # waits on a slow reader; overflow disconnects that reader (Room.send). Drained by a
        # writer task that runs only while there is something to write (Room._write_loop):
        # ``writer`` is its cancel scope, None when no writer runs.
        self.outbox: list[bytes] = []
        self.outbox_size = outbox_size
        self.outbox_closed = False  # the peer is ending: nothing more is queued
        self.writer: trio.CancelScope | None = None
        self.conn: Connection | None = None  # the connection a writer would write to, if any
        # The same connection when it can also write without a task (see Room.reply).
        self.direct: SendsAtOnce | None = None
        self.flush_due = False  # queued for the room's flusher (see Room.send)
        self.writer_exited: trio.Event | None = None  # made by whoever waits for the writer
        # Cancelling this stops the peer reading (or waiting while detached).
        self.read_scope = trio.CancelScope()
        # trio.current_time() of sampled relays queued to this peer.
        self.latency_samples: list[float] = []
        self._finished: trio.Event | None = None  # see finished
        # Resume: the credential the current connection was given (None when resume is
        # off, or once it was used), when its connection dropped, the deadline of its kept
        # place, and a connection that is taking over.
        self.resume_token: str | None = None
        self.receiving = False  # the reader is waiting for the client's next frame
        self.dropped_at: dt.datetime | None = None
        self.removed_at: dt.datetime | None = None  # when it stopped being a member
        self.grace_ends = 0.0  # trio.current_time() at which a kept place is given up
        self.takeover: Takeover | None = None
        # Exactly-once resume: every frame written to the client is numbered (seq); the
        # numbered frames the client has not acknowledged are kept (up to ``keep``), so a
        # resume replays exactly what follows the last one the client says it has.
        self.next_seq = 1
        # Consecutive frames: sent[0] is seq sent_from (the next seq when it is empty). A
        # list, not a deque: an empty deque costs a 640-byte block, and frames leave it in
        # runs (an acknowledgement, the bound), each one ``del sent[:n]``.
        self.sent: list[bytes] = []
        self.sent_from = 1
        self.sent_bytes = 0
        self.keep = 0  # how many unacknowledged frames to keep; 0 = none (resume off)
        self.dropped_through = 0  # the newest unacknowledged seq given up to the bound
        self.written_through = 0  # the newest seq whose write completed
        # What the next connection sends before anything else: room:resumed and the replay.
        self.resend: list[bytes] = []

    @property
    def finished(self) -> trio.Event:
        """Set when the teardown is complete (made on first use: most peers are never awaited)."""
        if self._finished is None:
            self._finished = trio.Event()
            if self.life.state is PeerState.GONE:
                self._finished.set()
        return self._finished

    def mark_finished(self) -> None:
        """The teardown is complete (the lifecycle has moved to GONE)."""
        if self._finished is not None:
            self._finished.set()

    @property
    def state(self) -> PeerState:
        return self.life.state

    @property
    def exit(self) -> Exit | None:
        return self.life.exit

    @property
    def detached(self) -> bool:
        return self.life.state is PeerState.DETACHED

    def number(self, frames: list[bytes]) -> list[bytes]:
        """Stamp each frame with the next ``seq``; keep them until acknowledged."""
        # Every frame is a compact JSON object: the seq goes in before its last brace.
        numbered = [
            frame[:-1] + b',"seq":%d}' % seq for seq, frame in enumerate(frames, self.next_seq)
        ]
        kept = numbered
        if self.next_seq == 1 and self.keep:
            # The peer's first frame, room:joined, is never kept: it carries the resume
            # token, so a client that lacks it cannot resume at all (it joins afresh).
            # It is the largest frame an idle peer would otherwise keep (~2 KB in a room
            # of 20) until its client's first acknowledgement.
            kept = numbered[1:]
            self.dropped_through, self.sent_from = 1, 2
        self.next_seq += len(numbered)
        if self.keep:
            sent = self.sent
            sent.extend(kept)
            self.sent_bytes += sum(map(len, kept))
            # Bounded in frames and in bytes: past either, the oldest are given up (a
            # client that needs them after a drop then joins afresh).
            drop = max(0, len(sent) - self.keep)
            if self.sent_bytes > KEEP_BYTES or drop:
                over = self.sent_bytes - KEEP_BYTES
                dropped_bytes = sum(map(len, sent[:drop]))
                while dropped_bytes < over:
                    dropped_bytes += len(sent[drop])
                    drop += 1
                del sent[:drop]
                self.sent_bytes -= dropped_bytes
                self.sent_from += drop
                self.dropped_through = self.sent_from - 1
        else:
            self.sent_from = self.next_seq
        return numbered

    def acknowledge(self, last_seq: int) -> None:
        """The client has every frame up to ``last_seq``: forget them."""
        sent = self.sent
        known = min(len(sent), last_seq + 1 - self.sent_from)
        if known > 0:
            self.sent_bytes -= sum(map(len, sent[:known]))
            del sent[:known]
            self.sent_from += known

    def can_replay_after(self, last_seq: int | None) -> bool:
        """Whether every frame after ``last_seq`` is still here to be sent again."""
        if last_seq is None:
            return True
        return self.dropped_through <= last_seq < self.next_seq

    def replay_after(self, last_seq: int | None) -> list[bytes]:
        """The kept frames the client lacks, in order (and forget those it has).

        A client that does not say what it has (``None``; older clients) is taken to
        have every frame whose write completed: it gets those whose write failed.
        """
        if last_seq is None:
            written = max(0, self.written_through + 1 - self.sent_from)
            return self.sent[written:]
        self.acknowledge(last_seq)
        return list(self.sent)

    def new_resume_token(self) -> str:
        self.resume_token = secrets.token_urlsafe(32)
        return self.resume_token

    def resume_token_matches(self, token: str) -> bool:
        current = self.resume_token
        return current is not None and hmac.compare_digest(current.encode(), token.encode())

    def public(self) -> dict[str, Any]:
        return {
            "empId": self.emp_id,
            "displayName": self.display_name,
            "role": self.role.value,
            "presence": dict(self.presence),
        }

    def public_json(self) -> EncodedJson:
        """public(), encoded once until it changes."""
        encoded = self.public_encoded
        if encoded is None:
            encoded = self.public_encoded = EncodedJson(self.public())
        return encoded

    def public_changed(self) -> None:
        self.public_encoded = None

    def __repr__(self) -> str:
        return f"<Peer {self.emp_id} {self.role.value} {self.life.state.value}>"
