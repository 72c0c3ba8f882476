"""The auth deadline may expire while the heartbeat is sending a ping (issue 11 #7).

With the default settings the heartbeat interval equals the auth timeout, so the
quiet-connection ping is due at the same moment as the refusal. A ping cancelled
before any byte of it was written used to mark the connection broken, and the
client got a bare 1006 instead of ``AUTH_TIMEOUT`` and close 4002.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
import trio
import trio.testing
from _rawws import raw_client
from _signaling import server_settings, start_server
from wsproto.connection import Connection, ConnectionType
from wsproto.events import CloseConnection, Ping, TextMessage

from meshroom.core.connection import ConnectionClosed
from meshroom.transports.websocket import Heartbeat, WebSocketConnection

INTERVAL = 10.0
ERROR = b'{"event":"error","data":{"code":"AUTH_TIMEOUT"}}'


async def _refuse_after(conn: WebSocketConnection, auth_timeout: float) -> None:
    """What the hub does with a connection that sends nothing (core/hub.py _await_auth)."""
    with trio.move_on_after(auth_timeout):
        await conn.receive()
        raise AssertionError("nothing was sent, nothing can be received")
    # (The hub suppresses ConnectionClosed too; the assertions see what got through.)
    with contextlib.suppress(ConnectionClosed):
        await conn.send([ERROR])
    await conn.close(4002, "no auth request")


async def _client_reads(sock: trio.socket.SocketType) -> list[object]:
    """Every frame the server sends until it closes; answers the close like a browser."""
    client = Connection(ConnectionType.CLIENT)
    events: list[object] = []
    while True:
        data = await sock.recv(65536)
        if not data:
            return events
        client.receive_data(data)
        for event in client.events():
            events.append(event)
            if isinstance(event, CloseConnection):
                await sock.send(client.send(event.response()))
                return events


@pytest.mark.parametrize("late_by", [0.0, 1e-6, 0.001, 0.5])
async def test_the_auth_timeout_wins_over_a_ping_due_at_the_same_moment(
    mock_clock: trio.testing.MockClock, late_by: float
) -> None:
    server_sock, client_sock = trio.socket.socketpair()
    conn = WebSocketConnection(
        trio.SocketStream(server_sock), remote="test", heartbeat=Heartbeat(INTERVAL, INTERVAL)
    )
    start = trio.current_time()
    received: list[object] = []

    async def client() -> None:
        received.extend(await _client_reads(client_sock))

    async def time_passes_while_the_ping_is_on_its_way() -> None:
        # Wakes with the ping deadline, in the same batch as the reader: whatever order
        # they run in, the auth deadline has passed when the ping's write is scheduled
        # (what a busy server does to a deadline a few microseconds after the ping's).
        await trio.sleep_until(start + INTERVAL)
        mock_clock.jump(1.0)

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client)
            nursery.start_soon(time_passes_while_the_ping_is_on_its_way)
            nursery.start_soon(_refuse_after, conn, INTERVAL + late_by)
            await trio.testing.wait_all_tasks_blocked()
            mock_clock.jump(INTERVAL)
    closes = [e for e in received if isinstance(e, CloseConnection)]
    texts = [e.data for e in received if isinstance(e, TextMessage)]
    assert texts == [ERROR.decode()]
    assert [c.code for c in closes] == [4002]
    assert all(isinstance(e, Ping | TextMessage | CloseConnection) for e in received)


async def test_every_silent_connection_gets_auth_timeout_when_the_heartbeat_is_due_with_it(
    tmp_path: Path,
) -> None:
    """The issue's setting on the real listener: heartbeat interval equal to the auth timeout."""
    timeout = 0.5
    settings = server_settings(tmp_path, auth_timeout=timeout, heartbeat_interval=timeout)
    outcomes: list[tuple[int | None, list[str]]] = []
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            server = await start_server(nursery, settings)

            async def silent() -> None:
                async with raw_client(server.url) as client:
                    frames = await client.frames_until_closed()
                    outcomes.append((client.close_code, [f["data"]["code"] for f in frames]))

            async with trio.open_nursery() as clients:
                for _ in range(200):
                    clients.start_soon(silent)
            server.server.request_shutdown()
    assert len(outcomes) == 200
    assert {(code, tuple(errors)) for code, errors in outcomes} == {(4002, ("AUTH_TIMEOUT",))}
