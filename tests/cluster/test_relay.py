"""Peers of one meeting on different nodes signal each other as if on one server."""

from __future__ import annotations

from contextlib import AsyncExitStack

import trio

from meshroom import Role
from meshroom.client import connect

from .harness import DEADLINE, cluster, node_of

OFFER = {"type": "offer", "sdp": "v=0 from bob"}
ANSWER = {"type": "answer", "sdp": "v=0 from carol"}


async def test_peers_on_different_nodes_see_and_signal_each_other(tmp_path, redis):
    with trio.fail_after(DEADLINE):
        async with cluster(tmp_path, redis, 3) as (a, b, c), AsyncExitStack() as stack:
            meeting = await a.meeting()
            alice = await stack.enter_async_context(
                connect(a.url, a.token(meeting, "alice", Role.HOST))
            )
            bob = await stack.enter_async_context(connect(b.url, b.token(meeting, "bob")))
            carol = await stack.enter_async_context(connect(c.url, c.token(meeting, "carol")))
            await alice.wait_for("peer:joined", empId="carol")
            await bob.wait_for("peer:joined", empId="carol")
            # One room, on the node alice reached first; the others relay to it.
            assert meeting.id in a.hub.rooms
            assert meeting.id not in b.hub.rooms and meeting.id not in c.hub.rooms
            assert node_of(a).holds(meeting.id)
            assert {p["empId"] for p in a.hub.live_peers(meeting.id)} == {"alice", "bob", "carol"}

            assert await bob.request("signal:offer", {"targetEmpId": "carol", "offer": OFFER}) == {}
            offer = await carol.wait_for("signal:offer")
            assert offer.data == {"fromEmpId": "bob", "offer": OFFER}
            await carol.send("signal:answer", {"targetEmpId": "bob", "answer": ANSWER})
            answer = await bob.wait_for("signal:answer")
            assert answer.data == {"fromEmpId": "carol", "answer": ANSWER}

            await bob.leave()
            for peer in (alice, carol):
                left = await peer.wait_for("peer:left", empId="bob")
                assert left.data["reason"] == "left"
