"""The attendance journal: a crash during a database outage loses no leave and no heartbeat.

Leaves and last-seen stamps the database does not take are kept in a local file;
the next start writes them before crash recovery runs. Proved in-process on
every backend, and end to end by SIGKILLing ``meshroom serve`` in the middle of
an outage of a PostgreSQL cluster this test owns.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from collections.abc import Sequence
from contextlib import AsyncExitStack
from pathlib import Path

import trio

from meshroom import Role
from meshroom.client import connect
from meshroom.core.attendance import AttendanceConfig, LeaveWriter, run_heartbeats
from meshroom.store import Leave, MeetingStatus, SqlStore, StoreUnavailable
from meshroom.store.journal import Journal, replay
from meshroom.store.testing import Cluster

from .helpers import ServerProcess, token

T0 = dt.datetime(2026, 12, 2, 9, 0, tzinfo=dt.UTC)


class DatabaseAway:
    """A store whose every write fails as an unreachable database's does."""

    async def record_leaves(self, leaves: Sequence[Leave]) -> int:
        raise StoreUnavailable("connection refused")

    async def touch_attendance(self, attendance_ids: Sequence[int], at: dt.datetime) -> int:
        raise StoreUnavailable("connection refused")


async def _open_rows(store: SqlStore, *emp_ids: str) -> tuple[str, dict[str, int]]:
    meeting = await store.create_meeting(title="Outage", host_emp_id="alice")
    meeting = await store.transition(meeting.id, MeetingStatus.LIVE)
    ids = {}
    for emp in emp_ids:
        admission = await store.admit(
            meeting_id=meeting.id, emp_id=emp, display_name=emp, role=Role.PARTICIPANT, at=T0
        )
        ids[emp] = admission.attendance_id
    return meeting.id, ids


async def test_what_the_database_refused_survives_a_crash_and_is_replayed(db_url, tmp_path):
    store = SqlStore(db_url)
    await store.open()
    try:
        meeting_id, ids = await _open_rows(store, "alice", "bob", "carol")
        path = tmp_path / "meshroom.journal"
        # The process that saw the outage: its writes fail, so they go to the journal.
        journal = Journal(path)
        await journal.open()
        away = DatabaseAway()
        writer = LeaveWriter(away, AttendanceConfig(retry_initial=0.01), journal)  # type: ignore[arg-type]
        bob_left = T0 + dt.timedelta(minutes=20)
        writer.submit(Leave(ids["bob"], bob_left, "left"))
        assert not await writer.write_now()  # refused: kept, and journaled
        carol_left = T0 + dt.timedelta(minutes=25)
        await writer.record(Leave(ids["carol"], carol_left, "kicked"))  # journaled at once
        with trio.move_on_after(0.5):  # one failed heartbeat is enough
            await run_heartbeats(
                away,  # type: ignore[arg-type]
                lambda: [ids["alice"]],
                0.1,
                journal=journal,
            )
        # ... and then it dies: nothing is closed, flushed or said.
        del writer, journal

        again = Journal(path)
        await again.open()
        leaves, seen = await again.contents()
        assert {leave.attendance_id for leave in leaves} == {ids["bob"], ids["carol"]}
        assert set(seen) == {ids["alice"]}
        written, stamped = await replay(again, store)
        assert (written, stamped) == (2, 1)
        assert await again.contents() == ([], {})  # replayed once, then forgotten
        await again.close()
        assert await store.recover_open_attendance() == 1  # alice, at her last stamp
        rows = {r.emp_id: r for r in await store.attendance_for_meeting(meeting_id)}
        assert (rows["bob"].left_at, rows["bob"].leave_reason) == (bob_left, "left")
        assert (rows["carol"].left_at, rows["carol"].leave_reason) == (carol_left, "kicked")
        assert rows["alice"].closed_by_recovery
        assert rows["alice"].left_at == seen[ids["alice"]]
    finally:
        await store.close()


async def test_what_the_database_took_is_forgotten(db_url, tmp_path):
    store = SqlStore(db_url)
    await store.open()
    journal = Journal(tmp_path / "meshroom.journal")
    await journal.open()
    try:
        _, ids = await _open_rows(store, "bob")
        writer = LeaveWriter(store, AttendanceConfig(), journal)
        writer._journaled.add(ids["bob"])  # as if kept during an outage that just ended
        await journal.keep_leaves([Leave(ids["bob"], T0, "left")])
        writer.submit(Leave(ids["bob"], T0, "left"))
        assert await writer.write_now()
        assert await journal.contents() == ([], {})
    finally:
        await journal.close()
        await store.close()


def _journaled_leaves(path: Path) -> int:
    with sqlite3.connect(path) as db:
        try:
            return int(db.execute("SELECT count(*) FROM leaves").fetchone()[0])
        except sqlite3.OperationalError:
            return 0


async def test_sigkill_during_an_outage_loses_no_leave_and_undercounts_by_one_heartbeat(
    pg_cluster: Cluster, tmp_path
):
    store = SqlStore(pg_cluster.url, pool_size=2)
    await store.open()
    meeting = await store.create_meeting(title="Payroll", host_emp_id="alice")
    meeting = await store.transition(meeting.id, MeetingStatus.LIVE)
    heartbeat = 0.2
    with trio.fail_after(90):
        async with trio.open_nursery() as nursery:
            beat = str(heartbeat)
            first = ServerProcess(pg_cluster.url, tmp_path, "--attendance-heartbeat", beat)
            await first.start(nursery)
            async with AsyncExitStack() as peers:
                await peers.enter_async_context(
                    connect(first.url, token(meeting, "alice", Role.HOST))
                )
                bob = await peers.enter_async_context(connect(first.url, token(meeting, "bob")))
                await trio.to_thread.run_sync(pg_cluster.stop)
                outage = dt.datetime.now(dt.UTC)
                await first.wait_for_line("could not record the attendance heartbeat")
                bob_left = dt.datetime.now(dt.UTC)
                await bob.leave()
                await bob.wait_closed()
                journal = tmp_path / "meshroom.journal"
                while _journaled_leaves(journal) < 1:  # noqa: ASYNC110 (another process's file)
                    await trio.sleep(0.05)
                # The outage goes on for a while; alice is still there, heartbeats journaled.
                await trio.sleep(2.0)
                killed = dt.datetime.now(dt.UTC)
                await first.kill()
            await trio.to_thread.run_sync(pg_cluster.start)

            second = ServerProcess(pg_cluster.url, tmp_path, "--attendance-heartbeat", "5")
            await second.start(nursery)
            assert any("attendance journal: wrote 1 leave(s)" in line for line in second.lines), (
                "\n".join(second.lines)
            )
            rows = {r.emp_id: r for r in await store.attendance_for_meeting(meeting.id)}
            # Bob's leave, made during the outage, kept its time and reason.
            assert rows["bob"].leave_reason == "left" and not rows["bob"].closed_by_recovery
            assert abs((rows["bob"].left_at - bob_left).total_seconds()) < 1
            # Alice was closed at her last heartbeat before the kill, not at the outage start.
            alice = rows["alice"]
            assert alice.closed_by_recovery
            assert alice.left_at > outage + dt.timedelta(seconds=1.5)
            assert (killed - alice.left_at).total_seconds() < heartbeat + 0.5
            assert await second.terminate() == 0
            nursery.cancel_scope.cancel()
    await store.close()
