"""Resume: a dropped peer keeps its place for a grace window and takes it back, with its queue.

The core is driven with in-memory connections on a MockClock (time moves only
when a test jumps it), so drops, windows and races are exact; then the same
over loopback, through the real listeners.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
import trio
import trio.testing
from _memhub import (
    MemoryConnection,
    MemoryHub,
    memory_hub,
    real_time_watchdog_fixture,  # noqa: F401  (the real_time_watchdog fixture)
)
from _rawws import raw_client
from _servers import server_settings, start_server
from _signaling import ping

from meshroom import Role
from meshroom.client import connect
from meshroom.core import HubConfig
from meshroom.core.events import PeerDetached, PeerFinished

GRACE = 15.0
CONFIG = HubConfig(close_timeout=1.0, resume_grace=GRACE)
DEADLINE = 10


async def _joined(
    h: MemoryHub, meeting: Any, emp_id: str, role: Role = Role.PARTICIPANT
) -> tuple[MemoryConnection, dict[str, Any]]:
    conn, first = await h.join(meeting, emp_id, role)
    assert first["event"] == "room:joined", first
    return conn, first["data"]


async def _offer(conn: MemoryConnection, target: str, n: int) -> None:
    await conn.send_json(
        "signal:offer", {"targetEmpId": target, "offer": {"type": "offer", "sdp": f"v={n}"}}, id=n
    )


async def _acked(conn: MemoryConnection, request_id: Any) -> None:
    frame = await conn.wait_for("ack")
    while frame.get("id") != request_id:
        frame = await conn.wait_for("ack")


def _events(frames: list[dict[str, Any]]) -> list[str]:
    return [f["event"] for f in frames]


def _churn(conn: MemoryConnection, emp_id: str, since: int = 0) -> list[str]:
    """peer:joined / peer:left about ``emp_id`` that ``conn`` got after its ``since``-th frame."""
    conn.frames()
    return [
        f["event"]
        for f in conn.seen[since:]
        if f["event"] in ("peer:joined", "peer:left") and f["data"]["empId"] == emp_id
    ]


async def test_snapshot_carries_a_resume_token_only_when_resume_is_on(
    mock_clock, real_time_watchdog
):
    async with memory_hub(CONFIG) as h:
        meeting = await h.meeting()
        _, alice = await _joined(h, meeting, "alice")
        assert isinstance(alice["resumeToken"], str) and len(alice["resumeToken"]) >= 32
        _, bob = await _joined(h, meeting, "bob")
        assert bob["resumeToken"] != alice["resumeToken"]
    async with memory_hub(HubConfig(resume_grace=0)) as h:
        meeting = await h.meeting()
        _, carol = await _joined(h, meeting, "carol")
        assert "resumeToken" not in carol


async def test_dropped_peer_resumes_with_its_queue_and_nobody_sees_churn(
    mock_clock, real_time_watchdog
):
    async with memory_hub(CONFIG) as h:
        meeting = await h.meeting()
        alice, _ = await _joined(h, meeting, "alice", Role.HOST)
        bob, snapshot = await _joined(h, meeting, "bob")
        await alice.wait_for("peer:joined", empId="bob")
        mark = len(alice.seen)
        peer = h.room(meeting).peers["bob"]

        bob.drop()
        await trio.testing.wait_all_tasks_blocked()
        assert peer.detached and h.room(meeting).peers["bob"] is peer
        assert bob.served.is_set()  # the dropped connection is done with
        # The room goes on talking to bob: it all waits in his outbox.
        for n in (1, 2, 3):
            await _offer(alice, "bob", n)
            await _acked(alice, n)
        await alice.send_json("presence:update", {"muted": True}, id=4)
        await _acked(alice, 4)
        mock_clock.jump(GRACE - 1)

        bob2, resumed = await h.join(meeting, "bob", resume_token=snapshot["resumeToken"])
        assert resumed["event"] == "room:resumed" and resumed["id"] == 0
        data = resumed["data"]
        assert data["self"]["empId"] == "bob"
        assert [p["empId"] for p in data["peers"]] == ["alice"]
        assert data["peers"][0]["presence"]["muted"] is True
        assert data["queued"] == 4
        new_token = data["resumeToken"]
        assert new_token and new_token != snapshot["resumeToken"]
        queued = [await bob2.next_frame() for _ in range(4)]
        assert _events(queued) == ["signal:offer"] * 3 + ["presence:updated"]
        assert [f["data"]["offer"]["sdp"] for f in queued[:3]] == ["v=1", "v=2", "v=3"]
        assert h.room(meeting).peers["bob"] is peer and not peer.detached

        # Alice saw nothing of it, and talks to the same bob.
        await _offer(alice, "bob", 5)
        await _acked(alice, 5)
        assert (await bob2.next_frame())["data"]["offer"]["sdp"] == "v=5"
        assert _churn(alice, "bob", mark) == []
        # One attendance row for the whole session, still open.
        rows = [r for r in await h.store.attendance_for_meeting(meeting.id) if r.emp_id == "bob"]
        assert len(rows) == 1 and rows[0].left_at is None


async def test_after_the_window_it_is_a_leave_as_of_the_drop(mock_clock, real_time_watchdog):
    async with memory_hub(CONFIG) as h:
        meeting = await h.meeting()
        alice, _ = await _joined(h, meeting, "alice", Role.HOST)
        bob, snapshot = await _joined(h, meeting, "bob")
        peer = h.room(meeting).peers["bob"]
        before_drop = dt.datetime.now(dt.UTC)
        bob.drop()
        await trio.testing.wait_all_tasks_blocked()
        after_drop = dt.datetime.now(dt.UTC)
        assert peer.detached
        mock_clock.jump(GRACE - 0.001)
        await trio.testing.wait_all_tasks_blocked()
        assert h.room(meeting).peers.get("bob") is peer  # not yet
        mock_clock.jump(0.002)
        await peer.finished.wait()
        left = await alice.wait_for("peer:left", empId="bob")
        assert left["data"]["reason"] == "disconnected"
        (row,) = [r for r in await h.store.attendance_for_meeting(meeting.id) if r.emp_id == "bob"]
        assert row.leave_reason == "disconnected"
        assert before_drop <= row.left_at <= after_drop  # the drop, not the window's end
        # The credential died with the place: this is an ordinary join, seen by alice.
        _, again = await h.join(meeting, "bob", resume_token=snapshot["resumeToken"])
        assert again["event"] == "room:joined"
        await alice.wait_for("peer:joined", empId="bob")


async def test_heartbeat_timeout_is_resumable_and_leaves_as_timeout(mock_clock, real_time_watchdog):
    async with memory_hub(CONFIG) as h:
        meeting = await h.meeting()
        alice, _ = await _joined(h, meeting, "alice", Role.HOST)
        bob, snapshot = await _joined(h, meeting, "bob")
        carol, _ = await _joined(h, meeting, "carol")
        bob.time_out()
        carol.time_out()
        await trio.testing.wait_all_tasks_blocked()
        assert bob.close_code == 4010 and carol.close_code == 4010
        bob2, resumed = await h.join(meeting, "bob", resume_token=snapshot["resumeToken"])
        assert resumed["event"] == "room:resumed"
        mock_clock.jump(GRACE + 1)
        left = await alice.wait_for("peer:left")
        assert left["data"] == {"empId": "carol", "reason": "timeout"}
        await bob2.send_json("ping", id=9)
        assert (await bob2.wait_for("ack"))["id"] == 9
        rows = {r.emp_id: r for r in await h.store.attendance_for_meeting(meeting.id)}
        assert rows["carol"].leave_reason == "timeout"
        assert rows["bob"].left_at is None


async def test_resume_credential_is_useless_to_another_employee(mock_clock, real_time_watchdog):
    async with memory_hub(CONFIG) as h:
        meeting = await h.meeting()
        alice, _ = await _joined(h, meeting, "alice", Role.HOST)
        bob, snapshot = await _joined(h, meeting, "bob")
        bob.drop()
        await trio.testing.wait_all_tasks_blocked()
        # Mallory holds bob's resume token and a valid token of her own: she joins as herself.
        _, mallory = await h.join(meeting, "mallory", resume_token=snapshot["resumeToken"])
        assert mallory["event"] == "room:joined"
        assert mallory["data"]["self"]["empId"] == "mallory"
        assert h.room(meeting).peers["bob"].detached
        # ... and the token still works for bob.
        _, resumed = await h.join(meeting, "bob", resume_token=snapshot["resumeToken"])
        assert resumed["event"] == "room:resumed"
        assert _churn(alice, "bob") == ["peer:joined"]  # when he first came


async def test_resume_credential_is_single_use(mock_clock, real_time_watchdog):
    async with memory_hub(CONFIG) as h:
        meeting = await h.meeting()
        alice, _ = await _joined(h, meeting, "alice", Role.HOST)
        bob, snapshot = await _joined(h, meeting, "bob")
        bob.drop()
        await trio.testing.wait_all_tasks_blocked()
        bob2, first = await h.join(meeting, "bob", resume_token=snapshot["resumeToken"])
        assert first["event"] == "room:resumed"
        # The old token again: not a resume. The default duplicate policy makes it a
        # fresh join that replaces the resumed connection, as any second join would.
        _, replay = await h.join(meeting, "bob", resume_token=snapshot["resumeToken"])
        assert replay["event"] == "room:joined"
        left = await alice.wait_for("peer:left", empId="bob")
        assert left["data"]["reason"] == "replaced"
        # (Alice hears of it as bob2's close is under way: the two are not ordered.)
        await bob2.closed.wait()
        assert bob2.close_code == 4007
        assert h.metrics.resumes.labels("refused")._value.get() == 1
        assert h.metrics.resumes.labels("resumed")._value.get() == 1


async def test_a_wrong_token_for_the_right_employee_is_an_ordinary_join(
    mock_clock, real_time_watchdog
):
    async with memory_hub(CONFIG) as h:
        meeting = await h.meeting()
        alice, _ = await _joined(h, meeting, "alice", Role.HOST)
        bob, snapshot = await _joined(h, meeting, "bob")
        bob.drop()
        await trio.testing.wait_all_tasks_blocked()
        forged = snapshot["resumeToken"][:-2] + (
            "AA" if snapshot["resumeToken"][-2:] != "AA" else "BB"
        )
        _, again = await h.join(meeting, "bob", resume_token=forged)
        assert again["event"] == "room:joined"
        assert (await alice.wait_for("peer:left", empId="bob"))["data"]["reason"] == "replaced"


async def test_resume_takes_over_a_connection_the_server_still_thinks_alive(
    mock_clock, real_time_watchdog
):
    # The client noticed the drop before the server did: its new connection resumes,
    # the old one is closed with 4013, nothing is lost, nobody sees churn.
    async with memory_hub(CONFIG) as h:
        meeting = await h.meeting()
        alice, _ = await _joined(h, meeting, "alice", Role.HOST)
        bob, snapshot = await _joined(h, meeting, "bob")
        await _offer(alice, "bob", 1)
        await _acked(alice, 1)
        bob2, resumed = await h.join(meeting, "bob", resume_token=snapshot["resumeToken"])
        assert resumed["event"] == "room:resumed"
        await bob.closed.wait()
        assert bob.close_code == 4013
        await _offer(alice, "bob", 2)
        await _acked(alice, 2)
        offer = await bob2.wait_for("signal:offer")
        assert offer["data"]["offer"]["sdp"] == "v=2"
        assert _churn(alice, "bob") == ["peer:joined"]  # when he first came
        await bob.served.wait()
        assert not bob2.served.is_set()


async def test_a_request_in_flight_is_finished_before_a_takeover(mock_clock, real_time_watchdog):
    # A resume never cancels a host command halfway (a ban written but not enforced).
    async with memory_hub(CONFIG) as h:
        meeting = await h.meeting()
        alice, alice_snapshot = await _joined(h, meeting, "alice", Role.HOST)
        _, _ = await _joined(h, meeting, "bob")
        await alice.send_json("host:ban", {"targetEmpId": "bob"}, id=7)
        # No waiting: the resume lands while the ban is (most likely) at the database.
        _, resumed = await h.join(
            meeting, "alice", Role.HOST, resume_token=alice_snapshot["resumeToken"]
        )
        assert resumed["event"] == "room:resumed"
        await trio.testing.wait_all_tasks_blocked()
        assert "bob" not in h.room(meeting).peers
        assert [b.emp_id for b in await h.store.list_bans(meeting.id)] == ["bob"]


@pytest.mark.parametrize("removal", ["kick", "ban", "end"])
async def test_a_detached_peer_can_be_removed_and_leaves_as_of_its_drop(
    mock_clock, real_time_watchdog, removal
):
    async with memory_hub(CONFIG) as h:
        meeting = await h.meeting()
        alice, _ = await _joined(h, meeting, "alice", Role.HOST)
        bob, snapshot = await _joined(h, meeting, "bob")
        peer = h.room(meeting).peers["bob"]
        bob.drop()
        await trio.testing.wait_all_tasks_blocked()
        assert peer.detached
        if removal == "end":
            await alice.send_json("host:end", id=1)
        else:
            await alice.send_json(f"host:{removal}", {"targetEmpId": "bob"}, id=1)
            await _acked(alice, 1)
            (left,) = [f for f in alice.seen if f["event"] == "peer:left"]
            assert left["data"]["reason"] == {"kick": "kicked", "ban": "banned"}[removal]
        await peer.finished.wait()
        (row,) = [r for r in await h.store.attendance_for_meeting(meeting.id) if r.emp_id == "bob"]
        assert (
            row.leave_reason == {"kick": "kicked", "ban": "banned", "end": "meeting-ended"}[removal]
        )
        if removal != "end":  # (an end closes every open row at the end, in the store)
            assert row.left_at == peer.dropped_at
        # The place is gone, and the credential with it.
        if removal != "end":
            _, again = await h.join(meeting, "bob", resume_token=snapshot["resumeToken"])
            assert again["event"] == ("error" if removal == "ban" else "room:joined")


async def test_detached_peer_whose_outbox_fills_up_is_dropped_as_slow(
    mock_clock, real_time_watchdog
):
    config = HubConfig(close_timeout=1.0, resume_grace=GRACE, outbox_size=8, rate_limit=0)
    async with memory_hub(config) as h:
        meeting = await h.meeting()
        alice, _ = await _joined(h, meeting, "alice", Role.HOST)
        bob, _ = await _joined(h, meeting, "bob")
        bob.drop()
        await trio.testing.wait_all_tasks_blocked()
        with h.hub.events.subscribe(PeerFinished) as finished:
            for n in range(9):
                await _offer(alice, "bob", n)
            left = await alice.wait_for("peer:left", empId="bob")
            assert left["data"]["reason"] == "slow-consumer"
            assert (await finished.receive()).emp_id == "bob"  # its teardown is complete
        # Bounded: nothing more was kept for it than its outbox holds.
        rows = {r.emp_id: r for r in await h.store.attendance_for_meeting(meeting.id)}
        assert rows["bob"].leave_reason == "slow-consumer"


async def test_explicit_leave_is_final(mock_clock, real_time_watchdog):
    async with memory_hub(CONFIG) as h:
        meeting = await h.meeting()
        alice, _ = await _joined(h, meeting, "alice", Role.HOST)
        bob, snapshot = await _joined(h, meeting, "bob")
        await bob.send_json("peer:leave", id=1)
        assert (await alice.wait_for("peer:left", empId="bob"))["data"]["reason"] == "left"
        _, again = await h.join(meeting, "bob", resume_token=snapshot["resumeToken"])
        assert again["event"] == "room:joined"


async def test_a_detached_peer_keeps_an_otherwise_empty_room_open(mock_clock, real_time_watchdog):
    async with memory_hub(CONFIG) as h:
        meeting = await h.meeting()
        bob, snapshot = await _joined(h, meeting, "bob")
        room = h.room(meeting)
        bob.drop()
        await trio.testing.wait_all_tasks_blocked()
        assert not room.closed and h.room(meeting) is room
        _, resumed = await h.join(meeting, "bob", resume_token=snapshot["resumeToken"])
        assert resumed["event"] == "room:resumed"
        assert resumed["data"]["queued"] == 0
        assert h.room(meeting) is room


async def test_empty_room_closes_after_the_last_window(mock_clock, real_time_watchdog):
    async with memory_hub(CONFIG) as h:
        meeting = await h.meeting()
        bob, _ = await _joined(h, meeting, "bob")
        room = h.room(meeting)
        bob.drop()
        await trio.testing.wait_all_tasks_blocked()
        assert not room.closed
        mock_clock.jump(GRACE + 1)
        await room.done.wait()
        assert h.room(meeting) is None


async def test_heartbeats_do_not_count_a_detached_peer_as_present(mock_clock, real_time_watchdog):
    async with memory_hub(CONFIG) as h:
        meeting = await h.meeting()
        _, _ = await _joined(h, meeting, "alice")
        bob, _ = await _joined(h, meeting, "bob")
        room = h.room(meeting)
        bob.drop()
        await trio.testing.wait_all_tasks_blocked()
        assert h.hub.live_attendance_ids() == [room.peers["alice"].attendance_id]


# Over loopback


async def _detached(events: trio.MemoryReceiveChannel[Any], emp_id: str) -> None:
    async for event in events:
        if event.emp_id == emp_id:
            return


async def test_resume_over_the_wire_after_an_abrupt_drop(tmp_path):
    settings = server_settings(tmp_path, resume_grace=GRACE)
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            server = await start_server(nursery, settings)
            with server.hub.events.subscribe(PeerDetached) as detachments:
                meeting = await server.meeting()
                async with connect(server.url, server.token(meeting, "alice", Role.HOST)) as alice:
                    async with raw_client(server.url) as bob:
                        joined = await bob.authenticate(server.token(meeting, "bob"))
                        token = joined["data"]["resumeToken"]
                        await alice.wait_for("peer:joined", empId="bob")
                        await bob.abort()  # no close frame: the network just went
                    await _detached(detachments, "bob")
                    await alice.offer("bob", {"type": "offer", "sdp": "while-away"})
                    await alice.set_presence(handRaised=True)
                    async with connect(
                        server.url, server.token(meeting, "bob"), resume_token=token
                    ) as bob2:
                        assert bob2.resumed
                        assert bob2.snapshot["queued"] == 2
                        assert bob2.resume_token not in (None, token)
                        offer = await bob2.next_event()
                        assert (offer.name, offer.data["offer"]["sdp"]) == (
                            "signal:offer",
                            "while-away",
                        )
                        presence = await bob2.next_event()
                        assert presence.name == "presence:updated"
                        await ping(alice)
                        await ping(bob2)
                        assert alice._events.statistics().current_buffer_used == 0  # no churn
                        await bob2.leave()
                    left = await alice.wait_for("peer:left", empId="bob")
                    assert left.data["reason"] == "left"
                rows = await server.store.attendance_for_meeting(meeting.id)
                bob_rows = [r for r in rows if r.emp_id == "bob"]
                assert len(bob_rows) == 1 and bob_rows[0].leave_reason == "left"
                server.server.request_shutdown()


async def test_resume_over_the_quart_route_with_the_token_in_the_url(tmp_path):
    settings = server_settings(tmp_path, resume_grace=GRACE, http_port=0)
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            server = await start_server(nursery, settings)
            with server.hub.events.subscribe(PeerDetached) as detachments:
                meeting = await server.meeting()
                quart_url = server.http_url.replace("http://", "ws://", 1) + "/meetings"
                async with connect(server.url, server.token(meeting, "alice", Role.HOST)) as alice:
                    async with raw_client(quart_url) as bob:
                        joined = await bob.authenticate(server.token(meeting, "bob"))
                        token = joined["data"]["resumeToken"]
                        await bob.abort()
                    await _detached(detachments, "bob")
                    await alice.offer("bob", {"type": "offer", "sdp": "x"})
                    async with connect(
                        quart_url,
                        server.token(meeting, "bob"),
                        token_in_query=True,
                        resume_token=token,
                    ) as bob2:
                        assert bob2.resumed
                        assert (await bob2.next_event()).name == "signal:offer"
                        await bob2.leave()
                    left = await alice.wait_for("peer:left", empId="bob")
                    assert left.data["reason"] == "left"
                server.server.request_shutdown()


async def test_resume_is_off_when_the_grace_is_zero(tmp_path):
    settings = server_settings(tmp_path, resume_grace=0)
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            server = await start_server(nursery, settings)
            meeting = await server.meeting()
            async with connect(server.url, server.token(meeting, "alice", Role.HOST)) as alice:
                async with connect(server.url, server.token(meeting, "bob")) as bob:
                    assert bob.resume_token is None
                    await bob.close()
                left = await alice.wait_for("peer:left", empId="bob")
                assert left.data["reason"] == "disconnected"
            server.server.request_shutdown()


class _SlowToClose(MemoryConnection):
    """A connection whose close hangs until the test lets it go (a dead peer's socket)."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.closing = trio.Event()
        self.let_go = trio.Event()

    async def close(self, code: int, reason: str = "") -> None:
        self.closing.set()
        await self.let_go.wait()
        await super().close(code, reason)


async def _join_slow_to_close(
    h: MemoryHub, meeting: Any, emp_id: str
) -> tuple[_SlowToClose, dict[str, Any]]:
    conn = _SlowToClose(emp_id)
    h.nursery.start_soon(h._serve, conn)
    await conn.send_json("auth", {"meetingAccessToken": h.token(meeting, emp_id)}, id=0)
    first = await conn.next_frame()
    assert first["event"] == "room:joined"
    return conn, first["data"]


async def test_a_resume_while_the_dropped_connection_is_still_closing_is_not_kept_waiting(
    mock_clock,
    real_time_watchdog,
):
    async with memory_hub(CONFIG) as h:
        meeting = await h.meeting()
        alice, _ = await _joined(h, meeting, "alice", Role.HOST)
        bob, snapshot = await _join_slow_to_close(h, meeting, "bob")
        bob.drop()
        await bob.closing.wait()  # the server is closing the dropped connection
        bob2 = h.connect("bob")
        await bob2.send_json(
            "auth",
            {"meetingAccessToken": h.token(meeting, "bob"), "resumeToken": snapshot["resumeToken"]},
            id=0,
        )
        await trio.testing.wait_all_tasks_blocked()
        bob.let_go.set()
        # No time passes (MockClock): room:resumed must not wait for the window to end.
        resumed = await bob2.next_frame()
        assert resumed["event"] == "room:resumed"
        assert _churn(alice, "bob") == ["peer:joined"]


async def test_a_kick_while_the_dropped_connection_is_still_closing_completes_at_once(
    mock_clock,
    real_time_watchdog,
):
    async with memory_hub(CONFIG) as h:
        meeting = await h.meeting()
        alice, _ = await _joined(h, meeting, "alice", Role.HOST)
        bob, _ = await _join_slow_to_close(h, meeting, "bob")
        peer = h.room(meeting).peers["bob"]
        bob.drop()
        await bob.closing.wait()
        await alice.send_json("host:kick", {"targetEmpId": "bob"}, id=1)
        await trio.testing.wait_all_tasks_blocked()
        bob.let_go.set()
        await _acked(alice, 1)  # without the window having to run out
        assert peer.finished.is_set()
        (row,) = [r for r in await h.store.attendance_for_meeting(meeting.id) if r.emp_id == "bob"]
        assert row.leave_reason == "kicked"


async def test_a_queue_overflowing_while_the_dropped_connection_closes_ends_the_place(
    mock_clock,
    real_time_watchdog,
):
    config = HubConfig(close_timeout=1.0, resume_grace=GRACE, outbox_size=4, rate_limit=0)
    async with memory_hub(config) as h:
        meeting = await h.meeting()
        alice, _ = await _joined(h, meeting, "alice", Role.HOST)
        bob, _ = await _join_slow_to_close(h, meeting, "bob")
        peer = h.room(meeting).peers["bob"]
        bob.drop()
        await bob.closing.wait()
        for n in range(5):  # one more than bob's queue holds: a frame is lost to him
            await _offer(alice, "bob", n)
        await trio.testing.wait_all_tasks_blocked()
        bob.let_go.set()
        await peer.finished.wait()  # at once: no place is kept for a peer that lost frames
        left = await alice.wait_for("peer:left", empId="bob")
        assert left["data"]["reason"] == "slow-consumer"
