"""The Socket.IO endpoint on a Quart (quart-trio) app: an embedding app gets it too."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from _servers import server_settings
from hypercorn.config import Config
from hypercorn.trio import serve
from quart_trio import QuartTrio

from meshroom import Role, mint_token
from meshroom.client import connect
from meshroom.http import signaling
from meshroom.http.extension import Meshroom
from meshroom.http.socketio import socketio_blueprint
from meshroom.store import MeetingStatus
from meshroom.transports.hypercorn_ws import HypercornWebSocketConnection

from .conftest import CLIENTS
from .harness import SERVER_DISCONNECT, driver


@asynccontextmanager
async def quart_app(tmp_path: Path, **overrides: Any) -> AsyncIterator[tuple[str, Meshroom]]:
    """An app that embeds meshroom (which registers the Socket.IO blueprint); its base URL."""
    app = QuartTrio("embedding")
    meshroom = Meshroom(app, settings=server_settings(tmp_path, **overrides))
    assert socketio_blueprint.name in app.blueprints  # Meshroom registers it
    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    stop = trio.Event()
    async with trio.open_nursery() as nursery:

        async def run(task_status: trio.TaskStatus[list[str]]) -> None:
            await serve(app, config, shutdown_trigger=stop.wait, task_status=task_status)

        binds = await nursery.start(run)
        yield binds[0], meshroom
        stop.set()


@pytest.mark.parametrize("client", CLIENTS)
async def test_socketio_on_the_quart_app(
    tmp_path: Path, client: tuple[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    kind, transports = client
    made: list[Any] = []  # the connections of the app's WebSockets, signaling's included

    def recording(*args: Any, **kwargs: Any) -> Any:
        made.append(signaling_connection_for(*args, **kwargs))
        return made[-1]

    signaling_connection_for = signaling.connection_for
    monkeypatch.setattr(signaling, "connection_for", recording)
    async with quart_app(tmp_path) as (base, meshroom), AsyncExitStack() as stack:
        store = meshroom.store
        meeting = await store.create_meeting(title="Embedded", host_emp_id="alice")
        meeting = await store.transition(meeting.id, MeetingStatus.LIVE)

        def token(emp: str, role: Role = Role.PARTICIPANT) -> str:
            return mint_token(
                meshroom.settings.token_keys(),
                meeting_id=meeting.id,
                emp_id=emp,
                display_name=emp.title(),
                role=role,
                ttl=dt.timedelta(hours=1),
            )

        ws_url = base.replace("http://", "ws://", 1) + "/meetings"
        alice = await stack.enter_async_context(connect(ws_url, token("alice", Role.HOST)))
        bob = await stack.enter_async_context(driver(kind))
        joined = await bob.join(base, token("bob"), transports=transports)
        assert [p["empId"] for p in joined["peers"]] == ["alice"]
        if kind == "node" and transports is None:
            # The default: polling first, then the upgrade (test_upgrade.py, many times).
            await bob.expect("upgrade", transport="websocket")
        # Its WebSocket, like the signaling route's, runs on hypercorn's own stream.
        websockets = 2 if transports != ["polling"] else 1
        assert [type(conn) for conn in made] == [HypercornWebSocketConnection] * websockets
        offer = {"type": "offer", "sdp": "v=0 quart"}
        await alice.offer("bob", offer)
        assert await bob.event("signal:offer") == {"fromEmpId": "alice", "offer": offer}
        answer = {"type": "answer", "sdp": "v=0 bob"}
        assert await bob.call("signal:answer", {"targetEmpId": "alice", "answer": answer}) == [{}]
        assert (await alice.wait_for("signal:answer")).data["fromEmpId"] == "bob"
        await alice.kick("bob")
        assert (await bob.expect("disconnect"))["reason"] == SERVER_DISCONNECT[kind]
