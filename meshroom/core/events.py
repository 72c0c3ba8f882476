"""What the core tells the world: typed events through one subscription point.

Metrics subscribe today, a cluster relay will tomorrow; tests wait on these
events instead of reaching into the core's internals. (Webhooks do not come from
here: the store writes them in the transaction of each change, see
meshroom.store.outbox, so none is lost when the process dies.) Events are
delivered synchronously, in the order they happen, from the task that caused
them: a subscriber must not block (a memory channel of unbounded size is the
way to get them into a task of your own: :meth:`EventBus.subscribe`).
"""

from __future__ import annotations

import logging
import math
import typing
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import trio

from ..protocol import LeaveReason
from ..roles import Role

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RoomOpened:
    meeting_id: str


@dataclass(frozen=True, slots=True)
class RoomClosed:
    meeting_id: str


@dataclass(frozen=True, slots=True)
class JoinRejected:
    reason: str  # a metrics label: auth-failed, banned, room-full, ...


@dataclass(frozen=True, slots=True)
class PeerJoined:
    meeting_id: str
    emp_id: str
    role: Role
    attendance_id: int


@dataclass(frozen=True, slots=True)
class PeerLeft:
    """A peer is no longer a member (its connection may still be closing)."""

    meeting_id: str
    emp_id: str
    reason: LeaveReason
    attendance_id: int


@dataclass(frozen=True, slots=True)
class PeerDetached:
    """A peer's connection dropped; its place is kept for a resume."""

    meeting_id: str
    emp_id: str


@dataclass(frozen=True, slots=True)
class PeerResumed:
    meeting_id: str
    emp_id: str


@dataclass(frozen=True, slots=True)
class ResumeRefused:
    meeting_id: str
    emp_id: str


@dataclass(frozen=True, slots=True)
class PeerFinished:
    """A peer's teardown is complete: its connection is closed and its leave handed over."""

    meeting_id: str
    emp_id: str
    reason: LeaveReason
    attendance_id: int


@dataclass(frozen=True, slots=True)
class RoleChanged:
    meeting_id: str
    emp_id: str
    role: Role
    previous: Role
    reason: str
    by: str | None


@dataclass(frozen=True, slots=True)
class MeetingEnded:
    meeting_id: str
    by: str | None


@dataclass(frozen=True, slots=True)
class SignalRelayed:
    meeting_id: str
    event: str
    from_emp_id: str
    to_emp_id: str


@dataclass(frozen=True, slots=True)
class RelayLatency:
    """One sampled relay: seconds from the room queueing a signal to its socket write."""

    seconds: float


CoreEvent = (
    RoomOpened
    | RoomClosed
    | JoinRejected
    | PeerJoined
    | PeerLeft
    | PeerDetached
    | PeerResumed
    | ResumeRefused
    | PeerFinished
    | RoleChanged
    | MeetingEnded
    | SignalRelayed
    | RelayLatency
)
E = TypeVar("E")
Subscriber = Callable[[Any], None]


class EventBus:
    """The core's one subscription point."""

    def __init__(self) -> None:
        self._by_type: dict[type, list[Subscriber]] = {}

    def on(self, kind: type[E], callback: Callable[[E], None]) -> Callable[[], None]:
        """Call ``callback(event)`` for every event of ``kind``; returns the unsubscriber."""
        callbacks = self._by_type.setdefault(kind, [])
        callbacks.append(callback)
        return lambda: callbacks.remove(callback)

    def wants(self, kind: type) -> bool:
        """Anyone listens for ``kind`` (lets the relay path skip building unwanted events)."""
        return bool(self._by_type.get(kind))

    def emit(self, event: CoreEvent) -> None:
        for callback in self._by_type.get(type(event), ()):
            try:
                callback(event)
            except Exception:
                # A subscriber's bug must not break a relay or a teardown.
                log.exception("subscriber %r failed on %r", callback, event)

    @contextmanager
    def subscribe(self, *kinds: type) -> Iterator[trio.MemoryReceiveChannel[Any]]:
        """Every event of ``kinds`` (all kinds if none are named), as a channel, for a block."""
        send, receive = trio.open_memory_channel[Any](math.inf)
        unsubscribers = [
            self.on(kind, send.send_nowait) for kind in (kinds or typing.get_args(CoreEvent))
        ]
        try:
            with receive:
                yield receive
        finally:
            for unsubscribe in unsubscribers:
                unsubscribe()
            send.close()
