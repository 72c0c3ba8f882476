"""The upgrade from long-polling to WebSocket, on the Quart app behind hypercorn and on
the standalone listener.

Behind hypercorn it used to fail now and then: the GET pending at the probe was
answered with queued packets (not a noop), the client received them before
``3probe`` (which travels on another connection) and polled again, and that GET
waited for traffic while the client waited for it to come back before pausing
polling and sending ``5``; the probe then timed out and the client stayed on
polling. The scripted test replays that order of events; the socket.io-client test
upgrades many default connections.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from trio_websocket import WebSocketConnection, open_websocket_url

from meshroom import Role, mint_token
from meshroom.store import MeetingStatus

from .harness import socketio_server, upgrade_runs
from .test_quart import quart_app

RUNS = 30
BASE = "/socket.io/"


@asynccontextmanager
async def _server(kind: str, tmp_path: Path) -> AsyncIterator[tuple[str, Any]]:
    """The base URL of a server with the endpoint, and a function minting tokens."""
    if kind == "quart":
        async with quart_app(tmp_path) as (base, meshroom):
            store = meshroom.store
            meeting = await store.create_meeting(title="Upgrades", host_emp_id="host")
            meeting = await store.transition(meeting.id, MeetingStatus.LIVE)

            def token(emp: str) -> str:
                return mint_token(
                    meshroom.settings.token_keys(),
                    meeting_id=meeting.id,
                    emp_id=emp,
                    display_name=emp.title(),
                    role=Role.PARTICIPANT,
                    ttl=dt.timedelta(hours=1),
                )

            yield base, token
    else:
        async with socketio_server(tmp_path) as sio:
            meeting = await sio.native.meeting(host="host")
            yield sio.url, lambda emp: sio.native.token(meeting, emp)


@asynccontextmanager
async def _probed(
    kind: str, tmp_path: Path
) -> AsyncIterator[tuple[httpx.AsyncClient, dict[str, str], WebSocketConnection]]:
    """A polling session whose upgrade has been probed (3probe received), not completed.

    Yields the HTTP client, the query of the session's GETs and POSTs, and the WebSocket.
    """
    async with _server(kind, tmp_path) as (base, _), httpx.AsyncClient(base_url=base) as http:
        reply = await http.get(BASE, params={"EIO": "4", "transport": "polling"})
        assert reply.text.startswith("0"), reply.text
        sid = json.loads(reply.text[1:])["sid"]
        polling = {"EIO": "4", "transport": "polling", "sid": sid}
        ws_url = base.replace("http://", "ws://", 1) + f"{BASE}?EIO=4&transport=websocket&sid={sid}"
        async with open_websocket_url(ws_url) as ws:
            await ws.send_message("2probe")
            assert await ws.get_message() == "3probe"
            yield http, polling, ws


SERVERS = pytest.mark.parametrize("kind", ["quart", "listener"])


@SERVERS
async def test_a_get_after_the_probe_is_answered_at_once(kind: str, tmp_path: Path) -> None:
    async with _probed(kind, tmp_path) as (http, polling, ws):
        # Something queued for the client (the pong of a ping) goes to the next GET...
        assert (await http.post(BASE, params=polling, content=b"2")).text == "ok"
        assert (await http.get(BASE, params=polling)).text == "3"
        # ...which the client took before 3probe reached it, so it polled again: this
        # GET must come back now, or the client never pauses polling to send 5.
        with trio.fail_after(5):
            assert (await http.get(BASE, params=polling)).text == "6"
        await ws.send_message("5")
        # Upgraded: the session answers over the WebSocket now.
        await ws.send_message("2")
        assert await ws.get_message() == "3"
        reply = await http.get(BASE, params=polling)
        assert reply.status_code == 400  # polling is over for this session


@SERVERS
async def test_polling_through_an_upgrade_that_never_completes_is_throttled(
    kind: str, tmp_path: Path
) -> None:
    """A client that probes and then polls without ever sending 5 gets a noop per 100 ms.

    Every GET is answered during the upgrade, so such a client used to get hundreds of
    noops a second until the probe timed out; engine.io spaces them 100 ms apart.
    """
    async with _probed(kind, tmp_path) as (http, polling, ws):
        answers = []
        with trio.move_on_after(1.0):
            while True:
                answers.append((await http.get(BASE, params=polling)).text)
        assert set(answers) == {"6"}
        # The first at once, then one per 100 ms (the bound allows a slow machine).
        assert 2 <= len(answers) <= 12, len(answers)
        # The client can still complete the upgrade.
        await ws.send_message("5")
        await ws.send_message("2")
        assert await ws.get_message() == "3"


@SERVERS
async def test_every_default_connection_upgrades(kind: str, tmp_path: Path) -> None:
    """socket.io-client with its default transports, RUNS times: all end on WebSocket."""
    async with _server(kind, tmp_path) as (base, token):
        results = await upgrade_runs(base, [token(f"emp{i}") for i in range(RUNS)])
    assert len(results) == RUNS
    assert [r for r in results if not r["upgraded"] or r["transport"] != "websocket"] == []
