"""A peer: one employee in one room, over one connection at a time.

A peer whose connection drops (not one that was removed) keeps its place for
the room's resume grace window: detached, its outbox still takes what the room
sends it, and a new connection presenting its resume token takes over.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hmac
import random
import secrets
from collections import deque
from dataclasses import dataclass
from typing import Any

import trio

from ..protocol import CloseCode, LeaveReason, encode_event
from ..roles import Role


@dataclass(frozen=True, slots=True)
class Exit:
    """How a peer's session ends: what the room is told, what the client is told, how it closes."""

    reason: LeaveReason
    close_code: CloseCode
    close_reason: str
    notice: bytes | None = None  # a last frame for the client, sent before the close frame
    # The connection dropped (it was not removed): the peer may keep its place for a resume.
    resumable: bool = False
    preface: bytes | None = None  # a frame sent before the notice

    def frames(self) -> list[bytes]:
        """The last frames for the client, in order."""
        return [frame for frame in (self.preface, self.notice) if frame is not None]

    @classmethod
    def removed(cls, reason: LeaveReason, code: CloseCode, by: str | None, message: str) -> Exit:
        notice = encode_event(
            "session:closed", {"reason": reason.value, "by": by, "message": message}
        )
        return cls(reason, code, message, notice)


LEFT = Exit(LeaveReason.LEFT, CloseCode.NORMAL, "left the meeting")
DISCONNECTED = Exit(LeaveReason.DISCONNECTED, CloseCode.NORMAL, "disconnected", resumable=True)
TIMEOUT = Exit(
    LeaveReason.TIMEOUT, CloseCode.HEARTBEAT_TIMEOUT, "heartbeat timeout", resumable=True
)
RATE_LIMITED = Exit.removed(
    LeaveReason.RATE_LIMITED,
    CloseCode.RATE_LIMITED,
    None,
    "kept sending faster than the rate limit",
)
SLOW_CONSUMER = Exit.removed(
    LeaveReason.SLOW_CONSUMER,
    CloseCode.SLOW_CONSUMER,
    None,
    "outbound queue overflowed: the client reads too slowly",
)
INTERNAL = Exit(LeaveReason.ERROR, CloseCode.INTERNAL_ERROR, "internal error")


def shutdown(reconnect_after: float, *, jitter: bool = True) -> Exit:
    """The exit of a server shutdown: ``server:shutdown`` with a reconnect hint, then 1001.

    The hint is jittered (1x to 2x) so that the clients of a restarting server do not
    all come back in the same instant.
    """
    delay_ms = round(reconnect_after * 1000 * (random.uniform(1.0, 2.0) if jitter else 1.0))
    message = "server is shutting down"
    preface = encode_event("server:shutdown", {"reconnectAfterMs": delay_ms, "message": message})
    removed = Exit.removed(LeaveReason.SERVER_SHUTDOWN, CloseCode.GOING_AWAY, None, message)
    return dataclasses.replace(removed, preface=preface)


SHUTDOWN = shutdown(5.0, jitter=False)


@dataclass(slots=True)
class Takeover:
    """A connection that resumed a peer, waiting for the peer's previous one to wind down."""

    conn: Any  # a Connection
    request_id: Any
    done: trio.Event  # set once the room is finished with ``conn``


class Peer:
    """Identity, presence and the per-peer plumbing: an outbound queue and a cancel scope."""

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
        self.presence: dict[str, bool] = {"muted": False, "cameraOff": False, "handRaised": False}
        # Set when this peer became host because the host left; the role it goes back to.
        self.acting_host_from: Role | None = None
        # Bounded: a relay never waits on a slow reader; overflow disconnects that reader.
        self.outbox, self.outbox_reader = trio.open_memory_channel[bytes](outbox_size)
        # Cancelling this stops the peer reading; its session then winds down and closes.
        self.read_scope = trio.CancelScope()
        self.write_scope = trio.CancelScope()  # the writer's, cancelled when a resume takes over
        # trio.current_time() of sampled relays queued to this peer (see Metrics.observe_relay).
        self.latency_samples: deque[float] = deque()
        self.exit: Exit | None = None
        self.leave_recorded = False
        self.finished = trio.Event()
        # Resume: the credential the current connection was given (None when resume is
        # off, or once it was used), whether the peer is waiting without a connection,
        # when its connection dropped, and a connection that is taking over.
        self.resume_token: str | None = None
        self.detached = False
        self.receiving = False  # the reader is waiting for the client's next frame
        self.dropped_at: dt.datetime | None = None
        self.grace_ends = 0.0  # trio.current_time() at which a kept place is given up
        self.takeover: Takeover | None = None
        # Frames taken from the outbox whose write failed: sent first on a resumed connection.
        self.unsent: list[bytes] = []

    def is_superseded(self) -> bool:
        """Another connection resumed this peer; the current one is to wind down."""
        return self.takeover is not None

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
        return f"<Peer {self.emp_id} {self.role.value}>"
