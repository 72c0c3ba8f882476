"""Room management: snapshots, joins and leaves, teardown, presence, host hand-over, duplicates."""

from __future__ import annotations

from contextlib import AsyncExitStack

import trio
from _memhub import memory_hub
from _signaling import (
    DEADLINE,
    assert_quiet,
    events_until_closed,
    request_error,
    server_settings,
    start_server,
)

from meshroom import Role, SqlStore
from meshroom.client import JoinRefused, connect


async def test_snapshot_lists_the_meeting_the_peers_present_and_ice_servers(server):
    with trio.fail_after(DEADLINE):
        meeting = await server.meeting(title="Planning", host="alice")
        async with connect(server.url, server.token(meeting, "alice", Role.HOST)) as alice:
            assert alice.snapshot["peers"] == []
            await alice.set_presence(muted=True)
            async with connect(server.url, server.token(meeting, "bob", name="Bob B")) as bob:
                snapshot = bob.snapshot
                assert snapshot["self"] == {
                    "empId": "bob",
                    "displayName": "Bob B",
                    "role": "PARTICIPANT",
                    "presence": {"muted": False, "cameraOff": False, "handRaised": False},
                }
                assert snapshot["meeting"] == {
                    "id": meeting.id,
                    "title": "Planning",
                    "roomCode": meeting.room_code,
                    "hostEmpId": "alice",
                }
                assert snapshot["peers"] == [
                    {
                        "empId": "alice",
                        "displayName": "Alice",
                        "role": "HOST",
                        "presence": {"muted": True, "cameraOff": False, "handRaised": False},
                    }
                ]
                ice = snapshot["iceServers"]
                assert ice and all(server["urls"] for server in ice)
                assert ice[0]["urls"][0].startswith("stun:")


async def test_snapshot_carries_turn_credentials_for_this_peer(tmp_path):
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            settings = server_settings(
                tmp_path, turn_urls="turn:turn.example:3478", turn_secret="k" * 20
            )
            server = await start_server(nursery, settings)
            meeting = await server.meeting()
            async with connect(server.url, server.token(meeting, "carol")) as carol:
                turn = carol.snapshot["iceServers"][-1]
                assert turn["urls"] == ["turn:turn.example:3478"]
                assert turn["username"].endswith(":carol")
                assert turn["credential"]
            server.server.request_shutdown()


async def test_peers_are_listed_in_join_order(server):
    with trio.fail_after(DEADLINE):
        meeting = await server.meeting()
        async with AsyncExitStack() as stack:
            for name in ("p1", "p2", "p3"):
                await stack.enter_async_context(connect(server.url, server.token(meeting, name)))
            last = await stack.enter_async_context(connect(server.url, server.token(meeting, "p4")))
            assert [p["empId"] for p in last.snapshot["peers"]] == ["p1", "p2", "p3"]


async def test_peer_joined_goes_to_the_others_only(server):
    with trio.fail_after(DEADLINE):
        meeting = await server.meeting()
        async with (
            connect(server.url, server.token(meeting, "alice", Role.HOST)) as alice,
            connect(server.url, server.token(meeting, "bob")) as bob,
        ):
            joined = await alice.next_event()
            assert joined.name == "peer:joined"
            assert joined.data == {
                "empId": "bob",
                "displayName": "Bob",
                "role": "PARTICIPANT",
                "presence": {"muted": False, "cameraOff": False, "handRaised": False},
            }
            await assert_quiet(bob, alice)


async def test_clean_leave(server):
    with trio.fail_after(DEADLINE):
        meeting = await server.meeting()
        async with connect(server.url, server.token(meeting, "alice", Role.HOST)) as alice:
            async with connect(server.url, server.token(meeting, "bob")) as bob:
                await alice.wait_for("peer:joined", empId="bob")
                await bob.leave()  # acked
                assert await bob.wait_closed() == 1000
            left = await alice.wait_for("peer:left")
            assert left.data == {"empId": "bob", "reason": "left"}
            room = server.hub.rooms[meeting.id]
            assert list(room.peers) == ["alice"]
        await room.done.wait()  # every leave is written
        rows = {r.emp_id: r for r in await server.store.attendance_for_meeting(meeting.id)}
        assert rows["bob"].leave_reason == "left"


async def test_disconnect(server):
    with trio.fail_after(DEADLINE):
        meeting = await server.meeting()
        async with connect(server.url, server.token(meeting, "alice", Role.HOST)) as alice:
            async with connect(server.url, server.token(meeting, "bob")) as bob:
                await alice.wait_for("peer:joined", empId="bob")
                await bob.close()
            left = await alice.wait_for("peer:left")
            assert left.data == {"empId": "bob", "reason": "disconnected"}


async def test_abrupt_disconnect_without_close_frame(server):
    with trio.fail_after(DEADLINE):
        meeting = await server.meeting()
        async with connect(server.url, server.token(meeting, "alice", Role.HOST)) as alice:
            stream = await trio.open_tcp_stream("127.0.0.1", server.server.port)
            # A client that authenticates with the token in the query and then vanishes.
            token = server.token(meeting, "ghost")
            await stream.send_all(
                (
                    f"GET /meetings?meetingAccessToken={token} HTTP/1.1\r\n"
                    f"Host: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                    "Sec-WebSocket-Version: 13\r\n\r\n"
                ).encode()
            )
            await alice.wait_for("peer:joined", empId="ghost")
            await trio.aclose_forcefully(stream)
            left = await alice.wait_for("peer:left")
            assert left.data == {"empId": "ghost", "reason": "disconnected"}


async def test_empty_room_is_torn_down(server):
    with trio.fail_after(DEADLINE):
        meeting = await server.meeting()
        async with connect(server.url, server.token(meeting, "alice", Role.HOST)) as alice:
            room = server.hub.rooms[meeting.id]
            async with connect(server.url, server.token(meeting, "bob")):
                await alice.wait_for("peer:joined")
            await alice.wait_for("peer:left")
            assert server.hub.rooms[meeting.id] is room
        await room.done.wait()
        assert room.closed
        assert server.hub.rooms == {}
        rows = await server.store.attendance_for_meeting(meeting.id)
        assert len(rows) == 2 and all(r.left_at is not None for r in rows)

        # The next join opens a fresh room.
        async with connect(server.url, server.token(meeting, "alice", Role.HOST)):
            assert server.hub.rooms[meeting.id] is not room


async def test_presence_update_is_broadcast_to_the_others(server):
    with trio.fail_after(DEADLINE):
        meeting = await server.meeting()
        async with AsyncExitStack() as stack:
            alice = await stack.enter_async_context(
                connect(server.url, server.token(meeting, "alice", Role.HOST))
            )
            bob = await stack.enter_async_context(connect(server.url, server.token(meeting, "bob")))
            carol = await stack.enter_async_context(
                connect(server.url, server.token(meeting, "carol"))
            )
            await alice.wait_for("peer:joined", empId="carol")
            await bob.wait_for("peer:joined", empId="carol")

            ack = await bob.set_presence(muted=True, handRaised=True)
            expected = {"muted": True, "cameraOff": False, "handRaised": True}
            assert ack == {"presence": expected}
            for other in (alice, carol):
                update = await other.wait_for("presence:updated")
                assert update.data == {"empId": "bob", "presence": expected}

            # Partial updates merge; a null counts as "unchanged".
            ack = await bob.request("presence:update", {"handRaised": False, "muted": None})
            assert ack["presence"] == {"muted": True, "cameraOff": False, "handRaised": False}
            assert (await carol.wait_for("presence:updated")).data["presence"] == ack["presence"]

            await assert_quiet(bob)  # not echoed to itself

            async with connect(server.url, server.token(meeting, "dave")) as dave:
                (bob_seen,) = [p for p in dave.snapshot["peers"] if p["empId"] == "bob"]
                assert bob_seen["presence"] == ack["presence"]


async def test_host_leaving_hands_host_to_a_cohost_and_back(server):
    with trio.fail_after(DEADLINE):
        meeting = await server.meeting(host="alice")
        async with (
            connect(server.url, server.token(meeting, "bob")) as bob,
            connect(server.url, server.token(meeting, "carol", Role.COHOST)) as carol,
        ):
            async with connect(server.url, server.token(meeting, "alice", Role.HOST)) as alice:
                await bob.wait_for("peer:joined", empId="alice")
                await carol.wait_for("peer:joined", empId="alice")
                await alice.leave()
            for peer in (bob, carol):
                assert (await peer.next_event()).data == {"empId": "alice", "reason": "left"}
                changed = await peer.next_event()
                assert (changed.name, changed.data) == (
                    "role:changed",
                    {
                        "empId": "carol",
                        "role": "HOST",
                        "previousRole": "COHOST",
                        "reason": "host-left",
                        "by": None,
                    },
                )
            # The acting host has the host's powers.
            await carol.request("host:promote", {"targetEmpId": "bob"})
            await carol.request("host:demote", {"targetEmpId": "bob"})

            async with connect(server.url, server.token(meeting, "alice", Role.HOST)) as back:
                assert back.role == "HOST"
                (acting,) = [p for p in back.snapshot["peers"] if p["empId"] == "carol"]
                assert acting["role"] == "HOST"
                changed = await back.next_event()
                assert (changed.name, changed.data) == (
                    "role:changed",
                    {
                        "empId": "carol",
                        "role": "COHOST",
                        "previousRole": "HOST",
                        "reason": "host-returned",
                        "by": None,
                    },
                )
                for peer in (bob, carol):
                    await peer.wait_for("peer:joined", empId="alice")
                    returned = await peer.wait_for("role:changed", reason="host-returned")
                    assert (returned.data["empId"], returned.data["role"]) == ("carol", "COHOST")
                room = server.hub.rooms[meeting.id]
                roles = {p.emp_id: p.role for p in room.peers.values()}
                assert roles == {"alice": Role.HOST, "bob": Role.PARTICIPANT, "carol": Role.COHOST}
                # And carol lost the host's powers again.
                refusal = await request_error(carol, "host:end")
                assert refusal == "FORBIDDEN"


async def test_host_leaving_without_cohost_hands_host_to_the_earliest_participant(server):
    with trio.fail_after(DEADLINE):
        meeting = await server.meeting(host="alice")
        async with (
            connect(server.url, server.token(meeting, "bob")) as bob,
            connect(server.url, server.token(meeting, "carol")) as carol,
        ):
            async with connect(server.url, server.token(meeting, "alice", Role.HOST)):
                await bob.wait_for("peer:joined", empId="alice")
                await carol.wait_for("peer:joined", empId="alice")
            # Alice disconnected without a peer:leave.
            for peer in (bob, carol):
                left = await peer.wait_for("peer:left")
                assert left.data == {"empId": "alice", "reason": "disconnected"}
                changed = await peer.next_event()
                assert changed.name == "role:changed"
                assert changed.data == {
                    "empId": "bob",
                    "role": "HOST",
                    "previousRole": "PARTICIPANT",
                    "reason": "host-left",
                    "by": None,
                }
            # Bob may now end the meeting: the room is never left without a host.
            await bob.end_meeting()
            assert await carol.wait_closed() == 4006


async def test_duplicate_join_replaces_the_old_connection_by_default(server):
    with trio.fail_after(DEADLINE):
        meeting = await server.meeting()
        async with connect(server.url, server.token(meeting, "alice", Role.HOST)) as alice:
            room = server.hub.rooms[meeting.id]
            async with connect(server.url, server.token(meeting, "bob")) as old:
                await alice.wait_for("peer:joined", empId="bob")
                async with connect(server.url, server.token(meeting, "bob")) as new:
                    assert [p["empId"] for p in new.snapshot["peers"]] == ["alice"]
                    notice = await old.wait_for("session:closed")
                    assert notice.data["reason"] == "replaced"
                    assert await old.wait_closed() == 4007
                    left = await alice.next_event()
                    assert (left.name, left.data) == (
                        "peer:left",
                        {"empId": "bob", "reason": "replaced"},
                    )
                    joined = await alice.next_event()
                    assert (joined.name, joined.data["empId"]) == ("peer:joined", "bob")
                    # The new connection works.
                    await new.offer("alice", {"sdp": "x"})
                    assert (await alice.wait_for("signal:offer")).data["fromEmpId"] == "bob"
                    assert list(server.hub.rooms[meeting.id].peers) == ["alice", "bob"]
        await room.done.wait()
        rows = [
            r for r in await server.store.attendance_for_meeting(meeting.id) if r.emp_id == "bob"
        ]
        assert [r.leave_reason for r in rows] == ["replaced", "disconnected"]


async def test_duplicate_join_is_refused_under_the_reject_policy(tmp_path):
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            server = await start_server(
                nursery, server_settings(tmp_path, duplicate_policy="reject")
            )
            meeting = await server.meeting()
            async with (
                connect(server.url, server.token(meeting, "alice", Role.HOST)) as alice,
                connect(server.url, server.token(meeting, "bob")) as old,
            ):
                await alice.wait_for("peer:joined", empId="bob")
                try:
                    async with connect(server.url, server.token(meeting, "bob")):
                        raise AssertionError("the second connection was admitted")
                except JoinRefused as refusal:
                    assert (refusal.code, refusal.close_code) == ("DUPLICATE_SESSION", 4008)
                # The old connection keeps working, and nobody saw anything happen.
                await old.offer("alice", {"sdp": "still here"})
                offer = await alice.next_event()
                assert (offer.name, offer.data["fromEmpId"]) == ("signal:offer", "bob")
                await assert_quiet(old)
            server.server.request_shutdown()


async def test_acting_host_reconnecting_leaves_the_room_with_a_host(server):
    # Alice (host) leaves: Bob acts as host. Bob's network blips and his new
    # connection replaces the old one: the room must not be left without a host.
    with trio.fail_after(DEADLINE):
        meeting = await server.meeting(host="alice")
        async with connect(server.url, server.token(meeting, "bob")) as bob:
            async with connect(server.url, server.token(meeting, "alice", Role.HOST)):
                await bob.wait_for("peer:joined", empId="alice")
            assert (await bob.wait_for("role:changed")).data["role"] == "HOST"
            async with connect(server.url, server.token(meeting, "bob")) as bob_again:
                assert await bob.wait_closed() == 4007
                changed = await bob_again.wait_for("role:changed")
                assert (changed.data["empId"], changed.data["role"]) == ("bob", "HOST")
                async with connect(server.url, server.token(meeting, "carol")) as carol:
                    assert [(p["empId"], p["role"]) for p in carol.snapshot["peers"]] == [
                        ("bob", "HOST")
                    ]
                    # ... and bob can still end the meeting.
                    await bob_again.end_meeting()
                    assert await carol.wait_closed() == 4006


async def test_server_shutdown_closes_every_peer_with_1001_and_records_the_leaves(tmp_path):
    with trio.fail_after(DEADLINE):
        settings = server_settings(tmp_path)
        async with trio.open_nursery() as nursery:
            server = await start_server(nursery, settings)
            meeting = await server.meeting()
            async with (
                connect(server.url, server.token(meeting, "alice", Role.HOST)) as alice,
                connect(server.url, server.token(meeting, "bob")) as bob,
            ):
                await alice.wait_for("peer:joined", empId="bob")
                server.server.request_shutdown()
                for peer in (alice, bob):
                    events = await events_until_closed(peer)
                    assert peer.close_code == 1001
                    # server:shutdown (with a reconnect hint), then the usual session:closed.
                    assert [e.name for e in events] == ["server:shutdown", "session:closed"]
                    assert 5000 <= events[0].data["reconnectAfterMs"] <= 10000
                    assert events[1].data["reason"] == "server-shutdown"
        # Server.run has returned: every leave was written before it did.
        store = SqlStore(settings.database_url)
        await store.open()
        try:
            rows = await store.attendance_for_meeting(meeting.id)
        finally:
            await store.close()
        assert sorted((r.emp_id, r.leave_reason) for r in rows) == [
            ("alice", "server-shutdown"),
            ("bob", "server-shutdown"),
        ]


async def test_a_later_snapshot_shows_each_peers_role_and_presence_as_they_are_now():
    """A peer's public view is encoded once and reused in every later joiner's snapshot;
    a change of presence or of role must show in the next one, for every field."""

    def listed(snapshot: dict, emp_id: str) -> dict:
        return next(p for p in snapshot["data"]["peers"] if p["empId"] == emp_id)

    async def acked(conn, request_id: int) -> None:
        while not (
            (frame := await conn.next_frame())["event"] == "ack" and frame["id"] == request_id
        ):
            pass

    with trio.fail_after(DEADLINE):
        async with memory_hub() as mh:
            meeting = await mh.meeting(host="alice")
            alice, _ = await mh.join(meeting, "alice", Role.HOST)
            bob, _ = await mh.join(meeting, "bob")
            _, first = await mh.join(meeting, "cara")  # bob's view is encoded now
            assert listed(first, "bob")["role"] == "PARTICIPANT"
            assert listed(first, "bob")["presence"]["handRaised"] is False

            await bob.send_json("presence:update", {"handRaised": True, "muted": True}, id=1)
            await acked(bob, 1)
            _, second = await mh.join(meeting, "dan")
            assert listed(second, "bob")["presence"] == {
                "muted": True,
                "cameraOff": False,
                "handRaised": True,
            }
            assert listed(second, "bob")["role"] == "PARTICIPANT"

            await alice.send_json("host:promote", {"targetEmpId": "bob"}, id=2)
            await acked(alice, 2)
            _, third = await mh.join(meeting, "eve")
            assert listed(third, "bob") == {
                "empId": "bob",
                "displayName": "Bob",
                "role": "COHOST",
                "presence": {"muted": True, "cameraOff": False, "handRaised": True},
            }
            assert listed(third, "alice")["role"] == "HOST"
