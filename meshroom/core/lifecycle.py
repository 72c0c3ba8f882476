"""A peer's lifecycle as data: its states, the legal transitions, and how it ends.

In the spirit of h11's ``_state.py``: every state a peer can be in is named in
:class:`PeerState`, every legal move is one entry of :data:`TRANSITIONS`, and
:class:`Lifecycle` is the only thing that changes a peer's state; an illegal
move raises :class:`LifecycleError` (a bug in meshroom, never the client's doing).

Which exit wins when several things end a peer at once (its connection drops
while a host kicks it, say) is decided in one place, :meth:`Lifecycle.note`:
a *removal* (kick, ban, end, leave, slow consumer, ...) is final and is never
replaced; a *drop* (the connection went away; the peer may resume) is replaced
by anything that comes after it.

No trio and no I/O here: the room drives a peer through these states and does
what each step asks for (see :mod:`meshroom.core.room`).

::

    JOINING ──attach──▶ LIVE ◀──────────resumed──────────┐
                         │  └──resume──▶ RESUMING ────────┘
                       detach              ▲  │
                         ▼                 │  │
                       DETACHED ──resume───┘  │
                         │                    │
         LIVE, DETACHED, RESUMING ──remove──▶ CLOSING ──finish──▶ GONE
"""

from __future__ import annotations

import dataclasses
import enum
import random
from dataclasses import dataclass
from typing import Final

from ..protocol import CloseCode, LeaveReason, encode_event


class PeerState(enum.Enum):
    JOINING = "joining"  # admitted by the store, not yet a member of the room
    LIVE = "live"  # a member, with a connection
    DETACHED = "detached"  # a member whose connection dropped: its place is kept for a resume
    RESUMING = "resuming"  # a member whose new connection waits for the old one to wind down
    CLOSING = "closing"  # no longer a member: its last frames, close and leave are under way
    GONE = "gone"  # closed, and its leave handed to the leave writer


class Step(enum.Enum):
    """What moves a peer from one state to the next."""

    ATTACH = "attach"  # the room took it in
    DETACH = "detach"  # its connection dropped and the room keeps its place
    RESUME = "resume"  # a connection presented its resume token
    RESUMED = "resumed"  # the old connection is closed; the new one is the peer's now
    REMOVE = "remove"  # it is taken out of the room (for the reason its exit gives)
    FINISH = "finish"  # its teardown is complete


S, T = PeerState, Step
TRANSITIONS: Final[dict[PeerState, dict[Step, PeerState]]] = {
    S.JOINING: {T.ATTACH: S.LIVE},
    S.LIVE: {T.DETACH: S.DETACHED, T.RESUME: S.RESUMING, T.REMOVE: S.CLOSING},
    S.DETACHED: {T.RESUME: S.RESUMING, T.REMOVE: S.CLOSING},
    S.RESUMING: {T.RESUMED: S.LIVE, T.REMOVE: S.CLOSING},
    S.CLOSING: {T.FINISH: S.GONE},
    S.GONE: {},
}
# A member of its room is in exactly these states.
MEMBER_STATES: Final = frozenset({S.LIVE, S.DETACHED, S.RESUMING})
del S, T


def transition_table() -> str:
    """The transitions as a Markdown table (docs/protocol.md §9 shows it; a test checks)."""
    lines = ["| from | step | to |", "|---|---|---|"]
    for state, moves in TRANSITIONS.items():
        for step, target in moves.items():
            lines.append(f"| `{state.value}` | {step.value} | `{target.value}` |")
    return "\n".join(lines)


class LifecycleError(RuntimeError):
    """An illegal transition: meshroom drove a peer wrong (never the client's fault)."""


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
    # The store already closed the peer's attendance row (ending a meeting closes them all).
    row_closed: bool = False

    def frames(self) -> list[bytes]:
        """The last frames for the client, in order."""
        return [frame for frame in (self.preface, self.notice) if frame is not None]

    @classmethod
    def removed(cls, reason: LeaveReason, code: CloseCode, by: str | None, message: str) -> Exit:
        """A removal: the client gets ``session:closed`` saying why and by whom, then the close."""
        notice = encode_event(
            "session:closed", {"reason": reason.value, "by": by, "message": message}
        )
        return cls(reason, code, message, notice)


LEFT: Final = Exit(LeaveReason.LEFT, CloseCode.NORMAL, "left the meeting")
DISCONNECTED: Final = Exit(
    LeaveReason.DISCONNECTED, CloseCode.NORMAL, "disconnected", resumable=True
)
TIMEOUT: Final = Exit(
    LeaveReason.TIMEOUT, CloseCode.HEARTBEAT_TIMEOUT, "heartbeat timeout", resumable=True
)
RATE_LIMITED: Final = Exit.removed(
    LeaveReason.RATE_LIMITED,
    CloseCode.RATE_LIMITED,
    None,
    "kept sending faster than the rate limit",
)
SLOW_CONSUMER: Final = Exit.removed(
    LeaveReason.SLOW_CONSUMER,
    CloseCode.SLOW_CONSUMER,
    None,
    "outbound queue overflowed: the client reads too slowly",
)
INTERNAL: Final = Exit(LeaveReason.ERROR, CloseCode.INTERNAL_ERROR, "internal error")


def kicked(by: str | None) -> Exit:
    return Exit.removed(
        LeaveReason.KICKED, CloseCode.KICKED, by, "removed from the meeting by a host"
    )


def banned(by: str | None) -> Exit:
    return Exit.removed(
        LeaveReason.BANNED, CloseCode.BANNED, by, "banned from the meeting by a host"
    )


REPLACED: Final = Exit.removed(
    LeaveReason.REPLACED,
    CloseCode.REPLACED,
    None,
    "the same employee joined from another connection",
)


def meeting_ended(by: str | None) -> Exit:
    notice = encode_event("meeting:ended", {"by": by})
    return Exit(
        LeaveReason.MEETING_ENDED,
        CloseCode.MEETING_ENDED,
        "the meeting has ended",
        notice,
        row_closed=True,
    )


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


SHUTDOWN: Final = shutdown(5.0, jitter=False)


class Outcome(enum.Enum):
    """What the end of one of a peer's connections means for the peer."""

    END = "end"  # the peer leaves the room
    DETACH = "detach"  # the connection dropped; the peer waits for a resume
    TAKEOVER = "takeover"  # another connection resumed the peer


class Lifecycle:
    """One peer's state and exit. Every change goes through a method here."""

    __slots__ = ("exit", "state")

    def __init__(self) -> None:
        self.state = PeerState.JOINING
        self.exit: Exit | None = None

    def __repr__(self) -> str:
        exit = self.exit.reason.value if self.exit else None
        return f"<Lifecycle {self.state.value} exit={exit}>"

    def live(self) -> bool:
        """A member with a working connection (its reader may go on)."""
        return self.state is PeerState.LIVE

    @property
    def is_member(self) -> bool:
        return self.state in MEMBER_STATES

    @property
    def removal_decided(self) -> bool:
        """A final exit is known: the peer will leave, whatever else happens."""
        return self.exit is not None and not self.exit.resumable

    def _step(self, step: Step) -> None:
        target = TRANSITIONS[self.state].get(step)
        if target is None:
            raise LifecycleError(f"a {self.state.value} peer cannot {step.value}")
        self.state = target

    def note(self, exit: Exit) -> Exit:
        """Record why the peer (or its connection) ends; the one rule for which exit wins.

        A removal is final: nothing replaces it. A drop (resumable) is replaced by
        whatever comes after it. Returns the exit now in force.
        """
        if self.exit is None or self.exit.resumable:
            self.exit = exit
        return self.exit

    def attach(self) -> None:
        self._step(Step.ATTACH)

    def remove(self, exit: Exit) -> bool:
        """Take the peer out of its room. False (nothing changes) if it was not a member."""
        if self.state not in MEMBER_STATES:
            return False
        self.note(exit)
        self._step(Step.REMOVE)
        return True

    def may_resume(self) -> bool:
        return self.state in (PeerState.LIVE, PeerState.DETACHED) and not self.removal_decided

    def resume(self) -> None:
        if self.removal_decided:
            raise LifecycleError(f"a peer leaving ({self.exit}) cannot resume")
        self._step(Step.RESUME)

    def resumed(self) -> None:
        self._step(Step.RESUMED)
        self.exit = None  # the drop that detached it is forgiven

    def detach(self) -> None:
        self._step(Step.DETACH)

    def finish(self) -> None:
        self._step(Step.FINISH)

    def connection_ended(self, *, resume_allowed: bool) -> Outcome:
        """What the end of the peer's current connection means (the peer's next move).

        ``resume_allowed``: the room keeps places for a resume (grace > 0).
        """
        if self.state is PeerState.RESUMING:
            return Outcome.TAKEOVER
        if self.state is not PeerState.LIVE:
            # Removed (or removing), or detached and no connection came within the window.
            return Outcome.END
        if self.removal_decided:
            return Outcome.END
        if self.exit is not None and resume_allowed:
            return Outcome.DETACH
        return Outcome.END
