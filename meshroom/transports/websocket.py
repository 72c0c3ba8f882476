"""The standalone signaling listener: wsproto (sans-I/O WebSocket) driven on trio streams.

This is meshroom's fast path. Each connection is one trio stream, one wsproto
state machine and no extra tasks or queues of its own: the room core's writer
task calls :meth:`WebSocketConnection.send` with every frame it has queued, and
they leave in a single ``send_all``.
"""

from __future__ import annotations

import contextlib
import logging
import struct
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import parse_qs, urlsplit

import trio
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Message,
    Ping,
    Request,
    TextMessage,
)
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from ..core.connection import ConnectionClosed, MessageTooLarge

log = logging.getLogger(__name__)

RECEIVE_SIZE: Final = 65536
# Server-to-client frame headers (RFC 6455 §5.2): FIN + text opcode, unmasked length.
_HEADER_16: Final = struct.Struct("!BBH")
_HEADER_64: Final = struct.Struct("!BBQ")
DEFAULT_MAX_MESSAGE_BYTES: Final = 64 * 1024
TOKEN_QUERY_PARAMETER: Final = "meetingAccessToken"


class WebSocketConnection:
    """:class:`meshroom.core.Connection` over a trio stream, after the handshake."""

    def __init__(
        self,
        stream: trio.abc.Stream,
        ws: WSConnection,
        *,
        remote: str,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        self._stream = stream
        self._ws = ws
        self._remote = remote
        self._max = max_message_bytes
        self._pending: deque[Event] = deque(ws.events())
        self._parts: list[str | bytes] = []
        self._size = 0
        self._discarding = False
        self._send_lock = trio.StrictFIFOLock()  # the writer task and pong replies share the stream
        self._broken = False
        self._closed = False
        self.close_code: int | None = None  # what the client sent, if it closed first

    @property
    def remote(self) -> str:
        return self._remote

    async def receive(self) -> str | bytes:
        while True:
            while self._pending:
                message = await self._handle(self._pending.popleft())
                if message is not None:
                    return message
            if self._closed or self._ws.state is ConnectionState.CLOSED:
                raise ConnectionClosed(self.close_code)
            try:
                data = await self._stream.receive_some(RECEIVE_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            try:
                self._ws.receive_data(bytes(data) or None)
            except RemoteProtocolError as exc:
                log.debug("protocol error from %s: %s", self._remote, exc)
                await self.close(1002, "protocol error")
                raise ConnectionClosed(1002, "protocol error") from None
            self._pending.extend(self._ws.events())

    async def _handle(self, event: Event) -> str | bytes | None:
        if isinstance(event, Message):
            return self._collect(event)
        if isinstance(event, Ping):
            await self._send_bytes(self._ws.send(event.response()))
            return None
        if isinstance(event, CloseConnection):
            self.close_code = event.code
            if self._ws.state is ConnectionState.REMOTE_CLOSING:
                await self._send_bytes(self._ws.send(event.response()))
            await self._abort()
            raise ConnectionClosed(event.code, event.reason or "")
        return None  # Pong: liveness is judged by any traffic

    def _collect(self, event: Message[Any]) -> str | bytes | None:
        # Fragments are gathered up to the limit; past it the rest of the message is
        # read and dropped, so one oversized frame costs an error, not the connection.
        if not self._discarding:
            self._size += len(event.data)
            if self._size > self._max:
                self._discarding = True
                self._parts.clear()
            else:
                self._parts.append(event.data)
        if not event.message_finished:
            return None
        size, discarded = self._size, self._discarding
        parts, self._parts, self._size, self._discarding = self._parts, [], 0, False
        if discarded:
            raise MessageTooLarge(size, self._max)
        if isinstance(event, TextMessage):
            return parts[0] if len(parts) == 1 else "".join(parts)  # type: ignore[arg-type]
        assert isinstance(event, BytesMessage)
        return b"".join(parts)  # type: ignore[arg-type]

    async def send(self, frames: Sequence[bytes]) -> None:
        if self._state() is not ConnectionState.OPEN:
            raise ConnectionClosed(self.close_code)
        # Frames are already UTF-8 JSON, so they are framed here directly rather than
        # decoded to str for wsproto to encode again; no extension is ever negotiated.
        parts: list[bytes] = []
        for frame in frames:
            size = len(frame)
            if size < 126:
                parts.append(bytes((0x81, size)))
            elif size < 65536:
                parts.append(_HEADER_16.pack(0x81, 126, size))
            else:
                parts.append(_HEADER_64.pack(0x81, 127, size))
            parts.append(frame)
        await self._send_bytes(b"".join(parts))

    async def _send_bytes(self, data: bytes) -> None:
        if self._broken:
            raise ConnectionClosed(self.close_code)
        async with self._send_lock:
            sending = True
            try:
                await self._stream.send_all(data)
                sending = False
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._broken = True
                raise ConnectionClosed(self.close_code) from None
            finally:
                if sending:
                    # Cancelled mid-write: a partial frame may be on the wire.
                    self._broken = True

    async def close(self, code: int, reason: str = "") -> None:
        """Send a close frame, wait (within the caller's deadline) for the reply, hang up."""
        if self._closed:
            return
        try:
            if not self._broken and self._ws.state is ConnectionState.OPEN:
                await self._send_bytes(self._ws.send(CloseConnection(code=code, reason=reason)))
                # Hanging up with unread input would make the kernel send RST, and the
                # client could lose our close frame; so read until it answers or goes.
                while self._state() is ConnectionState.LOCAL_CLOSING:
                    data = await self._stream.receive_some(RECEIVE_SIZE)
                    if not data:
                        break
                    self._ws.receive_data(bytes(data))
                    for _ in self._ws.events():
                        pass
        except (
            ConnectionClosed,
            trio.BrokenResourceError,
            trio.ClosedResourceError,
            RemoteProtocolError,
            LocalProtocolError,
        ):
            pass
        finally:
            await self._abort()

    def _state(self) -> ConnectionState:
        # A method, not the property, so type checkers do not pin it across awaits.
        return self._ws.state

    async def _abort(self) -> None:
        self._closed = True
        await trio.aclose_forcefully(self._stream)


@dataclass(frozen=True, slots=True)
class Upgrade:
    """What a handler learns about an accepted WebSocket request."""

    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]

    @property
    def token(self) -> str | None:
        values = self.query.get(TOKEN_QUERY_PARAMETER)
        return values[0] if values else None


ConnectionHandler = Callable[[WebSocketConnection, Upgrade], Awaitable[None]]


async def accept_websocket(
    stream: trio.abc.Stream,
    *,
    path: str,
    remote: str,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
) -> tuple[WebSocketConnection, Upgrade] | None:
    """Run the HTTP upgrade handshake on a fresh stream. None if it was refused (and closed)."""
    ws = WSConnection(ConnectionType.SERVER)
    request: Request | None = None
    while request is None:
        data = await stream.receive_some(RECEIVE_SIZE)
        if not data:
            await trio.aclose_forcefully(stream)
            return None
        try:
            ws.receive_data(bytes(data))
            for event in ws.events():
                if isinstance(event, Request):
                    request = event
                    break
        except RemoteProtocolError as exc:
            await _plain_response(
                stream, 426, f"this endpoint speaks WebSocket only ({exc})\n", upgrade=True
            )
            return None
    target = urlsplit(request.target)
    if target.path.rstrip("/") != path.rstrip("/"):
        await _plain_response(stream, 404, f"no WebSocket endpoint at {target.path}; try {path}\n")
        return None
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in request.extra_headers}
    await stream.send_all(ws.send(AcceptConnection()))
    conn = WebSocketConnection(stream, ws, remote=remote, max_message_bytes=max_message_bytes)
    return conn, Upgrade(path=target.path, query=parse_qs(target.query), headers=headers)


async def _plain_response(
    stream: trio.abc.Stream, status: int, body: str, *, upgrade: bool = False
) -> None:
    reason = {404: "Not Found", 426: "Upgrade Required"}[status]
    payload = body.encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(payload)}\r\nConnection: close\r\n"
        + ("Upgrade: websocket\r\n" if upgrade else "")
        + "\r\n"
    )
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        await stream.send_all(head.encode() + payload)
    await trio.aclose_forcefully(stream)


def _remote_of(stream: trio.abc.Stream) -> str:
    try:
        host, port = stream.socket.getpeername()[:2]  # type: ignore[attr-defined]
        return f"{host}:{port}"
    except (AttributeError, OSError):
        return "?"


async def serve_websocket(
    handler: ConnectionHandler,
    listeners: list[trio.SocketListener],
    *,
    path: str = "/meetings",
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    handshake_timeout: float = 10.0,
    handler_nursery: trio.Nursery | None = None,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Accept WebSocket connections on ``listeners`` at ``path`` and run ``handler`` on each."""

    async def on_stream(stream: trio.SocketStream) -> None:
        remote = _remote_of(stream)
        accepted = None
        try:
            with trio.move_on_after(handshake_timeout):
                accepted = await accept_websocket(
                    stream, path=path, remote=remote, max_message_bytes=max_message_bytes
                )
                if accepted is None:
                    return
            if accepted is None:  # the handshake timed out
                await trio.aclose_forcefully(stream)
                return
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            await trio.aclose_forcefully(stream)
            return
        conn, upgrade = accepted
        try:
            await handler(conn, upgrade)
        except Exception:
            log.exception("connection handler failed for %s", remote)
            with trio.move_on_after(1):
                await conn.close(1011, "internal error")
        finally:
            await conn._abort()

    await trio.serve_listeners(
        on_stream,
        listeners,
        handler_nursery=handler_nursery,
        task_status=task_status,
    )
