"""SIGKILL a real ``meshroom serve`` mid-meeting; the next start closes every dangling row."""

from __future__ import annotations

from contextlib import AsyncExitStack

import trio

from meshroom import Role
from meshroom.client import connect
from meshroom.store import MeetingStatus, SqlStore

from .helpers import ServerProcess, token


async def wait_for_heartbeats(store: SqlStore, meeting_id: str, emp_ids: set[str]) -> None:
    """Poll until every named peer's row carries a heartbeat (the server writes them)."""
    while True:
        rows = await store.attendance_for_meeting(meeting_id)
        if {r.emp_id for r in rows if r.last_seen_at is not None and r.left_at is None} >= emp_ids:
            return
        await trio.sleep(0.05)


async def test_sigkill_mid_meeting_then_restart_recovers_every_row(db_url, tmp_path):
    store = SqlStore(db_url)
    await store.open()
    meeting = await store.create_meeting(title="Payroll sync", host_emp_id="alice")
    meeting = await store.transition(meeting.id, MeetingStatus.LIVE)

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            first = ServerProcess(db_url, tmp_path, "--attendance-heartbeat", "0.2")
            await first.start(nursery)
            assert any("no attendance rows were left open" in line for line in first.lines)
            async with AsyncExitStack() as peers:
                for emp, role in [("alice", Role.HOST), ("bob", Role.PARTICIPANT)]:
                    await peers.enter_async_context(connect(first.url, token(meeting, emp, role)))
                async with connect(first.url, token(meeting, "dave")) as dave:
                    await dave.leave()
                    await dave.wait_closed()
                await wait_for_heartbeats(store, meeting.id, {"alice", "bob"})
                # Carol joins after the heartbeats we waited for; hers may never come.
                carol = await peers.enter_async_context(connect(first.url, token(meeting, "carol")))
                assert carol.snapshot["self"]["empId"] == "carol"
                await first.kill()
                # The clients see their connection drop; no leave reached the database.

            rows = {r.emp_id: r for r in await store.attendance_for_meeting(meeting.id)}
            assert rows["dave"].leave_reason == "left"
            assert all(rows[e].left_at is None for e in ("alice", "bob", "carol"))
            before = rows

            second = ServerProcess(db_url, tmp_path, "--attendance-heartbeat", "0.2")
            await second.start(nursery)
            assert any(
                "crash recovery: closed 3 attendance row(s)" in line for line in second.lines
            ), "\n".join(second.lines)

            rows = {r.emp_id: r for r in await store.attendance_for_meeting(meeting.id)}
            assert rows["dave"] == before["dave"]  # a real leave is left alone
            for emp in ("alice", "bob", "carol"):
                row, old = rows[emp], before[emp]
                assert row.closed_by_recovery and row.leave_reason == "server-crash", row
                assert row.left_at == (old.last_seen_at or old.joined_at)
                assert row.left_at >= row.joined_at
                assert row.duration_seconds == (row.left_at - row.joined_at).total_seconds()
            assert rows["alice"].last_seen_at is not None and rows["alice"].duration_seconds > 0

            # The restarted server works, and a clean stop closes its peers' rows normally.
            async with connect(second.url, token(meeting, "erin")) as erin:
                assert erin.snapshot["peers"] == []
                assert await second.terminate() == 0
            nursery.cancel_scope.cancel()

    erin_rows = [r for r in await store.attendance_for_meeting(meeting.id) if r.emp_id == "erin"]
    assert [(r.leave_reason, r.closed_by_recovery) for r in erin_rows] == [
        ("server-shutdown", False)
    ]
    assert len(await store.attendance_for_meeting(meeting.id)) == 5  # nothing lost, nothing added
    await store.close()
