"""Multiple participants: a 10-peer full mesh negotiated through the server."""

from __future__ import annotations

from collections import Counter
from contextlib import AsyncExitStack

import trio
import trio.testing
from _signaling import DEADLINE, assert_quiet, ping

from meshroom import Role
from meshroom.client import Peer, connect

N = 10
ICE_PER_SIDE = 4


async def test_ten_peer_full_mesh(server):
    with trio.fail_after(DEADLINE):
        meeting = await server.meeting()
        names = [f"p{i:02d}" for i in range(N)]
        # received[receiver][(event, sender, payload tag)] = times seen
        received: dict[str, Counter[tuple[str, str, str]]] = {name: Counter() for name in names}
        changed = trio.Condition()

        async def record(receiver: str, key: tuple[str, str, str]) -> None:
            async with changed:
                received[receiver][key] += 1
                changed.notify_all()

        async def behave(peer: Peer) -> None:
            me = peer.emp_id
            async for event in peer:
                data = event.data
                if event.name == "peer:joined":
                    await record(me, ("peer:joined", data["empId"], ""))
                elif event.name == "signal:offer":
                    sender = data["fromEmpId"]
                    await record(me, ("offer", sender, data["offer"]["sdp"]))
                    await peer.answer(sender, {"type": "answer", "sdp": f"answer {me}->{sender}"})
                    for k in range(ICE_PER_SIDE):
                        await peer.ice(sender, {"candidate": f"ice {me}->{sender} #{k}"})
                elif event.name == "signal:answer":
                    sender = data["fromEmpId"]
                    await record(me, ("answer", sender, data["answer"]["sdp"]))
                    for k in range(ICE_PER_SIDE):
                        await peer.ice(sender, {"candidate": f"ice {me}->{sender} #{k}"})
                elif event.name == "signal:ice":
                    await record(me, ("ice", data["fromEmpId"], data["candidate"]["candidate"]))
                else:
                    await record(me, (event.name, "?", repr(data)))

        def expected_between(new: str, old: str) -> dict[str, list[tuple[str, str, str]]]:
            """What ``new`` (the newcomer) and ``old`` must each receive from the other."""
            return {
                old: [("offer", new, f"offer {new}->{old}")]
                + [("ice", new, f"ice {new}->{old} #{k}") for k in range(ICE_PER_SIDE)],
                new: [("answer", old, f"answer {old}->{new}")]
                + [("ice", old, f"ice {old}->{new} #{k}") for k in range(ICE_PER_SIDE)],
            }

        def negotiated(new: str, present: list[str]) -> bool:
            return all(
                received[who][key] >= 1
                for old in present
                for who, keys in expected_between(new, old).items()
                for key in keys
            )

        peers: list[Peer] = []
        async with AsyncExitStack() as stack:
            nursery = await stack.enter_async_context(trio.open_nursery())
            for i, name in enumerate(names):
                role = Role.HOST if i == 0 else Role.PARTICIPANT
                peer = await stack.enter_async_context(
                    connect(server.url, server.token(meeting, name, role))
                )
                peers.append(peer)
                present = [p["empId"] for p in peer.snapshot["peers"]]
                assert present == names[:i]
                nursery.start_soon(behave, peer)
                for old in present:
                    await peer.offer(old, {"type": "offer", "sdp": f"offer {name}->{old}"})
                async with changed:
                    while not negotiated(name, present):
                        await changed.wait()

            # Barrier 1: every frame any peer sent has been processed by the server.
            # Barrier 2: every frame queued for any peer has reached it.
            for _ in range(2):
                async with trio.open_nursery() as barrier:
                    for peer in peers:
                        barrier.start_soon(ping, peer)
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()

        expected: dict[str, Counter[tuple[str, str, str]]] = {name: Counter() for name in names}
        for i, new in enumerate(names):
            for old in names[:i]:
                for who, keys in expected_between(new, old).items():
                    expected[who].update(keys)
                expected[old][("peer:joined", new, "")] += 1
        for name in names:
            assert received[name] == expected[name], name
        # Every message arrived exactly once.
        assert all(count == 1 for c in received.values() for count in c.values())
        relays = sum(sum(c.values()) for c in received.values()) - N * (N - 1) // 2
        assert relays == N * (N - 1) * (1 + ICE_PER_SIDE)


async def test_peer_joined_and_left_reach_everyone_in_a_crowd(server):
    with trio.fail_after(DEADLINE):
        meeting = await server.meeting()
        async with AsyncExitStack() as stack:
            crowd = [
                await stack.enter_async_context(
                    connect(server.url, server.token(meeting, f"c{i}", Role.PARTICIPANT))
                )
                for i in range(6)
            ]
            async with connect(server.url, server.token(meeting, "late")) as late:
                assert len(late.snapshot["peers"]) == 6
                for peer in crowd:
                    await peer.wait_for("peer:joined", empId="late")
            for peer in crowd:
                left = await peer.wait_for("peer:left")
                assert left.data == {"empId": "late", "reason": "disconnected"}
            await assert_quiet(*crowd)
