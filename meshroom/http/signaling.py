"""The signaling WebSocket as a Quart route, over the same hub as the standalone listener."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import trio
from quart import Blueprint, current_app, websocket

from ..core.connection import ConnectionClosed, MessageTooLarge
from ..transports.websocket import TOKEN_QUERY_PARAMETER

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
                if len(message) > self._max:
                    raise MessageTooLarge(len(message), self._max)
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


@signaling.websocket("/meetings")
async def meetings() -> None:
    meshroom: Meshroom = current_app.extensions["meshroom"]
    conn = QuartConnection(
        websocket._get_current_object(),  # type: ignore[attr-defined]  # used outside this context
        max_message_bytes=meshroom.settings.max_message_bytes,
    )
    await websocket.accept()
    try:
        await meshroom.hub.serve(conn, token=websocket.args.get(TOKEN_QUERY_PARAMETER))
    finally:
        conn.disconnected()
