"""The leave writer and the heartbeat/recovery queries, on every backend."""

from __future__ import annotations

import datetime as dt
import logging

import pytest
import trio

from meshroom.core.attendance import AttendanceConfig, LeaveWriter, run_heartbeats
from meshroom.roles import Role
from meshroom.store import Leave, MeetingStatus, SqlStore, StoreUnavailable

T0 = dt.datetime(2024, 3, 1, 9, 0, tzinfo=dt.UTC)
FAST = AttendanceConfig(retry_initial=0.01, retry_max=0.05, flush_timeout=1.0, record_wait=5.0)


async def open_rows(store: SqlStore, n: int, at: dt.datetime = T0) -> tuple[str, list[int]]:
    meeting = await store.create_meeting(title="T", host_emp_id="boss")
    await store.transition(meeting.id, MeetingStatus.LIVE)
    ids = []
    for i in range(n):
        admission = await store.admit(
            meeting_id=meeting.id,
            emp_id=f"e{i}",
            display_name=f"E{i}",
            role=Role.PARTICIPANT,
            at=at,
        )
        ids.append(admission.attendance_id)
    return meeting.id, ids


class Outage:
    """Wraps a store; while ``down``, record_leaves fails like an unreachable database."""

    def __init__(self, store: SqlStore) -> None:
        self.store = store
        self.down = False
        self.calls = 0
        self.attempted = trio.Event()

    async def record_leaves(self, leaves: list[Leave]) -> int:
        self.calls += 1
        try:
            if self.down:
                raise StoreUnavailable("connection refused")
            return await self.store.record_leaves(leaves)
        finally:
            self.attempted.set()  # after the attempt: the writer has seen its outcome
            self.attempted = trio.Event()


# The queries


async def test_record_leaves_is_idempotent_and_counts(store):
    meeting_id, (a, b) = await open_rows(store, 2)
    leave = Leave(a, T0 + dt.timedelta(minutes=5), "left")
    assert await store.record_leaves([leave, leave]) == 1
    assert await store.record_leaves([leave, Leave(a, T0 + dt.timedelta(hours=1), "kicked")]) == 0
    rows = {r.id: r for r in await store.attendance_for_meeting(meeting_id)}
    assert rows[a].left_at == T0 + dt.timedelta(minutes=5) and rows[a].leave_reason == "left"
    assert rows[a].duration_seconds == 300
    assert rows[b].left_at is None


async def test_touch_stamps_open_rows_only_in_one_call(store):
    meeting_id, ids = await open_rows(store, 3)
    await store.record_leaves([Leave(ids[0], T0 + dt.timedelta(minutes=1), "left")])
    seen = T0 + dt.timedelta(minutes=2)
    assert await store.touch_attendance([*ids, 999999], seen) == 2
    rows = {r.id: r for r in await store.attendance_for_meeting(meeting_id)}
    assert rows[ids[0]].last_seen_at is None
    assert rows[ids[1]].last_seen_at == seen == rows[ids[2]].last_seen_at


async def test_recovery_closes_dangling_rows_at_last_seen_or_joined(store):
    meeting_id, (left, seen, never_seen) = await open_rows(store, 3)
    await store.record_leaves([Leave(left, T0 + dt.timedelta(minutes=1), "left")])
    await store.touch_attendance([seen], T0 + dt.timedelta(minutes=7))
    assert await store.recover_open_attendance() == 2
    assert await store.recover_open_attendance() == 0
    rows = {r.id: r for r in await store.attendance_for_meeting(meeting_id)}
    assert (rows[left].leave_reason, rows[left].closed_by_recovery) == ("left", False)
    assert rows[seen].left_at == T0 + dt.timedelta(minutes=7)
    assert rows[seen].duration_seconds == 420
    assert rows[never_seen].left_at == T0 and rows[never_seen].duration_seconds == 0
    for row in (rows[seen], rows[never_seen]):
        assert row.closed_by_recovery and row.leave_reason == "server-crash"


async def test_datetimes_come_back_in_utc_whatever_zone_went_in(store):
    tokyo = dt.timezone(dt.timedelta(hours=9))
    meeting = await store.create_meeting(
        title="T", host_emp_id="h", scheduled_at=dt.datetime(2024, 3, 1, 18, 0, tzinfo=tokyo)
    )
    again = await store.get_meeting(meeting.id)
    assert again is not None and again.scheduled_at is not None
    assert again.scheduled_at.tzinfo is dt.UTC
    assert again.scheduled_at == dt.datetime(2024, 3, 1, 9, 0, tzinfo=dt.UTC)


async def test_overlong_title_is_refused_the_same_on_every_backend(store):
    with pytest.raises(ValueError, match="200"):
        await store.create_meeting(title="x" * 201, host_emp_id="h")


async def test_end_racing_joins_leaves_no_open_row(store):
    """Joins and an end at once: every row of an ENDED meeting is closed."""
    meeting_id, _ = await open_rows(store, 0)
    results: list[object] = []

    async def join(i: int) -> None:
        try:
            await store.admit(
                meeting_id=meeting_id, emp_id=f"r{i}", display_name="R", role=Role.PARTICIPANT,
                at=dt.datetime.now(dt.UTC),
            )  # fmt: skip
            results.append("in")
        except Exception as exc:
            results.append(type(exc).__name__)

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            for i in range(40):
                nursery.start_soon(join, i)
                if i == 20:
                    nursery.start_soon(store.transition, meeting_id, MeetingStatus.ENDED)
    assert set(results) <= {"in", "MeetingNotLive"}
    rows = await store.attendance_for_meeting(meeting_id)
    assert len(rows) == results.count("in")
    assert all(r.left_at is not None for r in rows)


# The writer


async def test_writer_writes_at_once_when_healthy(store):
    meeting_id, (a,) = await open_rows(store, 1)
    writer = LeaveWriter(store, FAST)
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        with trio.fail_after(10):
            await writer.record(Leave(a, T0 + dt.timedelta(seconds=30), "left"))
        (row,) = await store.attendance_for_meeting(meeting_id)
        assert row.left_at == T0 + dt.timedelta(seconds=30)
        nursery.cancel_scope.cancel()
    assert writer.written == 1 and not writer.pending


async def test_writer_keeps_and_retries_until_the_database_returns(store):
    meeting_id, ids = await open_rows(store, 3)
    outage = Outage(store)
    outage.down = True
    writer = LeaveWriter(outage, FAST)  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        with trio.fail_after(10):
            for i, attendance_id in enumerate(ids):
                # Returns without waiting for the database: nobody's teardown is held up.
                await writer.record(Leave(attendance_id, T0 + dt.timedelta(minutes=i + 1), "left"))
            while outage.calls < 3:  # a few retries, each after a backoff
                await outage.attempted.wait()
            assert len(writer.pending) == 3 and not writer.healthy
            # The same leave again (a duplicate submission) is not queued twice.
            writer.submit(Leave(ids[0], T0 + dt.timedelta(hours=5), "left"))
            assert len(writer.pending) == 3
            outage.down = False
            while writer.pending:
                await outage.attempted.wait()
        nursery.cancel_scope.cancel()
    rows = {r.id: r for r in await store.attendance_for_meeting(meeting_id)}
    for i, attendance_id in enumerate(ids):
        assert rows[attendance_id].left_at == T0 + dt.timedelta(minutes=i + 1)  # when they left
    assert writer.written == 3 and writer.healthy


async def test_close_flushes_then_logs_what_it_could_not_write(store, caplog):
    _, (a, b) = await open_rows(store, 2)
    outage = Outage(store)
    writer = LeaveWriter(outage, AttendanceConfig(retry_initial=0.01, flush_timeout=0.3))  # type: ignore[arg-type]
    writer.submit(Leave(a, T0, "left"))
    assert await writer.close() == []  # the database is up: flushed
    outage.down = True
    writer.submit(Leave(b, T0 + dt.timedelta(minutes=3), "server-shutdown"))
    with caplog.at_level(logging.ERROR, logger="meshroom.core.attendance"), trio.fail_after(5):
        lost = await writer.close()  # bounded by flush_timeout
    assert [leave.attendance_id for leave in lost] == [b]
    assert f"attendance {b} left 2024-03-01T09:03:00+00:00 (server-shutdown)" in caplog.text


async def test_heartbeats_stamp_live_rows(store):
    meeting_id, ids = await open_rows(store, 2)
    live = [ids[1]]
    async with trio.open_nursery() as nursery:
        await nursery.start(run_heartbeats, store, lambda: list(live), 0.01)
        with trio.fail_after(10):
            while True:
                rows = {r.id: r for r in await store.attendance_for_meeting(meeting_id)}
                if rows[ids[1]].last_seen_at is not None:
                    break
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    assert rows[ids[0]].last_seen_at is None
    assert rows[ids[1]].last_seen_at > T0
