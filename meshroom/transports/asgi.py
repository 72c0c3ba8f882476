"""The signaling WebSocket over ASGI: a connection on an ASGI server's ``receive``/``send``.

The Quart extension serves its signaling route and the Socket.IO endpoint's
WebSockets through this (see :mod:`meshroom.http.signaling`): a middleware in front
of the Quart app hands those WebSocket scopes here, so each message goes from
hypercorn's queue to the room and back with nothing of Quart in between (no request
context, no second queue, no task of Quart's per connection, no per-message signals).

Refusals before the upgrade are HTTP answers through ASGI's WebSocket denial
response (``websocket.http.response.*``), as on the standalone listener; a server
without that extension gets ``websocket.close``, which it answers with 403.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Iterable, MutableMapping, Sequence
from typing import TYPE_CHECKING, Any, Final, Protocol
from urllib.parse import parse_qs

import trio

from ..core.connection import ConnectionClosed, MessageTooLarge
from ..core.limits import ConnectionSlots, OriginPolicy
from .websocket import Upgrade

if TYPE_CHECKING:
    from .socketio import SocketIOEndpoint

ASGIMessage = MutableMapping[str, Any]
ASGIReceive = Callable[[], Awaitable[ASGIMessage]]
ASGISend = Callable[[ASGIMessage], Awaitable[None]]
# Hub.serve's signature (or a cluster node's): runs one connection to its end.
Serve = Callable[..., Awaitable[None]]

DENIAL_EXTENSION: Final = "websocket.http.response"
ABNORMAL_CLOSURE: Final = 1006


class ASGIWebSocketConnection:
    """:class:`meshroom.core.Connection` over an accepted ASGI WebSocket."""

    __slots__ = ("_closed", "_gone", "_max", "_on_disconnect", "_receive", "_remote", "_send")

    def __init__(
        self,
        receive: ASGIReceive,
        send: ASGISend,
        *,
        remote: str,
        max_message_bytes: int,
        on_disconnect: Callable[[], None] | None = None,
    ) -> None:
        self._receive = receive
        self._send = send
        self._remote = remote
        self._max = max_message_bytes
        self._on_disconnect = on_disconnect
        self._gone = False  # the client went away (websocket.disconnect arrived)
        self._closed = False  # we sent websocket.close

    @property
    def remote(self) -> str:
        return self._remote

    @property
    def closed(self) -> bool:
        return self._closed

    async def accept(self) -> None:
        await self._send({"type": "websocket.accept"})

    async def receive(self) -> str | bytes:
        while not (self._gone or self._closed):
            message = await self._receive()
            kind = message["type"]
            if kind == "websocket.receive":
                data: str | bytes | None = message.get("text")
                if data is None:
                    data = message.get("bytes") or b""
                # The limit is in bytes, as on the standalone listener; a str can only be
                # over it if its character count exceeds a quarter of the limit.
                if len(data) * 4 > self._max:
                    size = len(data.encode() if isinstance(data, str) else data)
                    if size > self._max:
                        raise MessageTooLarge(size, self._max)
                return data
            if kind == "websocket.disconnect":
                self._gone = True
                if self._on_disconnect is not None:
                    self._on_disconnect()
                raise ConnectionClosed(message.get("code", ABNORMAL_CLOSURE), "client disconnected")
        raise ConnectionClosed(ABNORMAL_CLOSURE, "client disconnected")

    async def send(self, frames: Sequence[bytes]) -> None:
        if self._gone or self._closed:
            raise ConnectionClosed(ABNORMAL_CLOSURE)
        send = self._send
        try:
            for frame in frames:
                # ASGI carries one message per send; "text" makes it a text frame, which
                # the protocol requires (the frames are UTF-8 JSON, so this cannot fail).
                await send({"type": "websocket.send", "text": frame.decode()})
        except (trio.Cancelled, ConnectionClosed):
            raise
        except Exception as exc:  # the server's own kinds of "the client is gone"
            raise ConnectionClosed(ABNORMAL_CLOSURE) from exc

    async def close(self, code: int, reason: str = "") -> None:
        if self._closed:
            return
        self._closed = True
        if self._gone:
            return  # nobody to tell
        with contextlib.suppress(Exception):  # the client may be gone meanwhile
            await self._send({"type": "websocket.close", "code": code, "reason": reason})


class ConnectionFactory(Protocol):
    """Makes the connection for an ASGI WebSocket about to be accepted."""

    def __call__(
        self,
        receive: ASGIReceive,
        send: ASGISend,
        *,
        remote: str,
        max_message_bytes: int,
        on_disconnect: Callable[[], None] | None = None,
    ) -> ASGIWebSocketConnection: ...


def route_path(scope: ASGIMessage) -> str:
    """The path the app routes on: ``scope["path"]`` less its ``root_path``, as Quart does."""
    path: str = scope["path"]
    root_path: str = scope.get("root_path", "")
    if root_path:
        _, found, rest = path.partition(root_path)
        return (rest or " ") if found else " "  # " " matches nothing, as in Quart
    return path


def _header(scope: ASGIMessage, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return None


def _query(scope: ASGIMessage) -> dict[str, list[str]]:
    return parse_qs(bytes(scope.get("query_string", b"")).decode("latin-1"), keep_blank_values=True)


def _upgrade(scope: ASGIMessage, path: str) -> Upgrade:
    return Upgrade(path, _query(scope), {})


async def refuse(
    scope: ASGIMessage,
    send: ASGISend,
    status: int,
    text: str | bytes,
    headers: Iterable[tuple[bytes, bytes]] = (),
    content_type: str = "text/plain; charset=utf-8",
) -> None:
    """Answer a WebSocket request with a plain HTTP response instead of accepting it."""
    if DENIAL_EXTENSION not in (scope.get("extensions") or {}):
        await send({"type": "websocket.close", "code": 1008})  # the server answers 403
        return
    body = text.encode() if isinstance(text, str) else text
    await send(
        {
            "type": "websocket.http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type.encode("latin-1")),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "websocket.http.response.body", "body": body, "more_body": False})


async def serve_asgi_websocket(
    scope: ASGIMessage,
    receive: ASGIReceive,
    send: ASGISend,
    *,
    serve: Serve,
    slots: ConnectionSlots,
    origins: OriginPolicy,
    max_message_bytes: int,
    connection: ConnectionFactory = ASGIWebSocketConnection,
) -> None:
    """Run one ASGI WebSocket connection of the signaling route to its end.

    Refuses with 403 an Origin not in ``origins`` and with 503 (Retry-After) when no
    connection slot is left, accepts otherwise and hands the connection (made by
    ``connection``) to ``serve`` with the token, resume token and lastSeq of the query
    string.
    """
    first = await receive()
    if first["type"] != "websocket.connect":
        return  # gone before the handshake reached us
    if not origins.allows(_header(scope, b"origin")):
        await refuse(scope, send, 403, "this Origin may not open a signaling WebSocket\n")
        return
    upgrade = _upgrade(scope, route_path(scope))

    async def run(conn: ASGIWebSocketConnection, remote: str) -> None:
        await serve(
            conn,
            token=upgrade.token,
            resume_token=upgrade.resume_token,
            last_seq=upgrade.last_seq,
        )

    # The client gone, stop waiting for the room, which learns it from its own read,
    # and give the slot back now (as the Quart route did).
    await _serve_accepted(scope, receive, send, slots, connection, max_message_bytes, run)


async def serve_asgi_socketio(
    scope: ASGIMessage,
    receive: ASGIReceive,
    send: ASGISend,
    *,
    endpoint: SocketIOEndpoint,
    slots: ConnectionSlots,
    connection: ConnectionFactory = ASGIWebSocketConnection,
) -> None:
    """Run one ASGI WebSocket of the Socket.IO endpoint (``/socket.io/``) to its end.

    Engine.IO's checks refuse before the upgrade with its error body (as the listener
    does), no connection slot left gets 503 with Retry-After; otherwise the connection
    (made by ``connection``) is accepted and handed to the endpoint.
    """
    first = await receive()
    if first["type"] != "websocket.connect":
        return  # gone before the handshake reached us
    query = _query(scope)
    headers = {
        bytes(key).decode("latin-1").lower(): bytes(value).decode("latin-1")
        for key, value in scope.get("headers", ())
    }
    refusal = endpoint.check("GET", query, headers, websocket=True)
    if refusal is not None:
        extra = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in refusal.headers]
        await refuse(
            scope, send, refusal.status, refusal.body, extra, content_type=refusal.content_type
        )
        return

    async def run(conn: ASGIWebSocketConnection, remote: str) -> None:
        await endpoint.handle_websocket(query, conn, remote=remote)

    # The client gone, the session learns it from its own read; this request is over
    # (a session kept for a reconnect lives in the endpoint).
    await _serve_accepted(scope, receive, send, slots, connection, endpoint.max_payload, run)


async def _serve_accepted(
    scope: ASGIMessage,
    receive: ASGIReceive,
    send: ASGISend,
    slots: ConnectionSlots,
    connection: ConnectionFactory,
    max_message_bytes: int,
    run: Callable[[ASGIWebSocketConnection, str], Awaitable[None]],
) -> None:
    """Take a connection slot (503 with Retry-After when none is left), accept, and
    ``run(conn, remote)`` until it returns or the client goes away; then close with
    1000 unless closed already, and give the slot back."""
    if not slots.acquire():
        await refuse(
            scope,
            send,
            503,
            "too many connections; try again shortly\n",
            [(b"retry-after", b"5")],
        )
        return
    try:
        client = scope.get("client")
        remote = str(client[0]) if client else "?"
        with trio.CancelScope() as serving:
            conn = connection(
                receive,
                send,
                remote=remote,
                max_message_bytes=max_message_bytes,
                on_disconnect=serving.cancel,
            )
            await conn.accept()
            await run(conn, remote)
        if not conn.closed:
            await conn.close(1000)
    finally:
        slots.release()
