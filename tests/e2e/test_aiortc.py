"""Three aiortc peers negotiate real SDP and ICE through a real meshroom server.

Signaling goes over meshroom's WebSocket with its Trio client; the media side is
aiortc (https://github.com/aiortc/aiortc), a WebRTC stack nobody here wrote, so a
data channel that opens proves the offers and answers arrived whole and in order.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest
import trio
from _servers import RunningServer

from meshroom import Role

from .rtc import AsyncioThread, MeshPeer, candidate_types, mesh_peer

# The whole scenario's deadline; every wait inside it polls an observable condition.
TIMEOUT = 60

pytestmark = pytest.mark.usefixtures("aiortc_available")


async def test_three_aiortc_peers_mesh_then_the_host_kicks_one(
    e2e_server: RunningServer, aio: AsyncioThread
) -> None:
    server = e2e_server
    meeting = await server.meeting(host="ada")
    names = {"ada": Role.HOST, "grace": Role.PARTICIPANT, "alan": Role.PARTICIPANT}
    with trio.fail_after(TIMEOUT):
        await _scenario(server, meeting, names, aio)


async def _scenario(
    server: RunningServer, meeting: Any, names: dict[str, Role], aio: AsyncioThread
) -> None:
    async with trio.open_nursery() as nursery:
        peers: dict[str, MeshPeer] = {}
        async with (
            mesh_peer(nursery, aio, server.url, server.token(meeting, "ada", Role.HOST)) as ada,
            mesh_peer(nursery, aio, server.url, server.token(meeting, "grace")) as grace,
            mesh_peer(nursery, aio, server.url, server.token(meeting, "alan")) as alan,
        ):
            peers = {"ada": ada, "grace": grace, "alan": alan}
            # Joined one after the other: each newcomer offers to everyone already there.
            assert [p["empId"] for p in alan.signaling.snapshot["peers"]] == ["ada", "grace"]
            assert alan.signaling.snapshot["iceServers"] == []  # loopback needs no STUN
            await grace.call_all()
            await alan.call_all()

            # Every pair negotiated real SDP and ICE: each peer has two open data channels.
            for name, peer in peers.items():
                others = [o for o in names if o != name]
                await aio.run(peer.rtc.wait_open(others))
                for other in others:
                    assert await aio.run(_state(peer, other)) == "connected"
                    sdp = peer.rtc.remote_sdp(other)
                    assert "m=application" in sdp and "webrtc-datachannel" in sdp
                    assert "host" in candidate_types(sdp)
            assert grace.events[0].name == "peer:joined"  # alan, before alan's offer to grace

            # Messages both ways over every channel.
            for sender, receiver in itertools.permutations(names, 2):
                await aio.run(peers[sender].rtc.send(receiver, f"{sender} to {receiver}"))
            for sender, receiver in itertools.permutations(names, 2):
                await aio.run(peers[receiver].rtc.wait_message(sender, f"{sender} to {receiver}"))

            # The host kicks alan. Its client learns why, and closes its connections.
            await ada.signaling.kick("alan")
            assert await alan.signaling.wait_closed() == 4005
            assert any(
                e.name == "session:closed" and e.data["reason"] == "kicked" for e in alan.events
            )
            await aio.run(alan.rtc.close())

            # The others see it go: peer:left from meshroom, and the data channel closing
            # because alan's end went away (neither has closed its own side yet).
            for peer in (ada, grace):
                left = await peer.wait_event("peer:left", empId="alan")
                assert left.data["reason"] == "kicked"
                await aio.run(peer.rtc.wait_gone("alan"))
                await aio.run(peer.rtc.close("alan"))

            # ... and the rest of the mesh carries on.
            await aio.run(ada.rtc.send("grace", "still here?"))
            await aio.run(grace.rtc.wait_message("ada", "still here?"))
            assert sorted(p["empId"] for p in server.hub.live_peers(meeting.id)) == [
                "ada",
                "grace",
            ]
        nursery.cancel_scope.cancel()


async def _state(peer: MeshPeer, other: str) -> str:
    return peer.rtc.state(other)
