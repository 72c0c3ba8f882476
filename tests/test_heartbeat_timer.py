"""The listener's one heartbeat timer (``Heartbeats``) keeps the heartbeat's guarantees.

The standalone listener no longer gives each connection's reader a deadline: one
timer pings every connection quiet for ``interval`` and wakes the reader of one
still silent ``timeout`` later. These tests drive that timer by hand, one sweep at
a time, on a virtual clock that moves only when told (``MockClock`` without
autojump), over real sockets (the timer writes pings to the socket itself), so every
step is deterministic. The loopback tests in test_liveness.py cover the listener
running the timer on its own.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing
from wsproto.connection import Connection, ConnectionType
from wsproto.events import CloseConnection, Ping, TextMessage

from meshroom.core import ConnectionTimedOut
from meshroom.transports.websocket import Heartbeat, Heartbeats, WebSocketConnection

HEARTBEAT = Heartbeat(interval=10, timeout=5)


class Client:
    """A WebSocket client on the other end of a socket pair, driven step by step."""

    def __init__(self, sock: trio.socket.SocketType) -> None:
        self.sock = sock
        self.ws = Connection(ConnectionType.CLIENT)
        self.events: list[object] = []

    def pending(self) -> list[object]:
        """Whatever the server has written so far, as events (without waiting)."""
        while True:
            try:
                data = self.sock._sock.recv(65536)  # non-blocking: trio made it so
            except BlockingIOError:
                break
            if not data:
                break
            self.ws.receive_data(data)
        fresh = list(self.ws.events())
        self.events.extend(fresh)
        return fresh

    async def send(self, event: object) -> None:
        await self.sock.send(self.ws.send(event))


async def _connection(
    clock: trio.testing.MockClock,
) -> tuple[WebSocketConnection, Client, Heartbeats]:
    server_sock, client_sock = trio.socket.socketpair()
    conn = WebSocketConnection(trio.SocketStream(server_sock), remote="test")
    heartbeats = Heartbeats(HEARTBEAT, tick=1)
    assert conn.join_heartbeats(heartbeats)
    assert len(heartbeats) == 1
    return conn, Client(client_sock), heartbeats


def _sweep_at(clock: trio.testing.MockClock, heartbeats: Heartbeats, at: float) -> None:
    clock.jump(at - trio.current_time())
    heartbeats.sweep(trio.current_time())


async def test_a_silent_client_is_pinged_then_timed_out_and_told_why(
    mock_clock: trio.testing.MockClock,
) -> None:
    conn, client, heartbeats = await _connection(mock_clock)
    start = trio.current_time()
    outcome: list[BaseException] = []

    async def read() -> None:
        try:
            await conn.receive()
        except ConnectionTimedOut as exc:
            outcome.append(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read)
        await trio.testing.wait_all_tasks_blocked()
        _sweep_at(mock_clock, heartbeats, start + 9.99)
        assert client.pending() == []  # not quiet for a whole interval yet
        _sweep_at(mock_clock, heartbeats, start + 10)
        assert [type(e) for e in client.pending()] == [Ping]
        _sweep_at(mock_clock, heartbeats, start + 14.99)
        await trio.testing.wait_all_tasks_blocked()
        assert outcome == []  # still within the timeout
        assert client.pending() == []  # one ping per silence, not one per sweep
        _sweep_at(mock_clock, heartbeats, start + 15)
    assert [type(e) for e in outcome] == [ConnectionTimedOut]
    assert len(heartbeats) == 0  # the timer forgets it
    # The room then closes it with the exit's code, without waiting for a dead client.
    before = trio.current_time()
    await conn.close(4010, "heartbeat timeout")
    assert trio.current_time() == before
    closes = [e for e in client.pending() if isinstance(e, CloseConnection)]
    assert [c.code for c in closes] == [4010]
    with pytest.raises(ConnectionTimedOut):
        await conn.receive()  # and it stays timed out


async def test_a_client_answering_pings_is_never_timed_out(
    mock_clock: trio.testing.MockClock,
) -> None:
    conn, client, heartbeats = await _connection(mock_clock)
    outcome: list[BaseException] = []

    async def read() -> None:
        try:
            await conn.receive()
        except ConnectionTimedOut as exc:
            outcome.append(exc)

    pings = 0
    async with trio.open_nursery() as nursery:
        nursery.start_soon(read)
        await trio.testing.wait_all_tasks_blocked()
        for _ in range(100):  # 1,000 quiet seconds, a sweep every second
            for _ in range(10):
                _sweep_at(mock_clock, heartbeats, trio.current_time() + 1)
                for event in client.pending():
                    assert isinstance(event, Ping)
                    pings += 1
                    await client.send(event.response())  # what every client does
                await trio.testing.wait_all_tasks_blocked()  # the reader takes the pong
        assert outcome == []
        nursery.cancel_scope.cancel()
    # Pinged once per quiet interval (each answer came at once, and restarted the count).
    assert pings == 100
    assert len(heartbeats) == 1


async def test_any_traffic_counts_as_alive_and_saves_the_pings(
    mock_clock: trio.testing.MockClock,
) -> None:
    conn, client, heartbeats = await _connection(mock_clock)
    received = []
    async with trio.open_nursery() as nursery:

        async def read() -> None:
            while True:
                received.append(await conn.receive())

        nursery.start_soon(read)
        for n in range(50):  # 400 s, a frame every 8 s: never quiet for 10
            for _ in range(8):
                _sweep_at(mock_clock, heartbeats, trio.current_time() + 1)
            await client.send(TextMessage(f'{{"event":"ping","id":{n}}}'))
            await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    assert len(received) == 50
    assert client.pending() == []  # never pinged


async def test_a_writer_stuck_on_a_client_that_reads_nothing_is_timed_out_too(
    mock_clock: trio.testing.MockClock,
) -> None:
    # The client reads nothing: the socket buffer fills, and the writer waits on it. The
    # ping cannot go out then (the writer holds the stream); the deadline still runs, and
    # both the reader and the stuck writer find out.
    conn, _client, heartbeats = await _connection(mock_clock)
    start = trio.current_time()
    failures: list[BaseException] = []

    async def read() -> None:
        try:
            await conn.receive()
        except ConnectionTimedOut as exc:
            failures.append(exc)

    async def write() -> None:
        try:
            while True:
                await conn.send([b'{"event":"filler","data":"' + b"x" * 60000 + b'"}'])
        except ConnectionTimedOut as exc:
            failures.append(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read)
        nursery.start_soon(write)
        await trio.testing.wait_all_tasks_blocked()
        _sweep_at(mock_clock, heartbeats, start + 10)
        _sweep_at(mock_clock, heartbeats, start + 15)
    assert [type(e) for e in failures] == [ConnectionTimedOut, ConnectionTimedOut]
    assert conn.timed_out


async def test_a_connection_is_judged_only_while_its_reader_waits(
    mock_clock: trio.testing.MockClock,
) -> None:
    # A request the server is busy with never counts against the client: no reader, no
    # ping and no timeout, however long; once it waits again, the count resumes.
    conn, client, heartbeats = await _connection(mock_clock)
    start = trio.current_time()
    _sweep_at(mock_clock, heartbeats, start + 100)
    assert client.pending() == []
    assert not conn.timed_out
    outcome: list[BaseException] = []

    async def read() -> None:
        try:
            await conn.receive()
        except ConnectionTimedOut as exc:
            outcome.append(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read)
        await trio.testing.wait_all_tasks_blocked()
        _sweep_at(mock_clock, heartbeats, start + 101)  # quiet for long: pinged at once
        assert [type(e) for e in client.pending()] == [Ping]
        _sweep_at(mock_clock, heartbeats, start + 105.5)
        await trio.testing.wait_all_tasks_blocked()
        assert outcome == []
        _sweep_at(mock_clock, heartbeats, start + 106)
    assert [type(e) for e in outcome] == [ConnectionTimedOut]
