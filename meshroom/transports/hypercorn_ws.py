"""The signaling WebSocket on hypercorn's own connection, framed by meshroom.

Through plain ASGI (:class:`~meshroom.transports.asgi.ASGIWebSocketConnection`),
hypercorn parses every received frame with wsproto and hands each message over
through a queue, and writes every sent message on its own: wsproto framing, a
lock, a ``send()`` system call. Relaying, that was most of the server's time
(bench/README.md, "The Quart route"). Under hypercorn (the ASGI server quart-trio
runs on), a connection of the signaling route instead

* writes every frame the room's writer has queued in one write, framed by meshroom
  (:func:`~meshroom.transports.frames.text_frames`), through hypercorn's own send
  path (its lock, its socket, TLS or not);
* parses what hypercorn reads off the socket with meshroom's
  :class:`~meshroom.transports.frames.FrameReader`, and gives the room each read's
  messages together, as the standalone listener does.

Hypercorn still does the rest: HTTP, the upgrade, TLS, its pings and read timeout,
and hanging up. This leans on internals of hypercorn's ``WSStream`` (the stream an
ASGI ``send`` belongs to): its ``handle``, ``send``, ``stream_id``, ``closed`` and
``handshake``. :func:`hypercorn_stream` checks for each and returns None when they are
not there, and the plain ASGI connection serves instead (slower, same behaviour).

No WebSocket extension is negotiated on this route (the standalone listener
negotiates none either): a browser asking for permessage-deflate gets plain frames.
"""

from __future__ import annotations

import collections
import contextlib
from collections.abc import Callable, Sequence
from typing import Any, Final

import trio
from hypercorn.protocol.events import Data, StreamClosed
from hypercorn.protocol.ws_stream import ASGIWebsocketState, WSStream

from ..core.connection import ConnectionClosed, MessageTooLarge
from . import frames as wire
from .asgi import ABNORMAL_CLOSURE, ASGIReceive, ASGISend, ASGIWebSocketConnection
from .frames import FrameReader, ProtocolViolation

NORMAL_CLOSURE: Final = 1000
MESSAGE_TOO_BIG: Final = 1009
_STREAM_ATTRIBUTES: Final = ("handle", "send", "stream_id", "closed", "handshake", "state")


def hypercorn_stream(send: ASGISend) -> Any | None:
    """The hypercorn WebSocket stream behind an ASGI ``send``, if it is one we can drive."""
    stream = getattr(send, "__self__", None)
    if not isinstance(stream, WSStream):
        return None
    if not all(hasattr(stream, name) for name in _STREAM_ATTRIBUTES):
        return None
    if stream.state is not ASGIWebsocketState.HANDSHAKE or not hasattr(
        stream.handshake, "extensions"
    ):
        return None
    return stream


class HypercornWebSocketConnection(ASGIWebSocketConnection):
    """:class:`meshroom.core.Connection` on a hypercorn WebSocket stream (see the module)."""

    __slots__ = (
        "_arrived",
        "_delegate",
        "_drained",
        "_inbox",
        "_reader",
        "_reading",
        "_stream",
    )

    def __init__(
        self,
        stream: Any,
        receive: ASGIReceive,
        send: ASGISend,
        *,
        remote: str,
        max_message_bytes: int,
        on_disconnect: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(
            receive,
            send,
            remote=remote,
            max_message_bytes=max_message_bytes,
            on_disconnect=on_disconnect,
        )
        self._stream = stream
        self._delegate = stream.handle  # hypercorn's own, for everything but frames
        self._reader = FrameReader(max_message_bytes)
        # Messages of the last read (str, bytes, or MessageTooLarge for one dropped),
        # until the room's reader takes them; hypercorn reads no more until it has.
        self._inbox: collections.deque[str | bytes | MessageTooLarge] = collections.deque()
        self._arrived: trio.Event | None = None  # the reader waits for a read
        self._drained: trio.Event | None = None  # hypercorn's read waits for the reader
        self._reading = True  # False after a protocol violation: the rest is ignored

    async def accept(self) -> None:
        stream = self._stream
        # meshroom's reader takes no extension (its frames have no RSV bits): decline
        # permessage-deflate before hypercorn answers the handshake.
        stream.handshake.extensions = None
        # From now on hypercorn hands what it reads to this connection, not to wsproto.
        # (Frames cannot come before the 101 answer, and _handle passes anything before
        # it on, so installing it first leaves no gap.)
        stream.handle = self._handle
        await super().accept()

    # Reading: hypercorn's read task calls _handle with what it read off the socket.

    async def _handle(self, event: Any) -> None:
        stream = self._stream
        if type(event) is Data and stream.handshake.accepted and not stream.closed:
            await self._feed(event.data)
            return
        await self._delegate(event)
        if type(event) is StreamClosed:
            self._went_away()

    async def _feed(self, data: bytes) -> None:
        if not self._reading:
            return
        try:
            events = self._reader.feed(data)
        except ProtocolViolation as exc:
            await self._violated(exc)
            return
        inbox = self._inbox
        for event in events:
            if type(event) is wire.Message:
                if not self._closed:  # (after our close frame, only the answer matters)
                    inbox.append(event.data.decode() if event.text else event.data)
            elif type(event) is wire.Oversized:
                if not self._closed:
                    inbox.append(MessageTooLarge(event.size, self._max))
            elif type(event) is wire.Ping:
                if not self._closed:
                    await self._write(wire.frame(wire.OP_PONG, event.payload))
            elif type(event) is wire.Close:
                await self._closing(event.code)
                break
        if inbox:
            self._wake_reader()
            # Read no more until the room has taken these (backpressure, and at most one
            # read's messages held per connection, as on the standalone listener).
            while inbox and not (self._gone or self._closed):
                self._drained = trio.Event()
                await self._drained.wait()

    async def _closing(self, code: int | None) -> None:
        """The client sent a close frame: answer it and hang up, as hypercorn would."""
        self._reading = False
        if not self._closed:
            self._closed = True
            with contextlib.suppress(Exception):
                await self._send({"type": "websocket.close", "code": code or NORMAL_CLOSURE})
        stream = self._stream
        await stream.send(StreamClosed(stream_id=stream.stream_id))

    async def _violated(self, violation: ProtocolViolation) -> None:
        """Close with the violation's code; read nothing more of this client."""
        self._reading = False
        if not self._closed:
            self._closed = True
            with contextlib.suppress(Exception):
                await self._send(
                    {"type": "websocket.close", "code": violation.code, "reason": violation.reason}
                )
        if violation.code != MESSAGE_TOO_BIG:
            # Framing is lost: hang up now (hypercorn does the same with wsproto's errors).
            # A message far over the limit leaves the connection to the client, which may
            # still be sending it; the room sees it go when it does (as with hypercorn).
            stream = self._stream
            await stream.send(StreamClosed(stream_id=stream.stream_id))

    def _went_away(self) -> None:
        if self._gone:
            return
        self._gone = True
        self._wake_reader()
        self._wake_feeder()
        if self._on_disconnect is not None:
            self._on_disconnect()

    def _wake_reader(self) -> None:
        if self._arrived is not None:
            self._arrived.set()
            self._arrived = None

    def _wake_feeder(self) -> None:
        if self._drained is not None:
            self._drained.set()
            self._drained = None

    async def receive(self) -> str | bytes:
        inbox = self._inbox
        while True:
            if inbox:
                message = inbox.popleft()
                if not inbox:
                    self._wake_feeder()
                if isinstance(message, MessageTooLarge):
                    raise message
                return message
            if self._gone or self._closed:
                raise ConnectionClosed(ABNORMAL_CLOSURE, "client disconnected")
            arrived = self._arrived = trio.Event()
            await arrived.wait()

    # Writing

    async def send(self, frames: Sequence[bytes]) -> None:
        if self._gone or self._closed:
            raise ConnectionClosed(ABNORMAL_CLOSURE)
        # Already UTF-8 JSON: framed as it is, every frame in one write.
        await self._write(wire.text_frames(frames))

    async def _write(self, data: bytes) -> None:
        stream = self._stream
        if stream.closed:
            # As hypercorn's own send: the client is gone, and the reader is told so.
            return
        await stream.send(Data(stream_id=stream.stream_id, data=data))

    async def close(self, code: int, reason: str = "") -> None:
        await super().close(code, reason)
        # Nothing more will be read: let hypercorn's read go on (to the client's close).
        self._inbox.clear()
        self._wake_feeder()


def connection_for(
    receive: ASGIReceive,
    send: ASGISend,
    *,
    remote: str,
    max_message_bytes: int,
    on_disconnect: Callable[[], None] | None = None,
) -> ASGIWebSocketConnection:
    """A :class:`HypercornWebSocketConnection` if hypercorn serves ``send``, else plain ASGI."""
    stream = hypercorn_stream(send)
    if stream is None:
        return ASGIWebSocketConnection(
            receive,
            send,
            remote=remote,
            max_message_bytes=max_message_bytes,
            on_disconnect=on_disconnect,
        )
    return HypercornWebSocketConnection(
        stream,
        receive,
        send,
        remote=remote,
        max_message_bytes=max_message_bytes,
        on_disconnect=on_disconnect,
    )
