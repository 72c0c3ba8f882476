"""The core's tunables, and the errors a join can be refused with."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Protocol

from ..ice import IceConfig
from ..protocol import CloseCode, ErrorCode


class DuplicatePolicy(enum.StrEnum):
    """What happens when an employee already in the room joins again."""

    REPLACE = "replace"  # the new connection takes over; the old one is closed (4007)
    REJECT = "reject"  # the new connection is refused (4008); the old one stays


@dataclass(frozen=True, slots=True)
class HubConfig:
    auth_timeout: float = 10.0
    close_timeout: float = 5.0
    outbox_size: int = 2048
    duplicate_policy: DuplicatePolicy = DuplicatePolicy.REPLACE
    ice: IceConfig = field(default_factory=IceConfig)
    # Seconds a peer whose connection dropped keeps its place for a resume. Off (0) in
    # the core's defaults; ``meshroom serve`` turns it on (Settings.resume_grace).
    resume_grace: float = 0.0
    # Frames per second a connection may send on average, and at once (0 = no limit).
    rate_limit: float = 200.0
    rate_burst: float = 1000.0
    max_room_peers: int = 100  # 0 = no limit
    max_connections: int = 10000  # per process, over every transport; 0 = no limit
    # The reconnect hint of server:shutdown, in seconds (each peer gets 1x to 2x of it).
    shutdown_reconnect_after: float = 5.0
    # Seconds a kicked employee is refused (KICKED, 4005) before it may join again. Off
    # (0) in the core's defaults; ``meshroom serve`` sets it (Settings.kick_rejoin_block).
    kick_rejoin_block: float = 0.0
    # Seconds between checks for live rooms whose meeting was ended elsewhere (the CLI,
    # another process): such a room is then closed as by host:end. 0 = never check.
    ended_check_interval: float = 5.0


class JoinRefused(Exception):
    """A connection is not let in: the error frame and close code it gets."""

    def __init__(self, code: ErrorCode, close_code: CloseCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.close_code = close_code
        self.message = message


class RoomClaims(Protocol):
    """Which process may run a room. Without one, this process runs every room it is asked
    for; a cluster (meshroom.cluster) grants a room to the one node holding its lease."""

    async def claim(self, meeting_id: str) -> None:
        """Return once this process may run the room (idempotent while it holds it).

        Raises:
            JoinRefused: another process runs the room, or ownership cannot be decided now.
        """
        ...

    def holds(self, meeting_id: str) -> bool:
        """Whether this process may run the room at this moment (a local check)."""
        ...
