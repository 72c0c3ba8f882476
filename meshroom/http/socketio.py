"""The Socket.IO endpoint (``/socket.io/``) as a Quart blueprint, over the app's meshroom hub.

Register it next to :class:`~meshroom.http.extension.Meshroom` (which owns the hub)::

    app.register_blueprint(socketio_blueprint, url_prefix=meshroom.url_prefix or None)

Polling requests are served in Quart's request tasks, WebSockets by the ASGI
middleware in front of the app (:mod:`meshroom.http.signaling`); the Engine.IO
sessions live in an endpoint (:class:`~meshroom.transports.socketio.SocketIOEndpoint`)
that runs in the app's nursery while the app serves, started by this blueprint's
``before_app_serving`` hook. The hub is looked up when a namespace connects, so the
blueprint does not depend on the order in which serving hooks run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from quart import Blueprint, Response, current_app, request

from ..core.connection import Connection
from ..transports.socketio import (
    SOCKETIO_PATH,
    BodyTooLarge,
    HttpResponse,
    SocketIOEndpoint,
    endpoint_for,
)
from .signaling import SOCKETIO_ENDPOINT_KEY

if TYPE_CHECKING:
    from .extension import Meshroom

ENDPOINT_KEY = SOCKETIO_ENDPOINT_KEY

socketio_blueprint = Blueprint("meshroom_socketio", __name__)


def _endpoint() -> SocketIOEndpoint:
    endpoint: SocketIOEndpoint = current_app.extensions[ENDPOINT_KEY]
    return endpoint


@socketio_blueprint.before_app_serving
async def _start_endpoint() -> None:
    app: Any = current_app
    meshroom: Meshroom = app.extensions["meshroom"]

    def serve(
        conn: Connection, *, token: str | None = None, resume_token: str | None = None
    ) -> Any:
        return meshroom.runtime.serve(conn, token=token, resume_token=resume_token)

    endpoint = endpoint_for(meshroom.settings, serve)
    # The app's nursery owns the sessions, as it owns the hub.
    await app.nursery.start(endpoint.run)
    app.extensions[ENDPOINT_KEY] = endpoint


def _answer(answer: HttpResponse) -> Response:
    headers = dict(answer.headers)
    if answer.close:
        headers["Connection"] = "close"
    return Response(
        answer.body, status=answer.status, content_type=answer.content_type, headers=headers
    )


@socketio_blueprint.route(SOCKETIO_PATH, methods=["GET", "POST", "OPTIONS"])
async def polling() -> Response:
    async def read_body(limit: int) -> bytes:
        data = bytearray()
        async for chunk in request.body:
            data += chunk
            if len(data) > limit:
                raise BodyTooLarge
        return bytes(data)

    answer = await _endpoint().handle_polling(
        request.method,
        request.args.to_dict(flat=False),
        {k.lower(): v for k, v in request.headers.items()},
        read_body,
        remote=str(request.remote_addr or "?"),
    )
    return _answer(answer)
