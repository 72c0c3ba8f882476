"""The contract between the room core and a transport.

A transport (the standalone WebSocket listener, the Quart route, later a
Socket.IO endpoint) wraps each client connection in an object with these three
methods and hands it to :meth:`meshroom.core.Hub.serve`. The core never sees a
socket, a request object or a WebSocket library.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable


class ConnectionClosed(Exception):
    """The client is gone (it closed, or the network failed)."""

    def __init__(self, code: int | None = None, reason: str = "") -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = reason


class ConnectionTimedOut(ConnectionClosed):
    """The client stopped answering heartbeats: it is presumed dead (or unreachable)."""


class MessageTooLarge(Exception):
    """The client sent a message over the limit. It was discarded; the connection is usable."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"message of at least {size} bytes exceeds the {limit}-byte limit")
        self.size = size
        self.limit = limit


class Connection(Protocol):
    """One client connection, as the core sees it."""

    @property
    def remote(self) -> str:
        """A printable address of the client, for logs."""
        ...

    async def receive(self) -> str | bytes:
        """The next whole message: ``str`` for text, ``bytes`` for binary.

        Raises:
            ConnectionClosed: the client is gone; no further call will succeed.
                ``ConnectionTimedOut`` (a subclass) if it stopped answering heartbeats.
            MessageTooLarge: a message was over the limit and has been dropped.
        """
        ...

    async def send(self, frames: Sequence[bytes]) -> None:
        """Send text messages (each UTF-8 encoded JSON) in order, ideally as one write.

        Only one task calls this at a time (the peer's writer).

        Raises:
            ConnectionClosed: the client is gone.
        """
        ...

    async def close(self, code: int, reason: str = "") -> None:
        """Close with a WebSocket close code. Idempotent; never raises ConnectionClosed."""
        ...


@runtime_checkable
class SendsAtOnce(Protocol):
    """A connection that can also write a frame from the caller's task, without waiting.

    Optional: the room uses it for a lone reply (a ping's answer) to a peer with nothing
    else queued, and for what its flusher writes (a broadcast's frame, a relayed signal,
    to peers whose writer is not running), where starting the peer's writer task costs
    more than the write itself.
    A transport offers it where a write can be tried without blocking (a plain socket).
    """

    def can_send_at_once(self) -> bool:
        """Whether :meth:`send_at_once` may be called now (no write under way)."""
        ...

    def send_at_once(self, frames: Sequence[bytes]) -> bool:
        """Write ``frames`` now, as :meth:`Connection.send` would, but without waiting.

        Called only right after :meth:`can_send_at_once` returned True, with no checkpoint
        in between. False if the network did not take it all: the connection keeps the
        rest and sends it ahead of anything else, at the next :meth:`Connection.send`
        (the room then starts one, with nothing more, to finish it). A failure shows at
        the next receive or send.
        """
        ...
