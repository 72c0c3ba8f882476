"""The endpoint's own settings, socketio_max_sessions and socketio_resume_memory, take
effect on every place that serves it: the standalone listener (``meshroom serve``'s
signaling port) and the Quart app."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import httpx
import pytest
from trio_websocket import ConnectionRejected, open_websocket_url

from meshroom import Role
from meshroom.config import Settings
from meshroom.core.connection import Connection
from meshroom.transports.socketio import endpoint_for

from .harness import TRANSPORT_ENDED, driver, socketio_server
from .test_quart import quart_app

BASE = "/socket.io/"
HANDSHAKE = {"EIO": "4", "transport": "polling"}


@asynccontextmanager
async def _base_url(kind: str, tmp_path: Path, **overrides: object) -> AsyncIterator[str]:
    if kind == "quart":
        async with quart_app(tmp_path, **overrides) as (base, _):
            yield base
    else:
        async with socketio_server(tmp_path, **overrides) as sio:
            # "serve": the Server's own signaling port, as `meshroom serve` runs it.
            yield sio.url if kind == "listener" else f"http://127.0.0.1:{sio.native.server.port}"


@pytest.mark.parametrize("kind", ["serve", "listener", "quart"])
async def test_sessions_past_socketio_max_sessions_get_503(kind: str, tmp_path: Path) -> None:
    async with (
        _base_url(kind, tmp_path, socketio_max_sessions=2) as base,
        httpx.AsyncClient(base_url=base) as http,
    ):
        for _ in range(2):
            reply = await http.get(BASE, params=HANDSHAKE)
            assert reply.status_code == 200 and reply.text.startswith("0"), reply.text
            assert json.loads(reply.text[1:])["sid"]
        # The third, over polling or a direct WebSocket: refused until one ends.
        reply = await http.get(BASE, params=HANDSHAKE)
        assert reply.status_code == 503
        assert reply.headers["Retry-After"] == "5"
        assert reply.text == "too many sessions; try again shortly\n"
        ws_url = base.replace("http://", "ws://", 1) + f"{BASE}?EIO=4&transport=websocket"
        with pytest.raises(ConnectionRejected) as refused:
            async with open_websocket_url(ws_url):
                pass
        assert refused.value.status_code == 503
        headers = {k.decode().lower(): v.decode() for k, v in refused.value.headers or []}
        assert headers["retry-after"] == "5"


async def _no_serve(conn: Connection, **kwargs: object) -> None:
    raise AssertionError("not called")


def test_the_endpoint_is_built_from_the_settings() -> None:
    settings = Settings.from_env({}, socketio_max_sessions="7", socketio_resume_memory="0.5")
    endpoint = endpoint_for(settings, _no_serve)
    assert (endpoint.max_sessions, endpoint.resume_memory_seconds) == (7, 0.5)
    default = endpoint_for(Settings.from_env({}), _no_serve)
    assert (default.max_sessions, default.resume_memory_seconds) == (10000, 120.0)


async def test_socketio_resume_memory_zero_makes_a_reconnect_a_fresh_join(
    tmp_path: Path,
) -> None:
    """Without the memory, socket.io-client's reconnect after a drop joins anew (it
    replaces the place kept for resume_grace) instead of resuming it."""
    async with (
        socketio_server(tmp_path, resume_grace=30.0, socketio_resume_memory=0) as sio,
        AsyncExitStack() as stack,
    ):
        meeting = await sio.native.meeting(host="alice")
        bob = await stack.enter_async_context(driver("node"))
        await bob.connect(
            sio.url,
            sio.native.token(meeting, "bob", Role.PARTICIPANT),
            transports=["websocket"],
            reconnectionDelay=300,
        )
        await bob.expect("connect")
        joined = await bob.event("room:joined")
        await bob.send("drop")
        assert (await bob.expect("disconnect"))["reason"] in TRANSPORT_ENDED | {"forced close"}
        await bob.expect("reconnect_attempt")
        await bob.expect("connect")
        again = await bob.event("room:joined")
        assert again["self"]["empId"] == "bob"
        assert again["resumeToken"] != joined["resumeToken"]
        assert [e for e in bob.history if e.get("event") == "room:resumed"] == []
