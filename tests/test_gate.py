"""The handshake gate (meshroom/transports/gate.py) on its own: what it hands to trio,
what it settles alone, and how it stops."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import pytest
import trio
import trio.testing

from meshroom.core.limits import ConnectionSlots
from meshroom.transports.gate import HandshakeGate

HEAD = b"GET /meetings HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n"


@dataclass
class Gate:
    gate: HandshakeGate
    port: int
    slots: ConnectionSlots
    scope: trio.CancelScope
    delivered: list[tuple[bytes, float]] = field(default_factory=list)
    sockets: list[socket.socket] = field(default_factory=list)
    arrived: trio.Event = field(default_factory=trio.Event)

    async def next_delivery(self) -> tuple[bytes, float]:
        await self.arrived.wait()
        self.arrived = trio.Event()
        return self.delivered[-1]


@asynccontextmanager
async def running_gate(
    *,
    handshake_timeout: float = 10.0,
    head_limit: int = 1024,
    limit: int = 0,
    deliver: Callable[[socket.socket, bytes, float], None] | None = None,
) -> AsyncIterator[Gate]:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    slots = ConnectionSlots(limit)
    holder: list[Gate] = []

    def record(sock: socket.socket, data: bytes, waited: float) -> None:
        gate = holder[0]
        gate.sockets.append(sock)
        gate.delivered.append((data, waited))
        gate.arrived.set()

    gate = HandshakeGate(
        listeners, deliver or record, timeout=handshake_timeout, head_limit=head_limit, slots=slots
    )
    async with trio.open_nursery() as nursery:
        scope = trio.CancelScope()

        async def run(task_status: trio.TaskStatus[None]) -> None:
            with scope:
                await gate.run(task_status=task_status)

        await nursery.start(run)
        port = listeners[0].socket.getsockname()[1]
        running = Gate(gate, port, slots, scope)
        holder.append(running)
        try:
            yield running
        finally:
            scope.cancel()
    for listener in listeners:
        await listener.aclose()
    for sock in running.sockets:
        sock.close()


async def _client(port: int) -> trio.SocketStream:
    return await trio.open_tcp_stream("127.0.0.1", port)


async def _until(condition: Callable[[], bool]) -> None:
    while not condition():  # noqa: ASYNC110 - the gate's thread announces nothing to trio
        await trio.sleep(0.01)


async def _eof(stream: trio.SocketStream) -> bytes:
    """Everything the gate sent before closing (it answers nothing itself)."""
    received = b""
    try:
        while chunk := await stream.receive_some(4096):
            received += chunk
    except trio.BrokenResourceError:  # a reset is a close too
        pass
    return received


async def test_a_head_in_one_segment_is_handed_over_with_what_follows_it() -> None:
    async with running_gate() as gate:
        client = await _client(gate.port)
        await client.send_all(HEAD + b"\x81\x05early")  # a frame right behind the head
        data, waited = await gate.next_delivery()
        assert data == HEAD + b"\x81\x05early"
        assert 0 <= waited < 5
        assert gate.slots.handshaking == 0
        await client.aclose()


@pytest.mark.parametrize("ending", [b"\r\n\r\n", b"\n\n", b"\n\r\n"])
async def test_a_dribbled_head_is_handed_over_once_whole(ending: bytes) -> None:
    head = HEAD.removesuffix(b"\r\n\r\n") + ending
    async with running_gate() as gate:
        client = await _client(gate.port)
        for byte in head[:-1]:
            await client.send_all(bytes([byte]))
        await _until(lambda: gate.slots.handshaking == 1)
        # Every byte but the last is in: nothing handed over yet.
        await trio.testing.wait_all_tasks_blocked()
        assert gate.delivered == []
        await client.send_all(head[-1:])
        data, _ = await gate.next_delivery()
        assert data == head
        assert gate.slots.handshaking == 0
        await client.aclose()


async def test_a_head_over_the_limit_is_handed_over_incomplete() -> None:
    async with running_gate(head_limit=100) as gate:
        client = await _client(gate.port)
        await client.send_all(b"GET / HTTP/1.1\r\nX: " + b"a" * 200)
        data, _ = await gate.next_delivery()
        assert len(data) > 100 and b"\r\n\r\n" not in data  # trio answers 431
        await client.aclose()


async def test_a_client_too_slow_is_closed_without_an_answer() -> None:
    async with running_gate(handshake_timeout=0.3) as gate:
        client = await _client(gate.port)
        await client.send_all(b"GET /meetings HTTP/1.1\r\n")
        await _until(lambda: gate.slots.handshaking == 1)
        assert await _eof(client) == b""
        assert gate.slots.handshaking == 0
        assert gate.delivered == []


async def test_a_client_gone_before_its_head_is_forgotten() -> None:
    async with running_gate() as gate:
        client = await _client(gate.port)
        await client.send_all(b"GET /meet")
        await _until(lambda: gate.slots.handshaking == 1)
        await client.aclose()
        await _until(lambda: gate.slots.handshaking == 0)
        assert gate.delivered == []


async def test_with_every_slot_taken_connections_go_to_trio_at_once() -> None:
    async with running_gate(limit=2) as gate:
        first, second = await _client(gate.port), await _client(gate.port)
        await _until(lambda: gate.slots.handshaking == 2)
        third = await _client(gate.port)
        data, _ = await gate.next_delivery()  # unread: the connection limit answers it
        assert data == b""
        assert gate.slots.handshaking == 2
        for client in (first, second, third):
            await client.aclose()


async def test_a_failing_delivery_closes_that_connection_and_the_gate_goes_on() -> None:
    calls = []

    def deliver(sock: socket.socket, data: bytes, waited: float) -> None:
        calls.append(data)
        if len(calls) == 1:
            raise RuntimeError("the handlers' nursery is closed")
        sock.close()

    async with running_gate(deliver=deliver) as gate:
        doomed = await _client(gate.port)
        await doomed.send_all(HEAD)
        assert await _eof(doomed) == b""
        fine = await _client(gate.port)
        await fine.send_all(HEAD)
        await _until(lambda: len(calls) == 2)
        await fine.aclose()


async def test_cancelling_the_gate_closes_heads_in_progress_and_stops_its_thread() -> None:
    async with running_gate() as gate:
        client = await _client(gate.port)
        await client.send_all(b"GET /meetings HTTP/1.1\r\n")
        await _until(lambda: gate.slots.handshaking == 1)
        gate.scope.cancel()
        assert await _eof(client) == b""
        await _until(lambda: gate.slots.handshaking == 0)
