"""The signaling route's two connections under the ASGI middleware (meshroom.http.signaling).

Served by hypercorn, a signaling WebSocket runs on hypercorn's own stream with
meshroom's framing (HypercornWebSocketConnection); anywhere else it runs on plain ASGI
messages (ASGIWebSocketConnection). Both are run here through the same client-visible
behaviour; test_quart_signaling.py covers the route end to end on the default one.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio
from _rawws import raw_client
from _servers import RunningServer, server_settings, start_server
from wsproto.events import CloseConnection, Ping, Pong, TextMessage

from meshroom import Role
from meshroom.client import connect
from meshroom.http import signaling
from meshroom.transports.asgi import ASGIWebSocketConnection, route_path
from meshroom.transports.hypercorn_ws import HypercornWebSocketConnection

TIMEOUT = 10


@pytest.fixture(params=["hypercorn", "plain"])
async def server(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[RunningServer]:
    """meshroom serve's HTTP port, its signaling connections recorded in ``server.made``."""
    made: list[type] = []
    on_hypercorns_stream = request.param == "hypercorn"
    make = signaling.connection_for if on_hypercorns_stream else ASGIWebSocketConnection
    expected = HypercornWebSocketConnection if on_hypercorns_stream else ASGIWebSocketConnection

    def recording(*args: Any, **kwargs: Any) -> ASGIWebSocketConnection:
        conn = make(*args, **kwargs)
        made.append(type(conn))
        return conn

    monkeypatch.setattr(signaling, "connection_for", recording)
    settings = server_settings(tmp_path, http_port=0, max_message_bytes=4096)
    async with trio.open_nursery() as nursery:
        running = await start_server(nursery, settings)
        running.made = made  # type: ignore[attr-defined]
        running.expected = expected  # type: ignore[attr-defined]
        yield running
        running.server.request_shutdown()


def quart_url(server: RunningServer) -> str:
    return server.http_url.replace("http://", "ws://", 1) + "/meetings"


async def test_relay_limits_and_errors_on_either_connection(server):
    meeting = await server.meeting()
    url = quart_url(server)
    with trio.fail_after(TIMEOUT):
        async with (
            connect(url, server.token(meeting, "alice", Role.HOST)) as alice,
            connect(url, server.token(meeting, "bob"), token_in_query=True) as bob,
        ):
            assert server.made == [server.expected] * 2
            for n in range(50):
                await bob.offer("alice", {"type": "offer", "sdp": f"v={n}"})
            for n in range(50):
                got = await alice.wait_for("signal:offer")
                assert got.data["offer"]["sdp"] == f"v={n}"
            # Over max_message_bytes: dropped with FRAME_TOO_LARGE, the connection stays.
            await bob.offer("alice", {"type": "offer", "sdp": "a" * 5000})
            assert (await bob.wait_for("error")).data["code"] == "FRAME_TOO_LARGE"
            await bob.send_raw(b"\x00binary")
            assert (await bob.wait_for("error")).data["code"] == "BINARY_NOT_SUPPORTED"
            assert (await bob.request("ping"))["serverTime"]
            assert await alice.kick("bob") == {"targetEmpId": "bob"}
            assert await bob.wait_closed() == 4005


async def test_a_burst_in_one_write_is_relayed_whole_and_in_order(server):
    """Many reads' worth of frames at once: the reader takes them as the room catches up."""
    meeting = await server.meeting()
    count = 400
    with trio.fail_after(TIMEOUT):
        async with (
            connect(quart_url(server), server.token(meeting, "alice", Role.HOST)) as alice,
            raw_client(quart_url(server)) as bob,
        ):
            await bob.authenticate(server.token(meeting, "bob"))
            await alice.wait_for("peer:joined", empId="bob")
            burst = b"".join(
                bob.ws.send(
                    TextMessage(
                        data=json.dumps(
                            {
                                "event": "signal:ice",
                                "data": {
                                    "targetEmpId": "alice",
                                    "candidate": {"candidate": f"c{n}", "pad": "x" * 300},
                                },
                            }
                        )
                    )
                )
                for n in range(count)
            )
            assert len(burst) > 2 * 65536  # more than one of hypercorn's reads
            await bob.stream.send_all(burst)
            for n in range(count):
                got = await alice.wait_for("signal:ice")
                assert got.data["candidate"]["candidate"] == f"c{n}"


async def test_a_client_close_is_answered_and_the_peer_leaves(server):
    meeting = await server.meeting()
    with trio.fail_after(TIMEOUT):
        async with connect(quart_url(server), server.token(meeting, "alice", Role.HOST)) as alice:
            async with raw_client(quart_url(server)) as bob:
                assert (await bob.authenticate(server.token(meeting, "bob")))["event"] == (
                    "room:joined"
                )
                await alice.wait_for("peer:joined", empId="bob")
                # A ping is answered (by meshroom or by hypercorn), a close too.
                await bob.stream.send_all(bob.ws.send(Ping(b"are you there")))
                assert isinstance(await bob.next_event(), Pong)
                await bob.stream.send_all(bob.ws.send(CloseConnection(code=1000)))
                assert await bob.frames_until_closed() == []
                assert bob.close_code == 1000
            left = await alice.wait_for("peer:left", empId="bob")
            assert left.data["reason"] == "disconnected"
    rows = await server.store.attendance_for_meeting(meeting.id)
    assert {r.emp_id: r.leave_reason for r in rows}["bob"] == "disconnected"


async def test_a_framing_error_closes_with_1002_and_the_peer_leaves(server):
    meeting = await server.meeting()
    with trio.fail_after(TIMEOUT):
        async with connect(quart_url(server), server.token(meeting, "alice", Role.HOST)) as alice:
            async with raw_client(quart_url(server)) as bob:
                await bob.authenticate(server.token(meeting, "bob"))
                await bob.stream.send_all(b"\x81\x02hi")  # unmasked: clients must mask
                assert await bob.frames_until_closed() == []
                if server.expected is HypercornWebSocketConnection:
                    assert bob.close_code == 1002
                # (Under plain ASGI hypercorn's wsproto decides; it hangs up without a word.)
            left = await alice.wait_for("peer:left", empId="bob")
            assert left.data["reason"] == "disconnected"
            assert (await alice.request("ping"))["serverTime"]


async def test_permessage_deflate_is_declined_on_hypercorns_stream(tmp_path):
    """meshroom's frame reader takes no extension: a browser's offer gets plain frames."""
    settings = server_settings(tmp_path, http_port=0)
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            server = await start_server(nursery, settings)
            meeting = await server.meeting()
            offer = {"Sec-WebSocket-Extensions": "permessage-deflate; client_max_window_bits"}
            # The client here (wsproto, configured with no extension) refuses an answer
            # that accepts one: the handshake succeeding shows that none was.
            async with raw_client(quart_url(server), headers=offer) as bob:
                joined = await bob.authenticate(server.token(meeting, "bob"))
                assert joined["event"] == "room:joined"
                await bob.send_json("ping", id=1)
                assert (await bob.receive_json())["event"] == "ack"
            server.server.request_shutdown()


@pytest.mark.parametrize(
    ("path", "root_path", "routed"),
    [
        ("/meetings", "", "/meetings"),
        ("/app/meetings", "/app", "/meetings"),
        ("/app", "/app", " "),  # the root itself: no route
        ("/other/meetings", "/app", " "),
    ],
)
def test_the_middleware_routes_on_the_path_below_root_path_as_quart_does(
    path: str, root_path: str, routed: str
) -> None:
    assert route_path({"path": path, "root_path": root_path}) == routed


def test_frames_of_a_hypercorn_send_are_recognised_only_from_hypercorn() -> None:
    from meshroom.transports.hypercorn_ws import hypercorn_stream

    async def not_hypercorn(message: Any) -> None:
        pass

    assert hypercorn_stream(not_hypercorn) is None
    assert hypercorn_stream(json.dumps) is None  # type: ignore[arg-type]
