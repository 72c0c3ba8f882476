"""``meshroom serve`` with the Socket.IO endpoint on its signaling port, for the bench.

Until :mod:`meshroom.server` routes ``/socket.io/`` on the standalone listener
itself, this wraps the listener's ``serve_websocket`` so it does: the endpoint
(:class:`meshroom.transports.socketio.SocketIOEndpoint`) runs in a nursery around
the accept loop and gets the listener's ``extra_route``. When the server already
passes an ``extra_route``, the wrapper changes nothing.

    python -m bench.socketio_serve serve      # same arguments and environment as meshroom
"""

from __future__ import annotations

import sys
from typing import Any

import trio

import meshroom.server
from meshroom.cli import main
from meshroom.config import Settings
from meshroom.transports.socketio import SOCKETIO_PATH, endpoint_for
from meshroom.transports.websocket import serve_websocket


def _with_socketio(settings: Settings) -> Any:
    async def serve(handler: Any, listeners: Any, **kwargs: Any) -> None:
        if kwargs.get("extra_route") is not None:
            await serve_websocket(handler, listeners, **kwargs)
            return
        hub_serve = handler_hub_serve(handler)
        endpoint = endpoint_for(settings, hub_serve)
        async with trio.open_nursery() as nursery:
            await nursery.start(endpoint.run)
            await serve_websocket(
                handler, listeners, extra_route=(SOCKETIO_PATH, endpoint.serve_stream), **kwargs
            )

    return serve


def handler_hub_serve(handler: Any) -> Any:
    # The listener's handler closes over the hub: find its serve method.
    for cell in handler.__closure__ or ():
        serve = getattr(cell.cell_contents, "serve", None)
        if callable(serve):
            return serve
    raise RuntimeError("cannot find the hub behind the listener's handler")


if __name__ == "__main__":
    meshroom.server.serve_websocket = _with_socketio(Settings.from_env())  # type: ignore[assignment]
    sys.exit(main())
