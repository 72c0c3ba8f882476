"""meshroom's TURN credentials against a real coturn with ``use-auth-secret``.

meshroom issues each peer, in its join snapshot, a username ``<expiry>:<empId>``
and the credential base64(HMAC-SHA1(secret, username)). coturn, given the same
secret, must accept exactly those: two aiortc peers restricted to relay
candidates connect through it with what meshroom issued, and a tampered, a
forged or an expired credential is refused (the allocation gets 401).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from _servers import RunningServer

from meshroom import Role
from meshroom.ice import turn_credentials

from .conftest import open_server
from .rtc import AsyncioThread, RtcPeer, candidate_types, mesh_peer
from .turn import Coturn, coturn_process, wait_ready

TIMEOUT = 20
TTL = 600

pytestmark = pytest.mark.usefixtures("aiortc_available")


@pytest.fixture
def coturn(turnserver_path: str, tmp_path: Path) -> Iterator[tuple[Coturn, Any]]:
    with coturn_process(turnserver_path, tmp_path / "coturn") as running:
        yield running


@pytest.fixture
async def turn_setup(
    coturn: tuple[Coturn, Any], tmp_path: Path
) -> AsyncIterator[tuple[RunningServer, Coturn]]:
    turn, process = coturn
    with trio.fail_after(10):
        await wait_ready(turn, process)
    async with trio.open_nursery() as nursery:
        server = await open_server(
            nursery, tmp_path, turn_urls=turn.url, turn_secret=turn.secret, turn_ttl=TTL
        )
        yield server, turn
        server.server.request_shutdown()


async def test_relay_only_aiortc_peers_connect_with_the_credentials_meshroom_issued(
    turn_setup: tuple[RunningServer, Coturn], aio: AsyncioThread
) -> None:
    server, turn = turn_setup
    meeting = await server.meeting(host="ada")
    with trio.fail_after(TIMEOUT):
        await _relayed_pair(server, turn, meeting, aio)


async def _relayed_pair(
    server: RunningServer, turn: Coturn, meeting: Any, aio: AsyncioThread
) -> None:
    async with trio.open_nursery() as nursery:
        async with (
            mesh_peer(
                nursery, aio, server.url, server.token(meeting, "ada", Role.HOST), relay_only=True
            ) as ada,
            mesh_peer(
                nursery, aio, server.url, server.token(meeting, "grace"), relay_only=True
            ) as grace,
        ):
            # The snapshot carries TURN REST credentials for this very peer.
            (issued,) = grace.signaling.snapshot["iceServers"]
            assert issued["urls"] == [turn.url]
            expiry, emp_id = issued["username"].split(":", 1)
            assert emp_id == "grace"
            assert abs(int(expiry) - (time.time() + TTL)) < 60

            await grace.call_all()
            await aio.run(ada.rtc.wait_open(["grace"]))
            await aio.run(grace.rtc.wait_open(["ada"]))

            # Relay candidates only, on both sides: every packet went through coturn.
            for peer, other in ((ada, "grace"), (grace, "ada")):
                local = candidate_types(peer.rtc.local_sdp(other))
                assert local and set(local) == {"relay"}, local
            await aio.run(grace.rtc.send("ada", "relayed hello"))
            await aio.run(ada.rtc.wait_message("grace", "relayed hello"))
        nursery.cancel_scope.cancel()


async def test_coturn_refuses_tampered_forged_and_expired_credentials(
    turn_setup: tuple[RunningServer, Coturn], aio: AsyncioThread
) -> None:
    server, turn = turn_setup
    meeting = await server.meeting(host="ada")
    with trio.fail_after(TIMEOUT):
        async with (
            trio.open_nursery() as nursery,
            mesh_peer(nursery, aio, server.url, server.token(meeting, "ada", Role.HOST)) as ada,
        ):
            (issued,) = ada.signaling.snapshot["iceServers"]
            nursery.cancel_scope.cancel()
        username, credential = issued["username"], issued["credential"]
        expiry = username.split(":", 1)[0]
        tampered = credential[:-4] + ("AAA=" if not credential.endswith("AAA=") else "BBB=")
        refused = {
            "tampered": (username, tampered),
            "forged with another secret": turn_credentials("not-the-secret", "ada", TTL),
            "expired": turn_credentials(turn.secret, "ada", -60),
            "someone else's": (f"{expiry}:mallory", credential),
        }

        # The credential meshroom issued allocates a relay; every altered one gets 401.
        assert await aio.run(_allocate(turn, username, credential)) == "allocated"
        for name, (user, password) in refused.items():
            outcome = await aio.run(_allocate(turn, user, password))
            assert outcome == "401", f"{name} credential: {outcome}"

        # A relay-only peer connection with a refused credential gathers no candidate at all.
        bad = [{"urls": [turn.url], "username": username, "credential": tampered}]
        assert await aio.run(_relay_candidates(bad)) == []
        good = [{"urls": [turn.url], "username": username, "credential": credential}]
        assert await aio.run(_relay_candidates(good)) == ["relay"]
    assert "check_stun_auth: Cannot find credentials" in turn.log_text()


async def _allocate(turn: Coturn, username: str, password: str) -> str:
    """Try a TURN Allocate over UDP; "allocated", or the error code coturn answered."""
    from aioice import stun
    from aioice.turn import create_turn_endpoint

    try:
        transport, _ = await asyncio.wait_for(
            create_turn_endpoint(
                asyncio.DatagramProtocol, ("127.0.0.1", turn.port), username, password
            ),
            TIMEOUT,  # a lost UDP answer must not hang the test (it is retransmitted)
        )
    except stun.TransactionFailed as exc:
        return str(exc.response.attributes["ERROR-CODE"][0])
    transport.close()
    return "allocated"


async def _relay_candidates(servers: list[dict[str, Any]]) -> list[str]:
    peer = RtcPeer("probe", servers, relay_only=True)
    try:
        await peer.offer("nobody")
        return candidate_types(peer.local_sdp("nobody"))
    finally:
        await peer.close()
