"""A leave is recorded on every exit path, on every backend, with the right reason."""

from __future__ import annotations

import datetime as dt

import pytest
import trio

from meshroom import Role
from meshroom.core import HubConfig
from meshroom.store import RECOVERED_LEAVE_REASON, AttendanceRecord

from .helpers import running_hub

pytestmark = pytest.mark.usefixtures("store")


def closed(record: AttendanceRecord, reason: str) -> None:
    assert record.left_at is not None, record
    assert record.leave_reason == reason, record
    assert record.left_at >= record.joined_at
    assert record.duration_seconds == pytest.approx(
        (record.left_at - record.joined_at).total_seconds()
    )
    assert record.closed_by_recovery is False
    assert record.leave_reason != RECOVERED_LEAVE_REASON


async def test_join_is_recorded_before_admission(store):
    async with running_hub(store) as h:
        meeting = await h.live_meeting()
        with trio.fail_after(10):
            await h.join(meeting, "ann")
        # room:joined reached the client, so the row was open before it.
        (row,) = (await h.rows(meeting))["ann"]
        assert row.left_at is None and row.leave_reason is None


async def test_clean_leave(store):
    async with running_hub(store) as h:
        meeting = await h.live_meeting()
        with trio.fail_after(10):
            ann = await h.join(meeting, "ann")
            await ann.request("peer:leave")
            await ann.served.wait()
        closed((await h.rows(meeting))["ann"][0], "left")


async def test_disconnect(store):
    async with running_hub(store) as h:
        meeting = await h.live_meeting()
        with trio.fail_after(10):
            ann = await h.join(meeting, "ann")
            ann.disconnect()
            await ann.served.wait()
        closed((await h.rows(meeting))["ann"][0], "disconnected")


async def test_heartbeat_timeout(store):
    async with running_hub(store) as h:
        meeting = await h.live_meeting()
        with trio.fail_after(10):
            ann = await h.join(meeting, "ann")
            ann.stop_answering()
            await ann.served.wait()
        closed((await h.rows(meeting))["ann"][0], "timeout")


async def test_drop_without_resume_leaves_when_it_dropped(store):
    """A dropped peer keeps its place for a resume; if none comes, it left at the drop."""
    config = HubConfig(close_timeout=1.0, auth_timeout=5.0, resume_grace=0.5)
    async with running_hub(store, config=config) as h:
        meeting = await h.live_meeting()
        with trio.fail_after(10):
            ann = await h.join(meeting, "ann")
            peer = h.hub.rooms[meeting.id].peers["ann"]
            dropped = dt.datetime.now(dt.UTC)
            ann.disconnect()
            await peer.finished.wait()  # the membership, not just the connection, is over
            waited = dt.datetime.now(dt.UTC)
        (row,) = (await h.rows(meeting))["ann"]
        closed(row, "disconnected")
        assert row.left_at is not None
        assert dropped <= row.left_at < waited - dt.timedelta(seconds=0.4)


async def test_kick(store):
    async with running_hub(store) as h:
        meeting = await h.live_meeting()
        with trio.fail_after(10):
            await h.join(meeting, "boss", Role.HOST)
            await h.join(meeting, "ann")
            assert await h.hub.kick(meeting.id, "ann", by="boss")
        # kick() returns once the leave is written.
        closed((await h.rows(meeting))["ann"][0], "kicked")
        assert (await h.rows(meeting))["boss"][0].left_at is None


async def test_kick_by_a_host_over_the_protocol(store):
    async with running_hub(store) as h:
        meeting = await h.live_meeting()
        with trio.fail_after(10):
            boss = await h.join(meeting, "boss", Role.HOST)
            await h.join(meeting, "ann")
            await boss.request("host:kick", {"targetEmpId": "ann"}, id=7)
            ack = await boss.wait_for("ack")
            assert ack["id"] == 7
        closed((await h.rows(meeting))["ann"][0], "kicked")


async def test_ban(store):
    async with running_hub(store) as h:
        meeting = await h.live_meeting()
        with trio.fail_after(10):
            await h.join(meeting, "ann")
            await h.hub.ban(meeting.id, "ann", by="boss", reason="spam")
        closed((await h.rows(meeting))["ann"][0], "banned")


async def test_meeting_end(store):
    async with running_hub(store) as h:
        meeting = await h.live_meeting()
        with trio.fail_after(10):
            await h.join(meeting, "ann")
            await h.join(meeting, "bob")
            await h.hub.end_meeting(meeting.id, by="boss")
        rows = await h.rows(meeting)
        closed(rows["ann"][0], "meeting-ended")
        closed(rows["bob"][0], "meeting-ended")


async def test_replaced_by_a_second_connection(store):
    async with running_hub(store) as h:
        meeting = await h.live_meeting()
        with trio.fail_after(10):
            first = await h.join(meeting, "ann")
            await h.join(meeting, "ann")
            await first.served.wait()
            assert first.close_code == 4007
        old, new = (await h.rows(meeting))["ann"]
        closed(old, "replaced")
        assert new.left_at is None


async def test_slow_consumer(store):
    config = HubConfig(close_timeout=0.2, auth_timeout=5.0, outbox_size=4)
    async with running_hub(store, config=config) as h:
        meeting = await h.live_meeting()
        with trio.fail_after(10):
            slow = await h.join(meeting, "slow", stall_after_join=True)
            talker = await h.join(meeting, "talker")
            # Each presence update is broadcast to "slow", whose queue then overflows.
            for i in range(8):
                await talker.request("presence:update", {"muted": i % 2 == 0}, id=i)
            await slow.served.wait()
            assert slow.close_code == 4009
        closed((await h.rows(meeting))["slow"][0], "slow-consumer")


async def test_server_shutdown(store):
    async with running_hub(store) as h:
        meeting = await h.live_meeting()
        with trio.fail_after(10):
            conns = [await h.join(meeting, f"emp{i}") for i in range(5)]
    # running_hub's exit shut the hub down.
    for conn in conns:
        assert conn.close_code == 1001
    rows = await h.rows(meeting)
    assert sorted(rows) == [f"emp{i}" for i in range(5)]
    for (record,) in rows.values():
        closed(record, "server-shutdown")
