"""Unmodified Socket.IO clients (npm socket.io-client v4, python-socketio) against meshroom.

Each test runs for every client in ``CLIENTS``: the npm client with its default
transports (polling, then the upgrade to WebSocket) and WebSocket only, and
python-socketio over polling and over WebSocket.
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from typing import Any

import pytest

from meshroom import Role

from .conftest import CLIENTS
from .harness import Driver, SioServer, driver

pytestmark = pytest.mark.parametrize("client", CLIENTS)


async def _clients(stack: AsyncExitStack, kind: str, n: int) -> list[Driver]:
    return [await stack.enter_async_context(driver(kind)) for _ in range(n)]


async def test_join_and_relay_among_three(sio: SioServer, client: tuple[str, Any]) -> None:
    kind, transports = client
    meeting = await sio.native.meeting(host="alice")
    async with AsyncExitStack() as stack:
        alice, bob, carol = await _clients(stack, kind, 3)
        joined = await alice.join(
            sio.url, sio.native.token(meeting, "alice", Role.HOST), transports=transports
        )
        assert joined["self"]["empId"] == "alice" and joined["peers"] == []
        joined = await bob.join(sio.url, sio.native.token(meeting, "bob"), transports=transports)
        assert [p["empId"] for p in joined["peers"]] == ["alice"]
        assert (await alice.event("peer:joined"))["empId"] == "bob"
        joined = await carol.join(
            sio.url, sio.native.token(meeting, "carol"), transports=transports
        )
        assert [p["empId"] for p in joined["peers"]] == ["alice", "bob"]
        assert (await alice.event("peer:joined"))["empId"] == "carol"
        assert (await bob.event("peer:joined"))["empId"] == "carol"

        if kind == "node" and transports is None:
            # The default: polling first, then the upgrade (2probe/3probe, noop, 5).
            for peer in (alice, bob, carol):
                await peer.expect("upgrade", transport="websocket")
        offer = {"type": "offer", "sdp": "v=0 alice"}
        assert await alice.call("signal:offer", {"targetEmpId": "bob", "offer": offer}) == [{}]
        assert await bob.event("signal:offer") == {"fromEmpId": "alice", "offer": offer}
        answer = {"type": "answer", "sdp": "v=0 bob"}
        assert await bob.call("signal:answer", {"targetEmpId": "alice", "answer": answer}) == [{}]
        assert await alice.event("signal:answer") == {"fromEmpId": "bob", "answer": answer}
        candidate = {"candidate": "candidate:1 1 udp 2122260223 10.0.0.1 9 typ host"}
        # Fire-and-forget, as the seed's frontend emits ICE: no ack.
        await carol.emit("signal:ice", {"targetEmpId": "alice", "candidate": candidate})
        assert await alice.event("signal:ice") == {"fromEmpId": "carol", "candidate": candidate}

        # An ack callback gets the error object for a refused request.
        [error] = await bob.call("host:kick", {"targetEmpId": "carol"})
        assert error["code"] == "FORBIDDEN" and error["event"] == "host:kick"
        # An error with no ack id arrives as an "error" event.
        await bob.emit("signal:offer", {"targetEmpId": "nobody", "offer": offer})
        assert (await bob.event("error"))["code"] == "TARGET_NOT_FOUND"


async def test_meshroom_serve_answers_socketio_on_its_signaling_port(
    sio: SioServer, client: tuple[str, Any]
) -> None:
    """The Server itself (what ``meshroom serve`` runs) routes /socket.io/ on its port."""
    kind, transports = client
    native = sio.native
    meeting = await native.meeting(host="alice")
    url = f"http://127.0.0.1:{native.server.port}"
    async with driver(kind) as alice, driver(kind) as bob:
        await alice.join(url, native.token(meeting, "alice", Role.HOST), transports=transports)
        await bob.join(url, native.token(meeting, "bob"), transports=transports)
        offer = {"type": "offer", "sdp": "v=0 serve"}
        assert await alice.call("signal:offer", {"targetEmpId": "bob", "offer": offer}) == [{}]
        assert await bob.event("signal:offer") == {"fromEmpId": "alice", "offer": offer}
