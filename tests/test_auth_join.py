"""Authentication and admission over a real server on loopback."""

from __future__ import annotations

import datetime as dt

import pytest
import trio
from _signaling import (
    DEADLINE,
    close_code,
    raw_socket,
    receive_json,
    send_json,
    server_settings,
    start_server,
)
from trio_websocket import HandshakeError, open_websocket_url

from meshroom import Role
from meshroom.client import JoinRefused, connect
from meshroom.store import MeetingStatus


async def refused(server_url: str, token: str, **options) -> JoinRefused:
    with pytest.raises(JoinRefused) as info:
        async with connect(server_url, token, **options):
            pass
    return info.value


async def test_valid_token_joins(server):
    with trio.fail_after(DEADLINE):
        meeting = await server.meeting()
        token = server.token(meeting, "alice", Role.HOST, name="Alice A")
        async with connect(server.url, token) as alice:
            assert alice.emp_id == "alice"
            assert alice.role == "HOST"
            assert alice.snapshot["self"]["displayName"] == "Alice A"
            assert alice.snapshot["meeting"]["id"] == meeting.id


async def test_auth_ack_answers_the_auth_request_id(server):
    with trio.fail_after(DEADLINE):
        meeting = await server.meeting()
        async with raw_socket(server.url) as ws:
            await send_json(ws, "auth", {"meetingAccessToken": server.token(meeting, "a")}, id="x1")
            joined = await receive_json(ws)
            assert (joined["event"], joined["id"]) == ("room:joined", "x1")


@pytest.mark.parametrize("token", ["garbage", "a.b.c", ""])
async def test_invalid_token_is_refused_with_4001(server, token):
    with trio.fail_after(DEADLINE):
        async with raw_socket(server.url) as ws:
            await send_json(ws, "auth", {"meetingAccessToken": token}, id=1)
            error = await receive_json(ws)
            assert error["event"] == "error"
            assert error["id"] == 1
            assert error["data"]["code"] == "AUTH_FAILED"
            assert await close_code(ws) == (4001, [])


async def test_token_signed_with_another_secret_is_refused(server):
    with trio.fail_after(DEADLINE):
        from meshroom.auth import TokenKeys, mint_token

        meeting = await server.meeting()
        forged = mint_token(
            TokenKeys.shared_secret("z" * 40),
            meeting_id=meeting.id,
            emp_id="mallory",
            display_name="M",
            role=Role.HOST,
        )
        refusal = await refused(server.url, forged)
        assert (refusal.code, refusal.close_code) == ("AUTH_FAILED", 4001)
        assert "signature" in refusal.message


async def test_expired_token_is_refused(server):
    with trio.fail_after(DEADLINE):
        meeting = await server.meeting()
        token = server.token(meeting, "alice", now=dt.datetime.now(dt.UTC) - dt.timedelta(hours=2))
        refusal = await refused(server.url, token)
        assert (refusal.code, refusal.close_code) == ("AUTH_FAILED", 4001)
        assert refusal.message == "token has expired"
        assert await server.store.attendance_for_meeting(meeting.id) == []


async def test_token_for_a_meeting_that_does_not_exist(server):
    with trio.fail_after(DEADLINE):
        await server.meeting()
        refusal = await refused(server.url, server.token("no-such-meeting", "alice"))
        assert (refusal.code, refusal.close_code) == ("MEETING_NOT_FOUND", 4003)


async def test_token_for_one_meeting_joins_that_meeting_only(server):
    with trio.fail_after(DEADLINE):
        first, second = await server.meeting(title="one"), await server.meeting(title="two")
        async with (
            connect(server.url, server.token(first, "alice")) as alice,
            connect(server.url, server.token(second, "bob")) as bob,
        ):
            assert alice.snapshot["meeting"]["id"] == first.id
            assert bob.snapshot["meeting"]["id"] == second.id
            assert alice.snapshot["peers"] == [] and bob.snapshot["peers"] == []


async def test_scheduled_meeting_is_not_live(server):
    with trio.fail_after(DEADLINE):
        meeting = await server.meeting(live=False)
        refusal = await refused(server.url, server.token(meeting, "alice", Role.HOST))
        assert (refusal.code, refusal.close_code) == ("MEETING_NOT_LIVE", 4003)


async def test_ended_meeting(server):
    with trio.fail_after(DEADLINE):
        meeting = await server.meeting()
        await server.store.transition(meeting.id, MeetingStatus.ENDED)
        refusal = await refused(server.url, server.token(meeting, "alice", Role.HOST))
        assert (refusal.code, refusal.close_code) == ("MEETING_ENDED", 4006)


async def test_banned_employee(server):
    with trio.fail_after(DEADLINE):
        meeting = await server.meeting()
        await server.store.ban(
            meeting_id=meeting.id,
            emp_id="troll",
            by="host",
            reason=None,
            at=dt.datetime.now(dt.UTC),
        )
        refusal = await refused(server.url, server.token(meeting, "troll"))
        assert (refusal.code, refusal.close_code) == ("BANNED", 4004)


async def test_token_in_the_query_string(server):
    with trio.fail_after(DEADLINE):
        meeting = await server.meeting()
        async with connect(server.url, server.token(meeting, "alice"), token_in_query=True) as a:
            assert a.emp_id == "alice"
            assert (await a.request("ping"))["serverTime"]


async def test_bad_token_in_the_query_string(server):
    with trio.fail_after(DEADLINE):
        refusal = await refused(server.url, "nonsense", token_in_query=True)
        assert (refusal.code, refusal.close_code) == ("AUTH_FAILED", 4001)


@pytest.mark.parametrize(
    "first",
    [
        '{"event":"ping","id":1}',
        '{"event":"signal:offer","data":{"targetEmpId":"x","offer":{}}}',
        "not json",
        '{"event":"auth","data":{}}',
        '{"event":"nope"}',
        b"\x00\x01binary",
    ],
)
async def test_first_frame_not_auth_closes_4000(server, first):
    with trio.fail_after(DEADLINE):
        async with raw_socket(server.url) as ws:
            await ws.send_message(first)
            error = await receive_json(ws)
            assert error["data"]["code"] == "AUTH_REQUIRED"
            assert await close_code(ws) == (4000, [])


async def test_auth_timeout_closes_4002(tmp_path):
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            server = await start_server(nursery, server_settings(tmp_path, auth_timeout=0.3))
            async with raw_socket(server.url) as ws:
                error = await receive_json(ws)  # sent without us saying anything
                assert error["data"]["code"] == "AUTH_TIMEOUT"
                assert await close_code(ws) == (4002, [])
            server.server.request_shutdown()


async def test_refused_join_leaves_no_attendance_and_no_room(server):
    with trio.fail_after(DEADLINE):
        meeting = await server.meeting(live=False)
        await refused(server.url, server.token(meeting, "alice"))
        await refused(server.url, "junk")
        assert server.hub.rooms == {}
        assert await server.store.attendance_for_meeting(meeting.id) == []


async def test_connection_that_never_upgrades_is_dropped(tmp_path):
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            server = await start_server(nursery, server_settings(tmp_path, auth_timeout=0.3))
            stream = await trio.open_tcp_stream("127.0.0.1", server.server.port)
            await stream.send_all(b"GET /meetings HTTP/1.1\r\nHost: x\r\n")  # and nothing more
            assert await stream.receive_some(1024) == b""  # the server hung up
            await stream.aclose()
            server.server.request_shutdown()


async def test_plain_http_request_is_refused(server):
    with trio.fail_after(DEADLINE):
        stream = await trio.open_tcp_stream("127.0.0.1", server.server.port)
        await stream.send_all(b"GET /meetings HTTP/1.1\r\nHost: x\r\n\r\n")
        response = b""
        while chunk := await stream.receive_some(4096):
            response += chunk
        assert response.startswith(b"HTTP/1.1 426 ")
        await stream.aclose()


async def test_wrong_path_is_404(server):
    with trio.fail_after(DEADLINE):
        with pytest.raises(HandshakeError):
            async with open_websocket_url(server.url.replace("/meetings", "/rooms")):
                pass
