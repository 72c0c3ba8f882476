"""Heartbeats: a peer that stops answering is found out within the timeout and leaves (timeout).

The heartbeat logic is tested on virtual time (MockClock) over in-memory streams;
then over loopback, with small real timeouts, on both listeners.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing
from _rawws import RawClient, handshake, raw_client
from _servers import server_settings, start_server
from _signaling import ping
from wsproto.events import CloseConnection, Ping

from meshroom import Role
from meshroom.client import connect
from meshroom.core import ConnectionTimedOut
from meshroom.transports.websocket import Heartbeat, WebSocketConnection, accept_websocket

DEADLINE = 15


async def _pair(heartbeat: Heartbeat) -> tuple[WebSocketConnection, RawClient]:
    """A server-side WebSocketConnection and a raw client, over an in-memory stream pair."""
    server_stream, client_stream = trio.testing.memory_stream_pair()
    accepted = None

    async def accept() -> None:
        nonlocal accepted
        accepted = await accept_websocket(
            server_stream, path="/meetings", remote="test", heartbeat=heartbeat
        )

    async with trio.open_nursery() as nursery:
        nursery.start_soon(accept)
        client = await handshake(client_stream, "ws://test:1/meetings")
    assert accepted is not None
    return accepted[0], client


async def _answer_pings(client: RawClient, answered: list[float]) -> None:
    """What every real WebSocket client does: answer each ping with a pong."""
    while True:
        data = await client.stream.receive_some(65536)
        if not data:
            return
        client.ws.receive_data(data)
        for event in client.ws.events():
            if isinstance(event, Ping):
                answered.append(trio.current_time())
                await client.stream.send_all(client.ws.send(event.response()))


async def test_silent_client_times_out_interval_plus_timeout_after_its_last_word(autojump_clock):
    conn, _client = await _pair(Heartbeat(interval=10, timeout=5))
    start = trio.current_time()
    with pytest.raises(ConnectionTimedOut):
        await conn.receive()
    assert trio.current_time() - start == pytest.approx(15)
    with pytest.raises(ConnectionTimedOut):
        await conn.receive()  # and stays timed out


async def test_timed_out_connection_gets_the_close_code_without_waiting_for_an_answer(
    autojump_clock,
):
    conn, client = await _pair(Heartbeat(interval=1, timeout=1))
    with pytest.raises(ConnectionTimedOut):
        await conn.receive()
    start = trio.current_time()
    await conn.close(4010, "heartbeat timeout")
    assert trio.current_time() - start < 1  # no close handshake with a dead client
    events = []
    while (event := await client.next_event()) is not None:
        events.append(event)
    assert client.pings == 1
    assert [type(e) for e in events] == [CloseConnection]
    assert client.close_code == 4010


async def test_client_answering_pings_never_times_out(autojump_clock):
    conn, client = await _pair(Heartbeat(interval=10, timeout=5))
    answered: list[float] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_answer_pings, client, answered)
        with trio.move_on_after(1000) as waited:
            await conn.receive()
        nursery.cancel_scope.cancel()
    assert waited.cancelled_caught  # still alive after 1000 quiet seconds
    # Pinged once per quiet interval, no more.
    assert len(answered) == pytest.approx(1000 / 10, abs=1)


async def test_any_traffic_counts_as_alive_and_saves_the_pings(autojump_clock):
    conn, client = await _pair(Heartbeat(interval=10, timeout=5))
    received = []

    async def chatter() -> None:
        for n in range(50):
            await trio.sleep(8)
            await client.send_text(f'{{"event":"ping","id":{n}}}')

    async with trio.open_nursery() as nursery:
        nursery.start_soon(chatter)
        for _ in range(50):
            received.append(await conn.receive())
    assert len(received) == 50  # 400 s, never quiet for 10: never pinged, never dropped
    assert client.pings == 0


async def test_a_ping_that_cannot_even_be_sent_counts_against_the_timeout(autojump_clock):
    # A client that reads nothing fills the socket buffer; the ping then cannot go out.
    server_stream, client_stream = trio.testing.lockstep_stream_pair()
    accepted = None

    async def accept() -> None:
        nonlocal accepted
        accepted = await accept_websocket(
            server_stream, path="/meetings", remote="test", heartbeat=Heartbeat(10, 5)
        )

    async with trio.open_nursery() as nursery:
        nursery.start_soon(accept)
        await handshake(client_stream, "ws://test:1/meetings")
    assert accepted is not None
    conn = accepted[0]
    # From here on the client reads nothing: every send blocks (a lockstep stream).
    start = trio.current_time()
    with pytest.raises(ConnectionTimedOut):
        await conn.receive()
    assert trio.current_time() - start == pytest.approx(15)


# Over loopback


async def test_dead_peer_leaves_with_reason_timeout_and_its_row_says_so(tmp_path):
    settings = server_settings(tmp_path, heartbeat_interval=0.2, heartbeat_timeout=0.3)
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            server = await start_server(nursery, settings)
            meeting = await server.meeting()
            async with connect(server.url, server.token(meeting, "alice", Role.HOST)) as alice:
                async with raw_client(server.url) as dead:
                    joined = await dead.authenticate(server.token(meeting, "dead"))
                    assert joined["event"] == "room:joined"
                    start = trio.current_time()
                    left = await alice.wait_for("peer:left", empId="dead")
                    detected_after = trio.current_time() - start
                    assert left.data["reason"] == "timeout"
                    # The half-dead client was pinged, then told why it was dropped.
                    frames = await dead.frames_until_closed()
                    assert dead.pings >= 1
                    assert dead.close_code == 4010
                    assert all(f["event"] != "error" for f in frames)
                # Within interval + timeout (plus scheduling slack) of its last word.
                assert detected_after < 0.5 + 0.5
                # Alice, just as quiet but answering pings, is still in (and so is her room).
                await ping(alice)
                assert [p["empId"] for p in server.hub.live_peers(meeting.id)] == ["alice"]
            rows = {r.emp_id: r for r in await server.store.attendance_for_meeting(meeting.id)}
            assert rows["dead"].leave_reason == "timeout"
            server.server.request_shutdown()


async def test_quart_route_uses_hypercorn_pings_and_read_timeout(tmp_path):
    # Hypercorn pings every heartbeat_interval and drops a connection silent for
    # read_timeout = ceil(interval + timeout) = 1 s here. The app only sees the drop.
    settings = server_settings(tmp_path, http_port=0, heartbeat_interval=0.2, heartbeat_timeout=0.5)
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            server = await start_server(nursery, settings)
            meeting = await server.meeting()
            quart_url = server.http_url.replace("http://", "ws://", 1) + "/meetings"
            async with connect(server.url, server.token(meeting, "alice", Role.HOST)) as alice:
                async with raw_client(quart_url) as dead:
                    joined = await dead.authenticate(server.token(meeting, "dead"))
                    assert joined["event"] == "room:joined"
                    start = trio.current_time()
                    left = await alice.wait_for("peer:left", empId="dead")
                    assert left.data["reason"] == "disconnected"
                    assert 0.9 < trio.current_time() - start < 3
                    await dead.frames_until_closed()
                    assert dead.pings >= 2
                # A live client on the Quart route stays, answering hypercorn's pings.
                async with connect(quart_url, server.token(meeting, "bob")) as bob:
                    await trio.sleep(1.5)  # longer than read_timeout, on purpose
                    await ping(bob)
            server.server.request_shutdown()


async def test_heartbeats_can_be_turned_off(tmp_path):
    settings = server_settings(tmp_path, heartbeat_interval=0)
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            server = await start_server(nursery, settings)
            meeting = await server.meeting()
            async with raw_client(server.url) as quiet:
                joined = await quiet.authenticate(server.token(meeting, "quiet"))
                assert joined["event"] == "room:joined"
                with trio.move_on_after(0.5):
                    event = await quiet.next_event()
                    raise AssertionError(f"unexpected {event}")
                assert quiet.pings == 0
                await quiet.send_json("ping", id=1)
                answer = await quiet.receive_json()
                assert answer["event"] == "ack"
            server.server.request_shutdown()


def test_settings_reject_a_heartbeat_without_a_timeout(tmp_path):
    from meshroom.config import ConfigError

    with pytest.raises(ConfigError, match="heartbeat-timeout"):
        server_settings(tmp_path, heartbeat_interval=5, heartbeat_timeout=0).hub_config()
