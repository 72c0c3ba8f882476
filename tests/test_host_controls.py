"""Host controls end to end: kick, ban, unban, end, promote, demote and who may do what."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from _signaling import DEADLINE, assert_quiet, events_until_closed, request_error

from meshroom import Role
from meshroom.client import JoinRefused, connect


async def join_refusal(server, token: str) -> JoinRefused:
    with pytest.raises(JoinRefused) as info:
        async with connect(server.url, token):
            pass
    return info.value


# Kick


async def test_kick(server):
    with trio.fail_after(DEADLINE):
        meeting = await server.meeting()
        async with (
            connect(server.url, server.token(meeting, "alice", Role.HOST)) as alice,
            connect(server.url, server.token(meeting, "carol")) as carol,
        ):
            async with connect(server.url, server.token(meeting, "bob")) as bob:
                await alice.wait_for("peer:joined", empId="bob")
                await carol.wait_for("peer:joined", empId="bob")
                ack = await alice.kick("bob")
                assert ack == {"targetEmpId": "bob"}
                events = await events_until_closed(bob)
                assert bob.close_code == 4005
                assert [e.name for e in events] == ["session:closed"]
                assert events[0].data["reason"] == "kicked"
                assert events[0].data["by"] == "alice"
            for peer in (alice, carol):
                left = await peer.next_event()
                assert (left.name, left.data) == ("peer:left", {"empId": "bob", "reason": "kicked"})
            assert list(server.hub.rooms[meeting.id].peers) == ["alice", "carol"]
            rows = await server.store.attendance_for_meeting(meeting.id)
            assert [r.leave_reason for r in rows if r.emp_id == "bob"] == ["kicked"]

            # A kick is not a ban: bob may come straight back.
            async with connect(server.url, server.token(meeting, "bob")) as bob_again:
                assert bob_again.emp_id == "bob"
                await alice.wait_for("peer:joined", empId="bob")


async def test_kick_of_an_absent_peer_or_oneself(server):
    with trio.fail_after(DEADLINE):
        meeting = await server.meeting()
        async with connect(server.url, server.token(meeting, "alice", Role.HOST)) as alice:
            assert await request_error(alice, "host:kick", {"targetEmpId": "ghost"}) == (
                "TARGET_NOT_FOUND"
            )
            assert await request_error(alice, "host:kick", {"targetEmpId": "alice"}) == (
                "CANNOT_TARGET_SELF"
            )
            assert await request_error(alice, "host:ban", {"targetEmpId": "alice"}) == (
                "CANNOT_TARGET_SELF"
            )
            await assert_quiet(alice)


# Ban


async def test_ban_then_unban(server):
    with trio.fail_after(DEADLINE):
        meeting = await server.meeting()
        async with connect(server.url, server.token(meeting, "alice", Role.HOST)) as alice:
            async with connect(server.url, server.token(meeting, "bob")) as bob:
                await alice.wait_for("peer:joined", empId="bob")
                assert await alice.ban("bob", reason="spam") == {"targetEmpId": "bob"}
                events = await events_until_closed(bob)
                assert bob.close_code == 4004
                assert [(e.name, e.data["reason"]) for e in events] == [
                    ("session:closed", "banned")
                ]
            left = await alice.next_event()
            assert left.data == {"empId": "bob", "reason": "banned"}
            (ban,) = await server.store.list_bans(meeting.id)
            assert (ban.emp_id, ban.banned_by, ban.reason) == ("bob", "alice", "spam")

            # A freshly minted token does not help.
            refusal = await join_refusal(server, server.token(meeting, "bob"))
            assert (refusal.code, refusal.close_code) == ("BANNED", 4004)
            refusal = await join_refusal(server, server.token(meeting, "bob", Role.COHOST))
            assert refusal.close_code == 4004

            assert await alice.unban("bob") == {"targetEmpId": "bob", "unbanned": True}
            assert await alice.unban("bob") == {"targetEmpId": "bob", "unbanned": False}
            async with connect(server.url, server.token(meeting, "bob")) as bob:
                assert bob.emp_id == "bob"
                await alice.wait_for("peer:joined", empId="bob")


async def test_ban_from_the_hub_removes_a_present_peer(server):
    with trio.fail_after(DEADLINE):
        meeting = await server.meeting()
        async with connect(server.url, server.token(meeting, "bob")) as bob:
            await server.hub.ban(meeting.id, "bob", by=None, reason="api")
            assert await bob.wait_closed() == 4004
        refusal = await join_refusal(server, server.token(meeting, "bob"))
        assert refusal.code == "BANNED"


# End


async def test_host_ends_the_meeting(server):
    with trio.fail_after(DEADLINE):
        meeting = await server.meeting()
        await trio.testing.wait_all_tasks_blocked()
        tasks_before = trio.lowlevel.current_statistics().tasks_living
        names = ["alice", "bob", "carol", "dave"]
        async with (
            connect(server.url, server.token(meeting, "alice", Role.HOST)) as alice,
            connect(server.url, server.token(meeting, "bob")) as bob,
            connect(server.url, server.token(meeting, "carol", Role.COHOST)) as carol,
            connect(server.url, server.token(meeting, "dave")) as dave,
        ):
            room = server.hub.rooms[meeting.id]
            await alice.wait_for("peer:joined", empId="dave")
            ack = await alice.end_meeting()
            assert ack == {"meetingId": meeting.id}

            # By the time the host's ack arrives, the meeting is over in the store.
            rows = await server.store.attendance_for_meeting(meeting.id)
            assert sorted(r.emp_id for r in rows) == names
            assert all(r.left_at is not None for r in rows)
            assert {r.leave_reason for r in rows} == {"meeting-ended"}
            stored = await server.store.get_meeting(meeting.id)
            assert stored is not None and stored.status.value == "ENDED"
            # ... and in the hub: the meeting has no room any more.
            assert meeting.id not in server.hub.rooms
            assert server.hub.live_peers(meeting.id) == []

            for peer in (alice, bob, carol, dave):
                events = await events_until_closed(peer)
                assert peer.close_code == 4006, peer.emp_id
                # No peer:left storm: just the notice, last.
                assert [e.name for e in events if e.name != "peer:joined"] == ["meeting:ended"]
                assert events[-1].data == {"by": "alice"}

        await room.done.wait()
        assert meeting.id not in server.hub.rooms
        rows_after = await server.store.attendance_for_meeting(meeting.id)
        assert rows_after == rows  # nothing overwritten by the late closes

        await trio.testing.wait_all_tasks_blocked()
        assert trio.lowlevel.current_statistics().tasks_living == tasks_before

        refusal = await join_refusal(server, server.token(meeting, "alice", Role.HOST))
        assert (refusal.code, refusal.close_code) == ("MEETING_ENDED", 4006)


async def test_meeting_ended_from_outside_the_room(server):
    with trio.fail_after(DEADLINE):
        meeting = await server.meeting()
        async with (
            connect(server.url, server.token(meeting, "alice", Role.HOST)) as alice,
            connect(server.url, server.token(meeting, "bob")) as bob,
        ):
            room = server.hub.rooms[meeting.id]
            await server.hub.end_meeting(meeting.id, by=None)
            # Returns once every peer is closed.
            assert room.done.is_set() or not room.peers
            for peer in (alice, bob):
                assert await peer.wait_closed() == 4006
                assert (await peer.wait_for("meeting:ended")).data == {"by": None}
        await room.done.wait()
        assert server.hub.rooms == {}


# Who may do what


@pytest.mark.parametrize(
    ("event", "data"),
    [
        ("host:kick", {"targetEmpId": "bob"}),
        ("host:ban", {"targetEmpId": "bob"}),
        ("host:unban", {"targetEmpId": "bob"}),
        ("host:end", {}),
        ("host:promote", {"targetEmpId": "bob"}),
        ("host:demote", {"targetEmpId": "bob"}),
        ("host:kick", {"targetEmpId": "alice"}),
        ("host:kick", {"targetEmpId": "nobody"}),
    ],
)
async def test_a_participant_may_not(server, event, data):
    with trio.fail_after(DEADLINE):
        meeting = await server.meeting()
        async with (
            connect(server.url, server.token(meeting, "alice", Role.HOST)) as alice,
            connect(server.url, server.token(meeting, "bob")) as bob,
            connect(server.url, server.token(meeting, "pat")) as pat,
        ):
            await alice.wait_for("peer:joined", empId="pat")
            await bob.wait_for("peer:joined", empId="pat")
            assert await request_error(pat, event, data) == "FORBIDDEN"
            await assert_quiet(alice, bob, pat)
            assert list(server.hub.rooms[meeting.id].peers) == ["alice", "bob", "pat"]
            assert await server.store.list_bans(meeting.id) == []


async def test_a_cohost_may_kick_a_participant_only(server):
    with trio.fail_after(DEADLINE):
        meeting = await server.meeting()
        async with (
            connect(server.url, server.token(meeting, "alice", Role.HOST)) as alice,
            connect(server.url, server.token(meeting, "cora", Role.COHOST)) as cora,
            connect(server.url, server.token(meeting, "cody", Role.COHOST)),
            connect(server.url, server.token(meeting, "pat")) as pat,
        ):
            await cora.wait_for("peer:joined", empId="pat")
            assert await request_error(cora, "host:kick", {"targetEmpId": "alice"}) == "FORBIDDEN"
            assert await request_error(cora, "host:kick", {"targetEmpId": "cody"}) == "FORBIDDEN"
            assert await request_error(cora, "host:ban", {"targetEmpId": "alice"}) == "FORBIDDEN"
            assert await request_error(cora, "host:ban", {"targetEmpId": "cody"}) == "FORBIDDEN"
            assert await request_error(cora, "host:end") == "FORBIDDEN"
            for event in ("host:promote", "host:demote"):
                for target in ("pat", "cody"):
                    assert await request_error(cora, event, {"targetEmpId": target}) == "FORBIDDEN"
            assert await cora.kick("pat") == {"targetEmpId": "pat"}
            assert await pat.wait_closed() == 4005
            left = await alice.wait_for("peer:left")
            assert left.data == {"empId": "pat", "reason": "kicked"}


async def test_a_cohost_may_ban_a_participant_and_unban(server):
    with trio.fail_after(DEADLINE):
        meeting = await server.meeting()
        async with (
            connect(server.url, server.token(meeting, "alice", Role.HOST)),
            connect(server.url, server.token(meeting, "cora", Role.COHOST)) as cora,
        ):
            async with connect(server.url, server.token(meeting, "pat")) as pat:
                await cora.wait_for("peer:joined", empId="pat")
                await cora.ban("pat")
                assert await pat.wait_closed() == 4004
            assert (await cora.unban("pat"))["unbanned"] is True


async def test_the_host_may_kick_a_cohost(server):
    with trio.fail_after(DEADLINE):
        meeting = await server.meeting()
        async with (
            connect(server.url, server.token(meeting, "alice", Role.HOST)) as alice,
            connect(server.url, server.token(meeting, "cora", Role.COHOST)) as cora,
        ):
            await alice.wait_for("peer:joined", empId="cora")
            await alice.kick("cora")
            assert await cora.wait_closed() == 4005


async def test_promote_and_demote(server):
    with trio.fail_after(DEADLINE):
        meeting = await server.meeting()
        async with (
            connect(server.url, server.token(meeting, "alice", Role.HOST)) as alice,
            connect(server.url, server.token(meeting, "carol")) as carol,
        ):
            async with connect(server.url, server.token(meeting, "bob")) as bob:
                await alice.wait_for("peer:joined", empId="bob")
                await carol.wait_for("peer:joined", empId="bob")
                assert await alice.promote("bob") == {"targetEmpId": "bob", "role": "COHOST"}
                expected = {
                    "empId": "bob",
                    "role": "COHOST",
                    "previousRole": "PARTICIPANT",
                    "reason": "promote",
                    "by": "alice",
                }
                for peer in (alice, bob, carol):
                    changed = await peer.next_event()
                    assert (changed.name, changed.data) == ("role:changed", expected)
                # Bob now has a cohost's powers ...
                assert (await bob.unban("nobody"))["unbanned"] is False
                # ... but promoting twice is refused: a cohost is not a participant.
                assert await request_error(alice, "host:promote", {"targetEmpId": "bob"}) == (
                    "FORBIDDEN"
                )
                assert await request_error(alice, "host:demote", {"targetEmpId": "carol"}) == (
                    "FORBIDDEN"
                )
            await alice.wait_for("peer:left", empId="bob")

            # The promotion survives a reconnect with the same participant token.
            async with connect(server.url, server.token(meeting, "bob")) as bob:
                assert bob.role == "COHOST"
                assert await alice.demote("bob") == {"targetEmpId": "bob", "role": "PARTICIPANT"}
                changed = await bob.wait_for("role:changed")
                assert (changed.data["role"], changed.data["reason"]) == ("PARTICIPANT", "demote")
                assert await request_error(bob, "host:unban", {"targetEmpId": "x"}) == "FORBIDDEN"
            await alice.wait_for("peer:left", empId="bob")
            async with connect(server.url, server.token(meeting, "bob", Role.COHOST)) as bob:
                assert bob.role == "PARTICIPANT"  # the demotion wins over the token


async def test_host_ends_a_meeting_already_ended_in_the_store(server):
    # Another process (the CLI, a second server) marked the meeting ENDED; the room is
    # still live here. The host's host:end must still close the room, not crash.
    with trio.fail_after(DEADLINE):
        from meshroom.store import MeetingStatus

        meeting = await server.meeting()
        async with (
            connect(server.url, server.token(meeting, "alice", Role.HOST)) as alice,
            connect(server.url, server.token(meeting, "bob")) as bob,
        ):
            await alice.wait_for("peer:joined", empId="bob")
            await server.store.transition(meeting.id, MeetingStatus.ENDED)
            assert await alice.end_meeting() == {"meetingId": meeting.id}
            for peer in (alice, bob):
                assert await peer.wait_closed() == 4006
                assert (await peer.wait_for("meeting:ended")).data == {"by": "alice"}


async def test_join_racing_the_end_of_its_meeting_leaves_no_room_behind(server, monkeypatch):
    # The store admits the join (meeting still LIVE), then the meeting ends before the
    # join reaches its room: the join is refused, and no empty room may stay open.
    with trio.fail_after(DEADLINE):
        meeting = await server.meeting()
        real_admit = server.store.admit
        admitted, release = trio.Event(), trio.Event()

        async def slow_admit(**kwargs):
            admission = await real_admit(**kwargs)
            admitted.set()
            await release.wait()
            return admission

        monkeypatch.setattr(server.store, "admit", slow_admit)
        refusals: list[JoinRefused] = []

        async def join() -> None:
            with pytest.raises(JoinRefused) as info:
                async with connect(server.url, server.token(meeting, "late")):
                    pass
            refusals.append(info.value)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(join)
            await admitted.wait()
            await server.hub.end_meeting(meeting.id, by=None)
            release.set()
        assert (refusals[0].code, refusals[0].close_code) == ("MEETING_ENDED", 4006)
        assert server.hub.rooms == {}
        (row,) = await server.store.attendance_for_meeting(meeting.id)
        assert row.leave_reason == "meeting-ended"


async def test_host_alone_ends_the_meeting(server):
    with trio.fail_after(DEADLINE):
        meeting = await server.meeting()
        async with connect(server.url, server.token(meeting, "alice", Role.HOST)) as alice:
            room = server.hub.rooms[meeting.id]
            assert await alice.end_meeting() == {"meetingId": meeting.id}
            assert meeting.id not in server.hub.rooms
            assert await alice.wait_closed() == 4006
        await room.done.wait()
        (row,) = await server.store.attendance_for_meeting(meeting.id)
        assert row.leave_reason == "meeting-ended"


async def test_a_removed_client_gets_connection_error_when_it_sends(server):
    with trio.fail_after(DEADLINE):
        meeting = await server.meeting()
        async with (
            connect(server.url, server.token(meeting, "alice", Role.HOST)) as alice,
            connect(server.url, server.token(meeting, "bob")) as bob,
        ):
            await alice.wait_for("peer:joined", empId="bob")
            await alice.kick("bob")
            assert await bob.wait_closed() == 4005
            with pytest.raises(ConnectionError):
                await bob.request("ping")
            with pytest.raises(ConnectionError):
                await bob.offer("alice", {"sdp": "late"})
            assert (await alice.next_event()).data == {"empId": "bob", "reason": "kicked"}
            await assert_quiet(alice)
