"""A peer: one authenticated connection of one employee in one room."""

from __future__ import annotations

import datetime as dt
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

    @classmethod
    def removed(cls, reason: LeaveReason, code: CloseCode, by: str | None, message: str) -> Exit:
        notice = encode_event(
            "session:closed", {"reason": reason.value, "by": by, "message": message}
        )
        return cls(reason, code, message, notice)


LEFT = Exit(LeaveReason.LEFT, CloseCode.NORMAL, "left the meeting")
DISCONNECTED = Exit(LeaveReason.DISCONNECTED, CloseCode.NORMAL, "disconnected")
SLOW_CONSUMER = Exit.removed(
    LeaveReason.SLOW_CONSUMER,
    CloseCode.SLOW_CONSUMER,
    None,
    "outbound queue overflowed: the client reads too slowly",
)
SHUTDOWN = Exit.removed(
    LeaveReason.SERVER_SHUTDOWN, CloseCode.GOING_AWAY, None, "server is shutting down"
)
INTERNAL = Exit(LeaveReason.ERROR, CloseCode.INTERNAL_ERROR, "internal error")


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
        # trio.current_time() of sampled relays queued to this peer (see Metrics.observe_relay).
        self.latency_samples: deque[float] = deque()
        self.exit: Exit | None = None
        self.leave_recorded = False
        self.finished = trio.Event()

    def public(self) -> dict[str, Any]:
        return {
            "empId": self.emp_id,
            "displayName": self.display_name,
            "role": self.role.value,
            "presence": dict(self.presence),
        }

    def __repr__(self) -> str:
        return f"<Peer {self.emp_id} {self.role.value}>"
