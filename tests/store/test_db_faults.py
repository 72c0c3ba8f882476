"""Database faults, against a PostgreSQL cluster this test owns and stops and restarts.

Joins are refused while the database is away (STORE_UNAVAILABLE, close 1013);
signaling between peers already in the room goes on; leaves are kept and written
once the database returns, each once, with the time the peer really left.
"""

from __future__ import annotations

import datetime as dt
import logging

import pytest
import trio

from meshroom import Role, Server, Settings
from meshroom.client import JoinRefused, connect
from meshroom.store import MeetingStatus, SqlStore, StoreUnavailable
from meshroom.store.testing import Cluster

from .helpers import SECRET, token


def settings(url: str, tmp_path) -> Settings:
    return Settings.from_env(
        {},
        host="127.0.0.1",
        port=0,
        http_port="off",
        database_url=url,
        secret=SECRET,
        close_timeout=1.0,
        attendance_heartbeat=0.2,
        leave_retry_max=0.2,
        leave_flush_timeout=1.0,
        api_key_file=str(tmp_path / "apikey"),
        attendance_journal=str(tmp_path / "meshroom.journal"),
    )


async def stop(cluster: Cluster) -> None:
    await trio.to_thread.run_sync(cluster.stop)


async def start(cluster: Cluster) -> None:
    await trio.to_thread.run_sync(cluster.start)


async def until(predicate) -> None:
    """Poll in-process state the server changes on its own schedule (retries, backoff)."""
    while not predicate():  # noqa: ASYNC110  (no event to wait on: the writer's backoff)
        await trio.sleep(0.02)


async def row_closed(store: SqlStore, meeting_id: str, emp_id: str) -> None:
    while True:
        rows = await store.attendance_for_meeting(meeting_id)
        if all(r.left_at is not None for r in rows if r.emp_id == emp_id):
            return
        await trio.sleep(0.02)


async def test_outage_refuses_joins_keeps_signaling_and_loses_no_leave(
    pg_cluster: Cluster, tmp_path, caplog
):
    caplog.set_level(logging.WARNING)
    store = SqlStore(pg_cluster.url, pool_size=2)
    await store.open()
    meeting = await store.create_meeting(title="Outage", host_emp_id="alice")
    meeting = await store.transition(meeting.id, MeetingStatus.LIVE)
    server = Server(settings(pg_cluster.url, tmp_path))

    with trio.fail_after(90):
        async with trio.open_nursery() as nursery:
            await nursery.start(server.run)
            hub = server.hub
            assert hub is not None
            async with (
                connect(server.url, token(meeting, "alice", Role.HOST)) as alice,
                connect(server.url, token(meeting, "bob")) as bob,
                connect(server.url, token(meeting, "carol")) as carol,
            ):
                await stop(pg_cluster)

                # A join is refused with a clear error; the server stays up.
                with pytest.raises(JoinRefused) as refused:
                    async with connect(server.url, token(meeting, "dan")):
                        pass  # pragma: no cover
                assert refused.value.code == "STORE_UNAVAILABLE"
                assert refused.value.close_code == 1013

                # Peers already in the room keep signaling.
                await bob.offer("alice", {"type": "offer", "sdp": "v=0"})
                offer = await alice.wait_for("signal:offer")
                assert offer.data["fromEmpId"] == "bob"

                # Leaves during the outage: none is held up waiting for the database.
                left_at = dt.datetime.now(dt.UTC)
                await carol.leave()
                assert await carol.wait_closed() == 1000
                await alice.kick("bob")
                assert await bob.wait_closed() == 4005
                await until(lambda: len(hub.leaves.pending) == 2)
                assert not hub.leaves.healthy
                with pytest.raises(StoreUnavailable):
                    await store.attendance_for_meeting(meeting.id)  # still down

                # The database returns: the kept leaves are written, once each.
                await start(pg_cluster)
                await until(lambda: not hub.leaves.pending)
                assert hub.leaves.written == 2
                rows = {r.emp_id: r for r in await store.attendance_for_meeting(meeting.id)}
                assert rows["carol"].leave_reason == "left"
                assert rows["bob"].leave_reason == "kicked"
                for emp in ("carol", "bob"):
                    # When they left, not when the database took it.
                    assert rows[emp].left_at is not None
                    assert abs((rows[emp].left_at - left_at).total_seconds()) < 5
                assert rows["alice"].left_at is None
                assert "dan" not in rows  # the refused join left no row

                # Joins work again.
                async with connect(server.url, token(meeting, "dan")) as dan:
                    assert dan.snapshot["self"]["empId"] == "dan"
                    await dan.leave()
                await row_closed(store, meeting.id, "dan")

                # Shutdown while the database is away: bounded, and it says what it kept.
                await stop(pg_cluster)
                started = trio.current_time()
                server.request_shutdown()
                await alice.wait_closed()
        assert trio.current_time() - started < 10

    assert "database did not take" in caplog.text
    await start(pg_cluster)
    rows = {r.emp_id: r for r in await store.attendance_for_meeting(meeting.id)}
    assert f"attendance {rows['alice'].id} left" in caplog.text
    assert rows["dan"].leave_reason == "left"
    # The next start's crash recovery closes what shutdown could not write.
    rows = {r.emp_id: r for r in await store.attendance_for_meeting(meeting.id)}
    assert rows["alice"].left_at is None
    assert await store.recover_open_attendance() == 1
    rows = {r.emp_id: r for r in await store.attendance_for_meeting(meeting.id)}
    assert rows["alice"].closed_by_recovery
    assert [r.emp_id for r in rows.values() if r.left_at is None] == []
    await store.close()
