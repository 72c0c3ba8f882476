"""Error handling: every bad frame gets an error and the connection keeps working; slow readers."""

from __future__ import annotations

import json

import pytest
import trio
from _signaling import (
    DEADLINE,
    assert_quiet,
    close_code,
    raw_peer,
    raw_socket,
    receive_json,
    send_json,
    server_settings,
    start_server,
)

from meshroom import Role
from meshroom.client import connect

OFFER = {"type": "offer", "sdp": "v=0"}


async def still_relays(ws, alice) -> None:
    """The raw peer ``ws`` (bob) can still relay to alice and get its ack."""
    await send_json(ws, "signal:offer", {"targetEmpId": "alice", "offer": OFFER}, id="after")
    ack = await receive_json(ws)
    assert (ack["event"], ack["id"]) == ("ack", "after")
    signal = await alice.wait_for("signal:offer")
    assert signal.data == {"fromEmpId": "bob", "offer": OFFER}


@pytest.mark.parametrize(
    ("frame", "code", "request_id", "field"),
    [
        ("{not json", "BAD_JSON", None, None),
        ("", "BAD_JSON", None, None),
        ("[" * 5000, "BAD_JSON", None, None),
        ("[1, 2]", "BAD_FRAME", None, None),
        ('{"id": 3}', "BAD_FRAME", 3, None),
        ('{"event": "signal:teleport", "id": 4}', "UNKNOWN_EVENT", 4, None),
        (
            '{"event": "signal:offer", "id": 5, "data": {"offer": {}}}',
            "INVALID_FIELD",
            5,
            "data.targetEmpId",
        ),
        (
            '{"event": "signal:offer", "id": 6, "data": {"targetEmpId": "alice"}}',
            "INVALID_FIELD",
            6,
            "data.offer",
        ),
        (
            '{"event": "signal:offer", "id": 7, "data": {"targetEmpId": 1, "offer": {}}}',
            "INVALID_FIELD",
            7,
            "data.targetEmpId",
        ),
        (
            '{"event": "signal:ice", "id": 8, "data": {"targetEmpId": "alice", "candidate": 5}}',
            "INVALID_FIELD",
            8,
            "data.candidate",
        ),
        (
            '{"event": "presence:update", "id": 9, "data": {"muted": "yes"}}',
            "INVALID_FIELD",
            9,
            "data.muted",
        ),
        ('{"event": "ping", "id": 10, "data": []}', "INVALID_FIELD", 10, "data"),
        ('{"event": "ping", "id": true}', "INVALID_FIELD", None, "id"),
        (
            '{"event": "auth", "id": 11, "data": {"meetingAccessToken": "x"}}',
            "ALREADY_AUTHENTICATED",
            11,
            None,
        ),
    ],
)
async def test_bad_frame_gets_an_error_and_the_connection_keeps_working(
    server, frame, code, request_id, field
):
    with trio.fail_after(DEADLINE):
        meeting = await server.meeting()
        async with connect(server.url, server.token(meeting, "alice", Role.HOST)) as alice:
            async with raw_peer(server.url, server.token(meeting, "bob")) as (ws, _):
                await ws.send_message(frame)
                error = await receive_json(ws)
                assert error["event"] == "error"
                assert error["data"]["code"] == code
                assert error.get("id") == request_id
                assert error["data"].get("field") == field
                assert error["data"]["message"]
                await still_relays(ws, alice)
            await alice.wait_for("peer:left", empId="bob")
            assert await server.store.list_bans(meeting.id) == []


async def test_binary_frame_gets_an_error_and_the_connection_keeps_working(server):
    with trio.fail_after(DEADLINE):
        meeting = await server.meeting()
        async with (
            connect(server.url, server.token(meeting, "alice", Role.HOST)) as alice,
            raw_peer(server.url, server.token(meeting, "bob")) as (ws, _),
        ):
            await ws.send_message(json.dumps({"event": "ping", "id": 1}).encode())
            error = await receive_json(ws)
            assert error["data"]["code"] == "BINARY_NOT_SUPPORTED"
            await still_relays(ws, alice)


@pytest.mark.parametrize("extra", [1, 100_000])
async def test_oversized_frame_gets_an_error_and_the_connection_keeps_working(tmp_path, extra):
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            server = await start_server(nursery, server_settings(tmp_path, max_message_bytes=4096))
            meeting = await server.meeting()
            async with (
                connect(server.url, server.token(meeting, "alice", Role.HOST)) as alice,
                raw_peer(server.url, server.token(meeting, "bob")) as (ws, _),
            ):
                big = {"targetEmpId": "alice", "offer": {"sdp": ""}}
                overhead = len(json.dumps({"event": "signal:offer", "data": big}))
                big["offer"]["sdp"] = "x" * (4096 - overhead + extra)
                await send_json(ws, "signal:offer", big)
                error = await receive_json(ws)
                assert error["data"]["code"] == "FRAME_TOO_LARGE"
                await still_relays(ws, alice)
                # Exactly at the limit is fine.
                big["offer"]["sdp"] = "x" * (4096 - overhead)
                await send_json(ws, "signal:offer", big)
                assert len((await alice.wait_for("signal:offer")).data["offer"]["sdp"]) == (
                    4096 - overhead
                )
                await assert_quiet(alice)
            server.server.request_shutdown()


async def test_many_errors_in_a_row_do_not_disconnect(server):
    with trio.fail_after(DEADLINE):
        meeting = await server.meeting()
        async with (
            connect(server.url, server.token(meeting, "alice", Role.HOST)) as alice,
            raw_peer(server.url, server.token(meeting, "bob")) as (ws, _),
        ):
            for i in range(100):
                await ws.send_message(f"garbage {i}")
            for _ in range(100):
                assert (await receive_json(ws))["data"]["code"] == "BAD_JSON"
            await still_relays(ws, alice)


async def test_ping_answers_with_the_server_time(server):
    with trio.fail_after(DEADLINE):
        meeting = await server.meeting()
        async with raw_peer(server.url, server.token(meeting, "bob")) as (ws, _):
            await send_json(ws, "ping", id="p")
            ack = await receive_json(ws)
            assert ack["id"] == "p" and "T" in ack["data"]["serverTime"]


async def test_slow_consumer_is_disconnected_and_the_sender_never_blocks(tmp_path):
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            server = await start_server(
                nursery, server_settings(tmp_path, outbox_size=8, close_timeout=5)
            )
            meeting = await server.meeting()
            # Slow: a raw client whose library stops reading the socket once one
            # message is waiting, and which never reads until told to.
            async with (
                connect(server.url, server.token(meeting, "alice", Role.HOST)) as alice,
                raw_socket(server.url, queue=1) as slow,
            ):
                await send_json(slow, "auth", {"meetingAccessToken": server.token(meeting, "slow")})
                await alice.wait_for("peer:joined", empId="slow")
                slow_peer = server.hub.rooms[meeting.id].peers["slow"]
                payload = {"type": "offer", "sdp": "x" * 2000}
                sent = 0

                async def flood() -> None:
                    nonlocal sent
                    while True:
                        await alice.offer("slow", payload)
                        sent += 1

                async with trio.open_nursery() as flooding:
                    flooding.start_soon(flood)
                    left = await alice.wait_for("peer:left", empId="slow")
                    flooding.cancel_scope.cancel()
                assert left.data["reason"] == "slow-consumer"
                assert sent > 8
                # The sender was never blocked: it still gets answers at once.
                assert (await alice.request("ping"))["serverTime"]
                assert "slow" not in server.hub.rooms[meeting.id].peers

                # Once the slow client reads again it finds its frames, then 4009.
                code, frames = await close_code(slow)
                assert code == 4009
                assert frames[0]["event"] == "room:joined"
                offers = [f for f in frames if f["event"] == "signal:offer"]
                assert offers and all(f["data"]["fromEmpId"] == "alice" for f in offers)
                # ... and, last, the notice saying why (its full queue was dropped for it).
                assert frames[-1]["event"] == "session:closed"
                assert frames[-1]["data"]["reason"] == "slow-consumer"
                await slow_peer.finished.wait()  # its leave is written
            rows = await server.store.attendance_for_meeting(meeting.id)
            server.server.request_shutdown()
        assert {r.emp_id: r.leave_reason for r in rows}["slow"] == "slow-consumer"
