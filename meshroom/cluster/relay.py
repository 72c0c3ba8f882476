"""The two ends of a client relayed between nodes: no Redis here, only the bookkeeping.

A client connected to node E for a room that node O runs is served by O's room
like any other peer: O sees a :class:`RemoteConnection` (the core's
``Connection`` contract), E keeps an :class:`EdgeLink` next to the client's real
connection. What one end publishes, the other's ``deliver`` takes in, in order;
a gap in the sequence numbers, the other node's death or Redis going away ends
the link as a dropped connection would end (the client may then resume).
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

import trio

from ..core.connection import ConnectionClosed, ConnectionTimedOut, MessageTooLarge
from .client import ClusterUnavailable

Publish = Callable[[dict[str, Any], list[bytes]], Awaitable[None]]


class LinkBroken(Exception):
    """An envelope arrived out of sequence: something published in between was lost."""


class _Sequence:
    def __init__(self) -> None:
        self.next = 0

    def check(self, header: dict[str, Any]) -> None:
        seq = header.get("s")
        if seq != self.next:
            raise LinkBroken(f"expected envelope {self.next}, got {seq}")
        self.next += 1

    def take(self) -> int:
        seq = self.next
        self.next += 1
        return seq


class RemoteConnection:
    """A client of another node, as the room core on the owning node sees it."""

    def __init__(
        self, link: str, edge: str, remote: str, publish: Publish, *, inbound_limit: int
    ) -> None:
        self.link = link
        self.edge = edge  # the node the client is connected to
        self._remote = remote
        self._publish = publish
        self._received = _Sequence()
        self._sent = _Sequence()
        self._in, self._inbox = trio.open_memory_channel[str | bytes | MessageTooLarge](
            inbound_limit
        )
        self._ended: ConnectionClosed | None = None
        self.closed = False

    @property
    def remote(self) -> str:
        return self._remote

    def deliver(self, header: dict[str, Any], payloads: Sequence[bytes]) -> None:
        """Take in an ``in`` or ``gone`` envelope from the edge node."""
        if self._ended is not None:
            return
        try:
            self._received.check(header)
        except LinkBroken as exc:
            self.lose(str(exc))
            return
        if header["k"] == "gone":
            code = header.get("code")
            gone = (ConnectionTimedOut if header.get("timeout") else ConnectionClosed)(
                code if isinstance(code, int) else None, str(header.get("reason", ""))
            )
            self._end(gone)
            return
        binary = set(header.get("bin", ()))
        try:
            for index, payload in enumerate(payloads):
                self._in.send_nowait(payload if index in binary else payload.decode())
            if isinstance(big := header.get("big"), list) and len(big) == 2:
                self._in.send_nowait(MessageTooLarge(int(big[0]), int(big[1])))
        except trio.WouldBlock:
            # The room reads slower than this client sends, past any rate limit's burst.
            self.lose("the client sent faster than its room could read")
        except UnicodeDecodeError:
            self.lose("a relayed text message is not UTF-8")

    def lose(self, why: str) -> None:
        """The link is gone (the edge node died, a gap, Redis): the client dropped."""
        self._end(ConnectionClosed(None, why))

    def _end(self, ended: ConnectionClosed) -> None:
        if self._ended is None:
            self._ended = ended
            self._in.close()  # receive() drains what arrived, then raises ``ended``

    async def receive(self) -> str | bytes:
        try:
            item = await self._inbox.receive()
        except trio.EndOfChannel:
            raise self._ended or ConnectionClosed() from None
        if isinstance(item, MessageTooLarge):
            raise item
        return item

    async def send(self, frames: Sequence[bytes]) -> None:
        if self.closed or self._ended is not None:
            raise self._ended or ConnectionClosed()
        try:
            await self._publish({"k": "out", "l": self.link, "s": self._sent.take()}, list(frames))
        except ClusterUnavailable as exc:
            self.lose(str(exc))
            raise ConnectionClosed(None, str(exc)) from None

    async def close(self, code: int, reason: str = "") -> None:
        if self.closed:
            return
        self.closed = True
        self._end(ConnectionClosed(code, reason))
        # If this fails, the edge node ends the link itself when it sees this node go.
        with suppress(ClusterUnavailable):
            await self._publish(
                {
                    "k": "close",
                    "l": self.link,
                    "s": self._sent.take(),
                    "code": code,
                    "reason": reason,
                },
                [],
            )


@dataclass(frozen=True, slots=True)
class Frames:
    frames: list[bytes]


@dataclass(frozen=True, slots=True)
class Close:
    code: int
    reason: str
    frames: tuple[bytes, ...] = ()  # last frames before the close (a reconnect hint)


class EdgeLink:
    """A client of this node whose room runs on ``owner``: what the owner sends it."""

    def __init__(self, link: str, owner: str, *, outbound_limit: int) -> None:
        self.link = link
        self.owner = owner
        self.sent = _Sequence()
        self._received = _Sequence()
        self._out, self.items = trio.open_memory_channel[Frames | Close](outbound_limit)
        self._pending_close: Close | None = None
        self.closed_by_owner = False

    def deliver(self, header: dict[str, Any], payloads: Sequence[bytes]) -> None:
        """Take in an ``out`` or ``close`` envelope from the owner."""
        try:
            self._received.check(header)
        except LinkBroken as exc:
            self.lose(Close(1001, f"relay interrupted: {exc}"))
            return
        if header["k"] == "close":
            code = header.get("code")
            self.closed_by_owner = True
            self._finish(
                Close(code if isinstance(code, int) else 1000, str(header.get("reason", "")))
            )
            return
        try:
            self._out.send_nowait(Frames(list(payloads)))
        except trio.WouldBlock:
            self.lose(Close(4009, "outbound queue overflowed: the client reads too slowly"))
        except trio.ClosedResourceError:
            pass

    def lose(self, close: Close) -> None:
        """End the link from this side (owner gone, gap, Redis): the client is closed."""
        self._finish(close)

    def _finish(self, close: Close) -> None:
        try:
            self._out.send_nowait(close)
        except trio.WouldBlock:
            # Full: the close goes after what is queued (the reader checks it at the end).
            self._pending_close = close
        except trio.ClosedResourceError:
            return
        self._out.close()

    def pending_close(self) -> Close:
        return self._pending_close or Close(1001, "relay ended")


INBOUND_LIMIT_FLOOR = 64


def inbound_limit(rate_burst: float) -> int:
    """How many client messages may wait on the owner before the link counts as flooding."""
    return max(INBOUND_LIMIT_FLOOR, math.ceil(rate_burst) * 2)
