"""The signaling WebSocket of an app with meshroom in it (``/meetings`` under the prefix).

It is served by :class:`SignalingMiddleware`, an ASGI middleware that ``Meshroom(app)``
puts in front of the app (``app.asgi_app``): WebSocket requests for the signaling path
go straight to the hub (:func:`meshroom.transports.asgi.serve_asgi_websocket`), everything
else (HTTP, the app's own WebSocket routes, ``/socket.io/``) to Quart, unchanged. Through
Quart each message cost a second queue, a task of Quart's, a request context and two
signals, none of which the hub needs.

Served by hypercorn, the connection goes one step further and runs on hypercorn's own
stream with meshroom's framing (:mod:`meshroom.transports.hypercorn_ws`): hypercorn's
per-message path (wsproto, a queue, a socket write per message) was most of the cost,
far more than Quart's. Under any other ASGI server it is plain ASGI.

So Quart's hooks (``before_websocket``, ``after_websocket``) and signals
(``websocket_received``, ``websocket_sent``) do not run for the signaling route.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Final

import trio

from ..core.connection import ConnectionClosed, MessageTooLarge
from ..core.limits import OriginPolicy
from ..transports.asgi import (
    ASGIMessage,
    ASGIReceive,
    ASGISend,
    route_path,
    serve_asgi_websocket,
)
from ..transports.hypercorn_ws import connection_for

if TYPE_CHECKING:
    from .extension import Meshroom

SIGNALING_PATH: Final = "/meetings"

# (Quart types its asgi_app with hypercorn's TypedDicts; any ASGI app will do.)
ASGIApp = Callable[..., Awaitable[None]]


class SignalingMiddleware:
    """ASGI middleware: the signaling WebSocket to the hub, everything else to ``app``."""

    def __init__(self, app: ASGIApp, meshroom: Meshroom) -> None:
        self.app = app
        self.meshroom = meshroom
        self.path = f"{meshroom.url_prefix}{SIGNALING_PATH}"

    async def __call__(self, scope: ASGIMessage, receive: ASGIReceive, send: ASGISend) -> None:
        if scope["type"] != "websocket" or route_path(scope) != self.path:
            await self.app(scope, receive, send)
            return
        meshroom = self.meshroom
        settings = meshroom.settings
        await serve_asgi_websocket(
            scope,
            receive,
            send,
            serve=meshroom.runtime.serve,
            slots=meshroom.hub.slots,
            origins=_origin_policy(settings.allowed_origins),
            max_message_bytes=settings.max_message_bytes,
            connection=connection_for,
        )


@functools.lru_cache(maxsize=8)
def _origin_policy(allowed: str) -> OriginPolicy:
    return OriginPolicy(part for part in allowed.split(","))


class QuartConnection:
    """:class:`meshroom.core.Connection` over Quart's ``websocket`` object.

    The Socket.IO endpoint's WebSocket (:mod:`meshroom.http.socketio`) is a Quart route
    and uses this; the signaling route no longer goes through Quart.
    """

    def __init__(self, ws: Any, *, max_message_bytes: int) -> None:
        self._ws = ws
        self._max = max_message_bytes
        self._gone = False
        self._receive_scope: trio.CancelScope | None = None

    @property
    def remote(self) -> str:
        return str(self._ws.remote_addr or "?")

    async def receive(self) -> str | bytes:
        if not self._gone:
            with trio.CancelScope() as scope:
                self._receive_scope = scope
                message: str | bytes = await self._ws.receive()
                # The limit is in bytes, as on the standalone listener; a str can only be
                # over it if its character count exceeds a quarter of the limit.
                if len(message) * 4 > self._max:
                    size = len(message.encode() if isinstance(message, str) else message)
                    if size > self._max:
                        raise MessageTooLarge(size, self._max)
                return message
        raise ConnectionClosed(1006, "client disconnected")

    async def send(self, frames: Sequence[bytes]) -> None:
        if self._gone:
            raise ConnectionClosed(1006)
        try:
            for frame in frames:
                await self._ws.send(frame.decode())  # str: Quart sends str as a text frame
        except Exception as exc:  # Quart raises several kinds once the client is gone
            raise ConnectionClosed(1006) from exc

    async def close(self, code: int, reason: str = "") -> None:
        if self._gone:
            return
        self._gone = True
        with contextlib.suppress(Exception):  # the client may already be gone
            await self._ws.close(code, reason)

    def disconnected(self) -> None:
        """Quart cancelled the route: the client is gone. Wake whoever waits to read."""
        self._gone = True
        if self._receive_scope is not None:
            self._receive_scope.cancel()
