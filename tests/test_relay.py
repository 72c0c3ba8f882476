"""WebRTC signal relay: offer, answer and ICE reach their target only, stamped by the server."""

from __future__ import annotations

import pytest
import trio
from _signaling import DEADLINE, assert_quiet, raw_peer, receive_json, send_json

from meshroom import Role
from meshroom.client import MeshroomError, connect

OFFER = {"type": "offer", "sdp": "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\n"}
ANSWER = {"type": "answer", "sdp": "v=0\r\n"}
CANDIDATE = {"candidate": "candidate:1 1 udp 2122260223 10.0.0.1 54400 typ host", "sdpMid": "0"}


@pytest.mark.parametrize(
    ("event", "key", "payload"),
    [
        ("signal:offer", "offer", OFFER),
        ("signal:answer", "answer", ANSWER),
        ("signal:ice", "candidate", CANDIDATE),
        ("signal:ice", "candidate", None),
    ],
)
async def test_signal_reaches_the_target_only(server, event, key, payload):
    with trio.fail_after(DEADLINE):
        meeting = await server.meeting()
        async with (
            connect(server.url, server.token(meeting, "alice", Role.HOST)) as alice,
            connect(server.url, server.token(meeting, "bob")) as bob,
            connect(server.url, server.token(meeting, "carol")) as carol,
        ):
            await alice.wait_for("peer:joined", empId="carol")
            await bob.wait_for("peer:joined", empId="carol")
            ack = await bob.request(event, {"targetEmpId": "alice", key: payload})
            assert ack == {}
            signal = await alice.next_event()
            assert (signal.name, signal.data) == (event, {"fromEmpId": "bob", key: payload})
            # Nobody else got it: a round trip flushes anything queued before it.
            await assert_quiet(alice, bob, carol)


async def test_server_stamps_the_sender_over_a_forged_one(server):
    with trio.fail_after(DEADLINE):
        meeting = await server.meeting()
        async with (
            connect(server.url, server.token(meeting, "alice", Role.HOST)) as alice,
            connect(server.url, server.token(meeting, "mallory")) as mallory,
        ):
            await mallory.send(
                "signal:offer",
                {"targetEmpId": "alice", "offer": OFFER, "fromEmpId": "the-ceo", "x": 1},
            )
            signal = await alice.wait_for("signal:offer")
            assert signal.data == {"fromEmpId": "mallory", "offer": OFFER}


async def test_payload_is_relayed_byte_for_byte_equal(server):
    with trio.fail_after(DEADLINE):
        meeting = await server.meeting()
        payload = {
            "type": "offer",
            "sdp": "a=fingerprint:sha-256 AB:CD\r\n" * 200 + "ünïcödé 🎥",
            "nested": {"list": [1, 2.5, None, True, {"k": "v"}]},
        }
        async with (
            connect(server.url, server.token(meeting, "alice", Role.HOST)) as alice,
            connect(server.url, server.token(meeting, "bob")) as bob,
        ):
            await bob.offer("alice", payload)
            assert (await alice.wait_for("signal:offer")).data["offer"] == payload


async def test_absent_target_is_target_not_found_with_the_request_id(server):
    with trio.fail_after(DEADLINE):
        meeting = await server.meeting()
        async with raw_peer(server.url, server.token(meeting, "alice")) as (ws, _):
            await send_json(
                ws, "signal:offer", {"targetEmpId": "nobody", "offer": OFFER}, id="req-77"
            )
            error = await receive_json(ws)
            assert error["event"] == "error"
            assert error["id"] == "req-77"
            assert error["data"]["code"] == "TARGET_NOT_FOUND"
            assert error["data"]["event"] == "signal:offer"
            # The connection is still good.
            await send_json(ws, "ping", id=2)
            assert (await receive_json(ws))["event"] == "ack"


async def test_absent_target_without_an_id_still_gets_an_error(server):
    with trio.fail_after(DEADLINE):
        meeting = await server.meeting()
        async with raw_peer(server.url, server.token(meeting, "alice")) as (ws, _):
            await send_json(ws, "signal:ice", {"targetEmpId": "nobody", "candidate": None})
            error = await receive_json(ws)
            assert "id" not in error
            assert error["data"]["code"] == "TARGET_NOT_FOUND"


async def test_a_peer_cannot_signal_itself(server):
    with trio.fail_after(DEADLINE):
        meeting = await server.meeting()
        async with connect(server.url, server.token(meeting, "alice")) as alice:
            with pytest.raises(MeshroomError) as info:
                await alice.request("signal:offer", {"targetEmpId": "alice", "offer": OFFER})
            assert info.value.code == "CANNOT_TARGET_SELF"
            await assert_quiet(alice)


async def test_rooms_are_isolated(server):
    with trio.fail_after(DEADLINE):
        first, second = await server.meeting(title="one"), await server.meeting(title="two")
        async with (
            connect(server.url, server.token(first, "alice", Role.HOST)) as alice,
            connect(server.url, server.token(first, "bob")) as bob,
            connect(server.url, server.token(second, "carol", Role.HOST)) as carol,
            connect(server.url, server.token(second, "dave")) as dave,
        ):
            await alice.wait_for("peer:joined", empId="bob")
            await carol.wait_for("peer:joined", empId="dave")
            # Carol is not in Alice's room, whatever she knows about it.
            with pytest.raises(MeshroomError) as info:
                await bob.request("signal:offer", {"targetEmpId": "carol", "offer": OFFER})
            assert info.value.code == "TARGET_NOT_FOUND"
            with pytest.raises(MeshroomError):
                await dave.request("signal:offer", {"targetEmpId": "alice", "offer": OFFER})
            await bob.set_presence(muted=True)
            await bob.offer("alice", OFFER)
            await dave.offer("carol", ANSWER)
            assert (await alice.next_event()).name == "presence:updated"
            assert (await alice.next_event()).data == {"fromEmpId": "bob", "offer": OFFER}
            assert (await carol.next_event()).data == {"fromEmpId": "dave", "offer": ANSWER}
            await assert_quiet(alice, bob, carol, dave)


async def test_same_employee_in_two_meetings_is_two_peers(server):
    with trio.fail_after(DEADLINE):
        first, second = await server.meeting(title="one"), await server.meeting(title="two")
        async with (
            connect(server.url, server.token(first, "alice")) as alice1,
            connect(server.url, server.token(second, "alice")) as alice2,
            connect(server.url, server.token(first, "bob")) as bob,
        ):
            await bob.offer("alice", OFFER)
            assert (await alice1.wait_for("signal:offer")).data["fromEmpId"] == "bob"
            await assert_quiet(alice2)
            assert alice2.close_code is None


async def test_signals_keep_their_order(server):
    with trio.fail_after(DEADLINE):
        meeting = await server.meeting()
        async with (
            connect(server.url, server.token(meeting, "alice", Role.HOST)) as alice,
            connect(server.url, server.token(meeting, "bob")) as bob,
        ):
            for i in range(200):
                await bob.ice("alice", {"candidate": f"c{i}"})
            got = [(await alice.wait_for("signal:ice")).data["candidate"] for _ in range(200)]
            assert got == [{"candidate": f"c{i}"} for i in range(200)]
