"""A peer: one employee in one room, over one connection at a time.

Its state (live, detached, closing, ...) and how it ends live in
:class:`~meshroom.core.lifecycle.Lifecycle`; this module holds the identity and
the per-peer plumbing the room drives: a bounded outbox drained by a writer
task, the cancel scopes that stop its reader and writer, and the resume token.
"""

from __future__ import annotations

import datetime as dt
import hmac
import secrets
from collections import deque
from dataclasses import dataclass
from typing import Any

import trio

from ..roles import Role
from .connection import Connection
from .lifecycle import Exit, Lifecycle, PeerState


@dataclass(slots=True)
class Takeover:
    """A connection that resumed a peer, waiting for the peer's previous one to wind down."""

    conn: Connection
    request_id: Any
    done: trio.Event  # set once the room is finished with ``conn``


class Peer:
    """Identity, presence and the per-peer plumbing: an outbound queue and cancel scopes."""

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
        # Set when this peer became host because the host left; the role it goes back to.
        self.acting_host_from: Role | None = None
        # Bounded: a relay never waits on a slow reader; overflow disconnects that reader.
        self.outbox, self.outbox_reader = trio.open_memory_channel[bytes](outbox_size)
        # Cancelling this stops the peer reading (or waiting while detached).
        self.read_scope = trio.CancelScope()
        self.write_scope = trio.CancelScope()  # the writer's, cancelled when a resume takes over
        # trio.current_time() of sampled relays queued to this peer.
        self.latency_samples: deque[float] = deque()
        self.finished = trio.Event()  # set when the teardown is complete
        # Resume: the credential the current connection was given (None when resume is
        # off, or once it was used), when its connection dropped, the deadline of its kept
        # place, and a connection that is taking over.
        self.resume_token: str | None = None
        self.receiving = False  # the reader is waiting for the client's next frame
        self.dropped_at: dt.datetime | None = None
        self.removed_at: dt.datetime | None = None  # when it stopped being a member
        self.grace_ends = 0.0  # trio.current_time() at which a kept place is given up
        self.takeover: Takeover | None = None
        # Frames taken from the outbox whose write failed: sent first on a resumed connection.
        self.unsent: list[bytes] = []

    @property
    def state(self) -> PeerState:
        return self.life.state

    @property
    def exit(self) -> Exit | None:
        return self.life.exit

    @property
    def detached(self) -> bool:
        return self.life.state is PeerState.DETACHED

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

    def __repr__(self) -> str:
        return f"<Peer {self.emp_id} {self.role.value} {self.life.state.value}>"
