"""Host controls in the core: the kick's rejoin block, removal times, and the events they emit.

Driven through an in-memory hub (no sockets); the wire-level behaviour of every
host command is in test_host_controls.py.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import trio
import trio.testing
from _memhub import MemoryConnection, MemoryHub, memory_hub

from meshroom import Role
from meshroom.core import HubConfig
from meshroom.core.events import (
    MeetingEnded,
    PeerFinished,
    PeerJoined,
    PeerLeft,
    RoleChanged,
)
from meshroom.protocol import LeaveReason
from meshroom.store import MeetingStatus

BLOCK = 60.0
CONFIG = HubConfig(close_timeout=1.0, kick_rejoin_block=BLOCK)


async def _joined(h: MemoryHub, meeting: Any, emp_id: str, role: Role = Role.PARTICIPANT):
    conn, first = await h.join(meeting, emp_id, role)
    assert first["event"] == "room:joined", first
    return conn


async def _request(conn: MemoryConnection, event: str, data: Any, request_id: int) -> dict:
    await conn.send_json(event, data, id=request_id)
    while True:
        frame = await conn.next_frame()
        if frame.get("id") == request_id:
            return frame


async def test_a_kicked_employee_is_refused_until_the_block_is_over(mock_clock, real_time_watchdog):
    async with memory_hub(CONFIG) as h:
        meeting = await h.meeting()
        alice = await _joined(h, meeting, "alice", Role.HOST)
        bob = await _joined(h, meeting, "bob")
        ack = await _request(alice, "host:kick", {"targetEmpId": "bob"}, 1)
        assert ack["event"] == "ack"
        await bob.closed.wait()
        assert bob.close_code == 4005
        again, refusal = await h.join(meeting, "bob")
        assert refusal["event"] == "error"
        assert refusal["data"]["code"] == "KICKED"
        assert "rejoin in 60 s" in refusal["data"]["message"]
        await again.closed.wait()
        assert again.close_code == 4005
        mock_clock.jump(BLOCK - 1)
        _, still = await h.join(meeting, "bob")
        assert still["data"]["code"] == "KICKED"
        mock_clock.jump(2)
        await _joined(h, meeting, "bob")  # the block is over
        assert h.metrics.rejections.labels("kicked")._value.get() == 2


async def test_the_block_is_per_meeting_and_unban_lifts_it(mock_clock, real_time_watchdog):
    async with memory_hub(CONFIG) as h:
        first, second = await h.meeting(), await h.meeting(title="Other")
        alice = await _joined(h, first, "alice", Role.HOST)
        await _joined(h, first, "bob")
        await _request(alice, "host:kick", {"targetEmpId": "bob"}, 1)
        await _joined(h, second, "bob")  # another meeting: no block
        _, refusal = await h.join(first, "bob")
        assert refusal["data"]["code"] == "KICKED"
        unban = await _request(alice, "host:unban", {"targetEmpId": "bob"}, 2)
        assert unban["data"] == {"targetEmpId": "bob", "unbanned": False}
        await _joined(h, first, "bob")


async def test_a_kick_from_the_api_blocks_too(mock_clock, real_time_watchdog):
    async with memory_hub(CONFIG) as h:
        meeting = await h.meeting()
        await _joined(h, meeting, "bob")
        assert await h.hub.controls.kick(meeting.id, "bob", by=None)
        assert not await h.hub.controls.kick(meeting.id, "bob", by=None)  # no longer there
        _, refusal = await h.join(meeting, "bob")
        assert refusal["data"]["code"] == "KICKED"


async def test_no_block_when_it_is_off(mock_clock, real_time_watchdog):
    async with memory_hub(HubConfig(close_timeout=1.0, kick_rejoin_block=0)) as h:
        meeting = await h.meeting()
        await _joined(h, meeting, "bob")
        assert await h.hub.controls.kick(meeting.id, "bob", by="host")
        await _joined(h, meeting, "bob")


async def test_a_removed_peer_that_never_answers_left_when_it_was_removed():
    """left_at is the moment of removal, not the end of a close handshake that hangs."""
    close_timeout = 0.5
    async with memory_hub(HubConfig(close_timeout=close_timeout)) as h:
        meeting = await h.meeting()
        await _joined(h, meeting, "alice", Role.HOST)
        bob = await _joined(h, meeting, "bob")
        bob.stall()  # reads nothing more, never answers the close
        kicked_at = dt.datetime.now(dt.UTC)
        started = trio.current_time()
        with trio.fail_after(10):
            assert await h.hub.controls.kick(meeting.id, "bob", by="alice")
        # The teardown waited out the drain and the close ...
        assert trio.current_time() - started >= 2 * close_timeout
        rows = {r.emp_id: r for r in await h.store.attendance_for_meeting(meeting.id)}
        # ... but the leave is stamped when bob was removed.
        left_at = rows["bob"].left_at
        assert left_at is not None and rows["bob"].leave_reason == "kicked"
        assert (left_at - kicked_at).total_seconds() < close_timeout


async def test_the_core_reports_joins_removals_roles_and_the_end_in_order(
    mock_clock, real_time_watchdog
):
    async with memory_hub(CONFIG) as h:
        meeting = await h.meeting()
        with h.hub.events.subscribe(
            PeerJoined, PeerLeft, PeerFinished, RoleChanged, MeetingEnded
        ) as events:
            alice = await _joined(h, meeting, "alice", Role.HOST)
            await _joined(h, meeting, "bob")
            await _joined(h, meeting, "carol")
            await _request(alice, "host:promote", {"targetEmpId": "carol"}, 1)
            await _request(alice, "host:kick", {"targetEmpId": "bob"}, 2)
            await _request(alice, "host:end", None, 3)
            await trio.testing.wait_all_tasks_blocked()
            seen = []
            while True:
                try:
                    seen.append(events.receive_nowait())
                except trio.WouldBlock:
                    break
        described = [
            (type(e).__name__, getattr(e, "emp_id", None), getattr(e, "reason", None)) for e in seen
        ]
        assert described[:7] == [
            ("PeerJoined", "alice", None),
            ("PeerJoined", "bob", None),
            ("PeerJoined", "carol", None),
            ("RoleChanged", "carol", "promote"),
            ("PeerLeft", "bob", LeaveReason.KICKED),
            ("PeerFinished", "bob", LeaveReason.KICKED),
            ("MeetingEnded", None, None),
        ]
        # Then every remaining peer leaves and finishes, with the meeting's end as reason.
        rest = described[7:]
        assert sorted(rest) == sorted(
            [
                (kind, emp, LeaveReason.MEETING_ENDED)
                for emp in ("alice", "carol")
                for kind in ("PeerLeft", "PeerFinished")
            ]
        )


async def test_a_meeting_ended_elsewhere_closes_its_room_within_the_check_interval(
    mock_clock, real_time_watchdog
):
    """`meshroom meeting end` from a shell writes only the database; the server notices."""
    config = HubConfig(close_timeout=1.0, ended_check_interval=5.0)
    async with memory_hub(config) as h:
        meeting = await h.meeting()
        alice = await _joined(h, meeting, "alice", Role.HOST)
        bob = await _joined(h, meeting, "bob")
        await h.store.transition(meeting.id, MeetingStatus.ENDED)  # another process did it
        await trio.testing.wait_all_tasks_blocked()
        assert h.room(meeting) is not None  # not yet: the next check finds it
        mock_clock.jump(5.0)
        for conn in (alice, bob):
            ended = await conn.wait_for("meeting:ended")
            assert ended["data"] == {"by": None}
            await conn.closed.wait()
            assert conn.close_code == 4006
        assert h.room(meeting) is None
        _, refused = await h.join(meeting, "carol")
        assert refused["data"]["code"] == "MEETING_ENDED"
