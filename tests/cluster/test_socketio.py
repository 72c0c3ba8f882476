"""Socket.IO clients are relayed like native ones: an unmodified socket.io-client on one
node signals a native peer whose room runs on another, and host controls reach it."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest
import trio

from meshroom import Role
from meshroom.client import connect
from tests.socketio.harness import SERVER_DISCONNECT, driver

from .harness import DEADLINE, cluster, node_of


@pytest.mark.parametrize(("kind", "transports"), [("node", None), ("python", ["websocket"])])
async def test_a_socketio_client_on_another_node_joins_signals_and_is_kicked(
    tmp_path, redis, kind, transports
):
    with trio.fail_after(3 * DEADLINE):
        async with cluster(tmp_path, redis, 2) as (a, b), driver(kind) as bob:
            meeting = await a.meeting()
            async with connect(a.url, a.token(meeting, "alice", Role.HOST)) as alice:
                # The Socket.IO endpoint shares the signaling port: http://host:port/socket.io/
                parts = urlsplit(b.url)
                sio_url = f"http://{parts.hostname}:{parts.port}"
                joined = await bob.join(sio_url, b.token(meeting, "bob"), transports=transports)
                assert [p["empId"] for p in joined["peers"]] == ["alice"]
                await alice.wait_for("peer:joined", empId="bob")
                assert meeting.id not in b.hub.rooms and node_of(a).holds(meeting.id)

                offer = {"type": "offer", "sdp": "v=0 native"}
                await alice.offer("bob", offer)
                assert await bob.event("signal:offer") == {"fromEmpId": "alice", "offer": offer}
                answer = {"type": "answer", "sdp": "v=0 socket.io"}
                ack = await bob.call("signal:answer", {"targetEmpId": "alice", "answer": answer})
                assert ack == [{}]
                got = await alice.wait_for("signal:answer")
                assert got.data == {"fromEmpId": "bob", "answer": answer}

                assert (await alice.kick("bob"))["targetEmpId"] == "bob"
                assert (await bob.event("session:closed"))["reason"] == "kicked"
                assert (await bob.expect("disconnect"))["reason"] == SERVER_DISCONNECT[kind]
