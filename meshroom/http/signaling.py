"""The signaling WebSocket as a Quart route, over the same hub as the standalone listener."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import trio
from quart import Blueprint, Response, current_app, websocket

from ..core.connection import ConnectionClosed, MessageTooLarge
from ..core.limits import OriginPolicy
from ..transports.websocket import (
    LAST_SEQ_QUERY_PARAMETER,
    RESUME_QUERY_PARAMETER,
    TOKEN_QUERY_PARAMETER,
    parse_last_seq,
)

if TYPE_CHECKING:
    from .extension import Meshroom

signaling = Blueprint("meshroom_signaling", __name__)


class QuartConnection:
    """:class:`meshroom.core.Connection` over Quart's ``websocket`` object."""

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


@functools.lru_cache(maxsize=8)
def _origin_policy(allowed: str) -> OriginPolicy:
    return OriginPolicy(part for part in allowed.split(","))


@signaling.websocket("/meetings")
async def meetings() -> Response | None:
    meshroom: Meshroom = current_app.extensions["meshroom"]
    hub = meshroom.hub
    # Refusals before the upgrade are plain HTTP answers (hypercorn's WebSocket
    # denial response), as on the standalone listener.
    origins = _origin_policy(meshroom.settings.allowed_origins)
    if not origins.allows(websocket.headers.get("Origin")):
        return Response("this Origin may not open a signaling WebSocket\n", 403)
    if not hub.slots.acquire():
        return Response("too many connections; try again shortly\n", 503, {"Retry-After": "5"})
    try:
        conn = QuartConnection(
            websocket._get_current_object(),  # type: ignore[attr-defined]  # used outside this context
            max_message_bytes=meshroom.settings.max_message_bytes,
        )
        await websocket.accept()
        try:
            await meshroom.runtime.serve(
                conn,
                token=websocket.args.get(TOKEN_QUERY_PARAMETER),
                resume_token=websocket.args.get(RESUME_QUERY_PARAMETER),
                last_seq=parse_last_seq(websocket.args.get(LAST_SEQ_QUERY_PARAMETER)),
            )
        finally:
            conn.disconnected()
    finally:
        hub.slots.release()
    return None
