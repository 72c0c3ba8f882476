"""The WebSockets of an app with meshroom in it (``/meetings`` and ``/socket.io/`` under
the prefix).

They are served by :class:`SignalingMiddleware`, an ASGI middleware that ``Meshroom(app)``
puts in front of the app (``app.asgi_app``): WebSocket requests for the signaling path
go straight to the hub (:func:`meshroom.transports.asgi.serve_asgi_websocket`), those
for the Socket.IO path to its endpoint
(:func:`meshroom.transports.asgi.serve_asgi_socketio`), everything else (HTTP, Socket.IO
long-polling, the app's own WebSocket routes) to Quart, unchanged. Through
Quart each message cost a second queue, a task of Quart's, a request context and two
signals, none of which the hub needs.

Served by hypercorn, the connection goes one step further and runs on hypercorn's own
stream with meshroom's framing (:mod:`meshroom.transports.hypercorn_ws`): hypercorn's
per-message path (wsproto, a queue, a socket write per message) was most of the cost,
far more than Quart's. Under any other ASGI server it is plain ASGI.

So Quart's hooks (``before_websocket``, ``after_websocket``) and signals
(``websocket_received``, ``websocket_sent``) do not run for these two WebSockets.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Final

from ..core.limits import OriginPolicy
from ..transports.asgi import (
    ASGIMessage,
    ASGIReceive,
    ASGISend,
    route_path,
    serve_asgi_socketio,
    serve_asgi_websocket,
)
from ..transports.hypercorn_ws import connection_for
from ..transports.socketio import SOCKETIO_PATH

if TYPE_CHECKING:
    from .extension import Meshroom

SIGNALING_PATH: Final = "/meetings"
# Where the Socket.IO blueprint keeps its endpoint in the app's extensions.
SOCKETIO_ENDPOINT_KEY: Final = "meshroom_socketio"

# (Quart types its asgi_app with hypercorn's TypedDicts; any ASGI app will do.)
ASGIApp = Callable[..., Awaitable[None]]


class SignalingMiddleware:
    """ASGI middleware: meshroom's WebSockets to the hub, everything else to ``app``."""

    def __init__(self, app: ASGIApp, meshroom: Meshroom, extensions: Mapping[str, Any]) -> None:
        self.app = app
        self.meshroom = meshroom
        self.path = f"{meshroom.url_prefix}{SIGNALING_PATH}"
        self.socketio_paths = {
            f"{meshroom.url_prefix}{SOCKETIO_PATH}",
            f"{meshroom.url_prefix}{SOCKETIO_PATH.rstrip('/')}",
        }
        # The app's extensions, where the Socket.IO endpoint is once the app serves.
        self.extensions = extensions

    async def __call__(self, scope: ASGIMessage, receive: ASGIReceive, send: ASGISend) -> None:
        if scope["type"] != "websocket":
            await self.app(scope, receive, send)
            return
        path = route_path(scope)
        meshroom = self.meshroom
        if path == self.path:
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
        elif path in self.socketio_paths and SOCKETIO_ENDPOINT_KEY in self.extensions:
            await serve_asgi_socketio(
                scope,
                receive,
                send,
                endpoint=self.extensions[SOCKETIO_ENDPOINT_KEY],
                slots=meshroom.hub.slots,
                connection=connection_for,
            )
        else:
            await self.app(scope, receive, send)


@functools.lru_cache(maxsize=8)
def _origin_policy(allowed: str) -> OriginPolicy:
    return OriginPolicy(part for part in allowed.split(","))
