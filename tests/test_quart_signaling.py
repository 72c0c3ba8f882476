"""The signaling WebSocket as a Quart route on the HTTP port, over the listener's rooms."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path

import httpx
import pytest
import trio
from _servers import API_KEY, RunningServer, server_settings, start_server
from trio_websocket import ConnectionClosed, open_websocket_url

from meshroom import Role, Settings
from meshroom.client import JoinRefused, MeshroomError, Peer, connect

TIMEOUT = 10


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[RunningServer]:
    """conftest's server with HTTP on (HTTP is off there; 0 binds any free port)."""
    settings = server_settings(tmp_path, http_port=0)
    async with trio.open_nursery() as nursery:
        running = await start_server(nursery, settings)
        yield running
        running.server.request_shutdown()


@pytest.fixture
async def server_without_resume(tmp_path: Path) -> AsyncIterator[RunningServer]:
    """A server where a dropped peer leaves at once instead of waiting for a resume."""
    fields = set(Settings.model_fields)
    no_resume = {"resume_grace": 0.0} if "resume_grace" in fields else {}
    settings = server_settings(tmp_path, http_port=0, **no_resume)
    async with trio.open_nursery() as nursery:
        running = await start_server(nursery, settings)
        yield running
        running.server.request_shutdown()


@pytest.fixture
async def api(server: RunningServer) -> AsyncIterator[httpx.AsyncClient]:
    async def no_500(response: httpx.Response) -> None:
        assert response.status_code != 500

    async with httpx.AsyncClient(
        base_url=server.http_url,
        headers={"Authorization": f"Bearer {API_KEY}"},
        event_hooks={"response": [no_500]},
        timeout=TIMEOUT,
    ) as http:
        yield http


def quart_url(server: RunningServer) -> str:
    return server.http_url.replace("http://", "ws://", 1) + "/meetings"


async def enter(stack: AsyncExitStack, url: str, token: str, **options: bool) -> Peer:
    return await stack.enter_async_context(connect(url, token, **options))


async def test_two_peers_join_and_relay_through_the_quart_route(server):
    meeting = await server.meeting()
    url = quart_url(server)
    with trio.fail_after(TIMEOUT):
        async with AsyncExitStack() as stack:
            alice = await enter(stack, url, server.token(meeting, "alice", Role.HOST))
            assert alice.role == "HOST"
            assert alice.snapshot["meeting"]["id"] == meeting.id
            assert alice.snapshot["peers"] == []
            assert alice.snapshot["iceServers"]
            bob = await enter(stack, url, server.token(meeting, "bob"))
            assert [p["empId"] for p in bob.snapshot["peers"]] == ["alice"]
            joined = await alice.wait_for("peer:joined")
            assert joined.data["empId"] == "bob" and joined.data["role"] == "PARTICIPANT"

            offer = {"type": "offer", "sdp": "v=0\r\no=- 1 2 IN IP4 0.0.0.0\r\n"}
            await bob.offer("alice", offer)
            got = await alice.wait_for("signal:offer")
            assert got.data == {"fromEmpId": "bob", "offer": offer}

            answer = {"type": "answer", "sdp": "v=0"}
            await alice.answer("bob", answer)
            assert (await bob.wait_for("signal:answer")).data == {
                "fromEmpId": "alice",
                "answer": answer,
            }
            candidate = {"candidate": "candidate:1 1 udp 1 10.0.0.1 9 typ host", "sdpMid": "0"}
            await alice.ice("bob", candidate)
            await alice.ice("bob", None)  # end of candidates
            assert (await bob.wait_for("signal:ice")).data["candidate"] == candidate
            assert (await bob.wait_for("signal:ice")).data["candidate"] is None

            # Requests are acknowledged as on the standalone listener.
            acked = await bob.request("signal:offer", {"targetEmpId": "alice", "offer": offer})
            assert acked == {}
            assert (await bob.request("ping"))["serverTime"]


async def test_token_in_the_query_string(server):
    meeting = await server.meeting()
    with trio.fail_after(TIMEOUT):
        async with connect(
            quart_url(server), server.token(meeting, "alice", Role.HOST), token_in_query=True
        ) as alice:
            assert alice.emp_id == "alice"
            async with connect(
                quart_url(server), server.token(meeting, "bob"), token_in_query=True
            ) as bob:
                await bob.offer("alice", {"type": "offer", "sdp": "v=0"})
                assert (await alice.wait_for("signal:offer")).data["fromEmpId"] == "bob"


async def test_a_bad_token_is_refused_and_closed(server):
    meeting = await server.meeting()
    scheduled = await server.meeting(live=False)
    an_hour_ago = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    expired = server.token(meeting, "bob", ttl=dt.timedelta(minutes=1), now=an_hour_ago)
    cases = [
        ("not-a-token", "AUTH_FAILED", 4001),
        (expired, "AUTH_FAILED", 4001),
        (server.token(meeting, "bob") + "x", "AUTH_FAILED", 4001),
        (server.token("no-such-meeting", "bob"), "MEETING_NOT_FOUND", 4003),
        (server.token(scheduled, "bob"), "MEETING_NOT_LIVE", 4003),
    ]
    with trio.fail_after(TIMEOUT):
        for token, code, close in cases:
            for in_query in (False, True):
                with pytest.raises(JoinRefused) as refused:
                    async with connect(quart_url(server), token, token_in_query=in_query):
                        pass
                assert refused.value.code == code, (token, in_query)
                assert refused.value.close_code == close, (token, in_query)
    assert server.hub.rooms == {}


async def test_the_first_frame_must_be_auth(server):
    with trio.fail_after(TIMEOUT):
        async with open_websocket_url(quart_url(server)) as ws:
            await ws.send_message(json.dumps({"event": "ping", "id": 1, "data": {}}))
            error = json.loads(await ws.get_message())
            assert error["event"] == "error"
            assert error["data"]["code"] == "AUTH_REQUIRED"
            with pytest.raises(ConnectionClosed):
                await ws.get_message()
            assert ws.closed is not None and ws.closed.code == 4000


async def test_bad_json_gets_an_error_frame_and_the_connection_stays(server):
    meeting = await server.meeting()
    with trio.fail_after(TIMEOUT):
        async with AsyncExitStack() as stack:
            alice = await enter(stack, quart_url(server), server.token(meeting, "alice", Role.HOST))
            bob = await enter(stack, quart_url(server), server.token(meeting, "bob"))
            await bob.send_raw("{this is not json")
            error = await bob.wait_for("error")
            assert error.data["code"] == "BAD_JSON"
            await bob.send_raw(json.dumps({"event": "no:such", "id": 5, "data": {}}))
            unknown = await bob.wait_for("error")
            assert unknown.data["code"] == "UNKNOWN_EVENT" and unknown.id == 5
            await bob.send_raw(b"\x00\x01binary")
            binary = await bob.wait_for("error")
            assert binary.data["code"] == "BINARY_NOT_SUPPORTED"
            # Still joined and relaying.
            await bob.offer("alice", {"type": "offer", "sdp": "v=0"})
            assert (await alice.wait_for("signal:offer")).data["fromEmpId"] == "bob"


async def test_an_oversized_frame_gets_frame_too_large_and_the_connection_stays(server):
    meeting = await server.meeting()
    limit = server.settings.max_message_bytes
    with trio.fail_after(TIMEOUT):
        async with AsyncExitStack() as stack:
            alice = await enter(stack, quart_url(server), server.token(meeting, "alice", Role.HOST))
            bob = await enter(stack, quart_url(server), server.token(meeting, "bob"))
            huge = {"type": "offer", "sdp": "a" * (limit + 1)}
            await bob.offer("alice", huge)
            error = await bob.wait_for("error")
            assert error.data["code"] == "FRAME_TOO_LARGE"
            # The frame was dropped, not relayed; the connection is fine.
            small = {"type": "offer", "sdp": "v=0"}
            await bob.offer("alice", small)
            assert (await alice.wait_for("signal:offer")).data["offer"] == small
            assert (await bob.request("ping"))["serverTime"]


async def test_a_frame_far_over_the_transport_limit_closes_only_that_peer(server_without_resume):
    server = server_without_resume
    """Over hypercorn's own limit (websocket_max_message_size) the server closes with 1009.

    Hypercorn tells the app only once the TCP connection is gone, and does not
    drop it itself after that close: the room sees the peer leave when the
    client drops the connection.
    """
    meeting = await server.meeting()
    url = quart_url(server) + "?meetingAccessToken=" + server.token(meeting, "bob")
    closed_with: list[int | None] = []

    async def bob_sends_too_much(task_status: trio.TaskStatus[None]) -> None:
        async with open_websocket_url(url) as bob, trio.open_nursery() as nursery:
            assert json.loads(await bob.get_message())["event"] == "room:joined"
            # The server stops reading part-way: send in the background.
            nursery.start_soon(bob.send_message, "x" * (8 * 1024 * 1024))
            with pytest.raises(ConnectionClosed):
                while True:
                    await bob.get_message()
            closed_with.append(bob.closed.code if bob.closed else None)
            task_status.started()
            await trio.sleep_forever()  # until cancelled: then the TCP connection is dropped

    with trio.fail_after(TIMEOUT):
        async with connect(quart_url(server), server.token(meeting, "alice", Role.HOST)) as alice:
            async with trio.open_nursery() as nursery:
                await nursery.start(bob_sends_too_much)
                assert closed_with == [1009]
                member = server.hub.rooms[meeting.id].peers["bob"]
                nursery.cancel_scope.cancel()
            left = await alice.wait_for("peer:left", empId="bob")
            assert left.data["reason"] == "disconnected"
            assert (await alice.request("ping"))["serverTime"]
            await member.finished.wait()
            rows = await server.store.attendance_for_meeting(meeting.id)
            assert {r.emp_id: r.leave_reason for r in rows} == {
                "alice": None,
                "bob": "disconnected",
            }


async def test_host_kick_closes_the_target_with_4005(server):
    meeting = await server.meeting()
    with trio.fail_after(TIMEOUT):
        async with AsyncExitStack() as stack:
            alice = await enter(stack, quart_url(server), server.token(meeting, "alice", Role.HOST))
            bob = await enter(stack, quart_url(server), server.token(meeting, "bob"))
            carol = await enter(stack, quart_url(server), server.token(meeting, "carol"))
            await alice.wait_for("peer:joined", empId="carol")
            assert await alice.kick("bob") == {"targetEmpId": "bob"}
            notice = await bob.wait_for("session:closed")
            assert notice.data["reason"] == "kicked" and notice.data["by"] == "alice"
            assert await bob.wait_closed() == 4005
            for other in (alice, carol):
                left = await other.wait_for("peer:left", empId="bob")
                assert left.data["reason"] == "kicked"
            # A participant may not kick.
            with pytest.raises(MeshroomError) as refused:
                await carol.kick("alice")
            assert refused.value.code == "FORBIDDEN"
            rows = await server.store.attendance_for_meeting(meeting.id)
            assert {r.emp_id: r.leave_reason for r in rows}["bob"] == "kicked"


async def test_the_api_kicks_and_bans_peers_on_the_quart_route(server, api):
    meeting = await server.meeting()
    with trio.fail_after(TIMEOUT):
        async with AsyncExitStack() as stack:
            alice = await enter(stack, quart_url(server), server.token(meeting, "alice", Role.HOST))
            bob = await enter(stack, quart_url(server), server.token(meeting, "bob"))
            carol = await enter(stack, quart_url(server), server.token(meeting, "carol"))
            await alice.wait_for("peer:joined", empId="carol")
            kicked = await api.post(f"/api/meetings/{meeting.id}/participants/bob/kick")
            assert kicked.status_code == 200
            assert await bob.wait_closed() == 4005
            banned = await api.post(f"/api/meetings/{meeting.id}/bans", json={"empId": "carol"})
            assert banned.status_code == 201
            assert await carol.wait_closed() == 4004
            with pytest.raises(JoinRefused) as refused:
                async with connect(quart_url(server), server.token(meeting, "carol")):
                    pass
            assert refused.value.close_code == 4004
            people = (await api.get(f"/api/meetings/{meeting.id}/participants")).json()
            assert [p["empId"] for p in people["participants"]] == ["alice"]


async def test_both_transports_share_one_room(server, api):
    meeting = await server.meeting()
    with trio.fail_after(TIMEOUT):
        async with AsyncExitStack() as stack:
            alice = await enter(stack, server.url, server.token(meeting, "alice", Role.HOST))
            bob = await enter(stack, quart_url(server), server.token(meeting, "bob"))
            assert [p["empId"] for p in bob.snapshot["peers"]] == ["alice"]
            await alice.wait_for("peer:joined", empId="bob")
            await bob.offer("alice", {"type": "offer", "sdp": "from quart"})
            assert (await alice.wait_for("signal:offer")).data["offer"]["sdp"] == "from quart"
            await alice.answer("bob", {"type": "answer", "sdp": "from listener"})
            assert (await bob.wait_for("signal:answer")).data["answer"]["sdp"] == "from listener"
            people = (await api.get(f"/api/meetings/{meeting.id}/participants")).json()
            assert sorted(p["empId"] for p in people["participants"]) == ["alice", "bob"]
            assert len(server.hub.rooms) == 1

            # The same employee joining on the other transport replaces the first connection.
            bob_again = await enter(stack, server.url, server.token(meeting, "bob"))
            assert await bob.wait_closed() == 4007
            await alice.offer("bob", {"type": "offer", "sdp": "to the new bob"})
            assert (await bob_again.wait_for("signal:offer")).data["fromEmpId"] == "alice"


async def test_ending_over_http_closes_quart_peers_with_4006(server, api):
    meeting = await server.meeting()
    with trio.fail_after(TIMEOUT):
        async with AsyncExitStack() as stack:
            peers = [
                await enter(stack, quart_url(server), server.token(meeting, "alice", Role.HOST)),
                await enter(stack, quart_url(server), server.token(meeting, "bob")),
                await enter(stack, server.url, server.token(meeting, "carol")),
            ]
            await peers[0].wait_for("peer:joined", empId="carol")
            ended = await api.post(f"/api/meetings/{meeting.id}/end")
            assert ended.status_code == 200 and ended.json()["status"] == "ENDED"
            rows = await server.store.attendance_for_meeting(meeting.id)
            assert {r.leave_reason for r in rows} == {"meeting-ended"}
            assert all(r.left_at is not None for r in rows)
            for peer in peers:
                events = [event async for event in peer]
                assert events[-1].name == "meeting:ended", events
                assert await peer.wait_closed() == 4006


async def test_host_end_from_the_quart_route(server):
    meeting = await server.meeting()
    with trio.fail_after(TIMEOUT):
        async with AsyncExitStack() as stack:
            alice = await enter(stack, quart_url(server), server.token(meeting, "alice", Role.HOST))
            bob = await enter(stack, quart_url(server), server.token(meeting, "bob"))
            await alice.wait_for("peer:joined", empId="bob")
            assert await alice.end_meeting() == {"meetingId": meeting.id}
            await bob.wait_for("meeting:ended")
            assert await bob.wait_closed() == 4006
            assert await alice.wait_closed() == 4006
        stored = await server.store.get_meeting(meeting.id)
        assert stored is not None and stored.status == "ENDED"


async def test_a_peer_that_goes_away_is_removed_and_its_row_closed(server_without_resume):
    server = server_without_resume
    meeting = await server.meeting()
    url = quart_url(server)
    with trio.fail_after(TIMEOUT):
        async with connect(url, server.token(meeting, "alice", Role.HOST)) as alice:
            async with connect(url, server.token(meeting, "bob")) as bob:
                await alice.wait_for("peer:joined", empId="bob")
                member = server.hub.rooms[meeting.id].peers["bob"]
                await bob.close()
            left = await alice.wait_for("peer:left", empId="bob")
            assert left.data["reason"] == "disconnected"
            await member.finished.wait()
            async with connect(url, server.token(meeting, "bob")) as bob:
                member = server.hub.rooms[meeting.id].peers["bob"]
                await bob.leave()
                await member.finished.wait()
            assert (await alice.wait_for("peer:left", empId="bob")).data["reason"] == "left"
            rows = await server.store.attendance_for_meeting(meeting.id)
            assert [r.leave_reason for r in rows if r.emp_id == "bob"] == ["disconnected", "left"]


async def test_server_shutdown_closes_quart_peers_with_1001(tmp_path):
    settings = server_settings(tmp_path, http_port=0)
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            server = await start_server(nursery, settings)
            meeting = await server.meeting()
            async with connect(quart_url(server), server.token(meeting, "bob")) as bob:
                server.server.request_shutdown()
                notice = await bob.wait_for("session:closed")
                assert notice.data["reason"] == "server-shutdown"
                assert await bob.wait_closed() == 1001
        # Server.run has returned: both listeners are closed, and the row is written.
    rows = await _attendance(settings.database_url, meeting.id)
    assert [r.leave_reason for r in rows] == ["server-shutdown"]


async def _attendance(url: str, meeting_id: str) -> list:
    from meshroom.store import SqlStore

    store = SqlStore(url)
    try:
        return await store.attendance_for_meeting(meeting_id)
    finally:
        await store.close()
