"""500 peers join one room at once, then all drop at once: no deadlock, no lost or double row."""

from __future__ import annotations

import collections
import time

import trio

from meshroom.core import HubConfig
from meshroom.store import SqlStore

from .helpers import FakeConnection, running_hub, token

PEERS = 500


async def test_join_storm_then_leave_storm(db_url):
    store = SqlStore(db_url, pool_size=10)  # the default db_pool_size
    await store.open()
    options = {"close_timeout": 2.0, "auth_timeout": 30.0, "outbox_size": 2 * PEERS}
    if "max_room_peers" in HubConfig.__dataclass_fields__:
        options["max_room_peers"] = 0  # no cap: this is the storm
    config = HubConfig(**options)  # type: ignore[arg-type]
    with trio.fail_after(120):
        async with running_hub(store, config=config) as h:
            meeting = await h.live_meeting()
            conns = [FakeConnection(f"emp{i:03}") for i in range(PEERS)]
            started = time.perf_counter()
            async with trio.open_nursery() as storm:
                for conn in conns:
                    h.nursery.start_soon(h.serve, conn, token(meeting, conn.name))
                    storm.start_soon(conn.wait_for, "room:joined")
            joined_in = time.perf_counter() - started
            print(f"\n{PEERS} joins on {store.engine.dialect.name}: {joined_in:.2f} s")

            room = h.hub.rooms[meeting.id]
            assert len(room.peers) == PEERS
            rows = await store.attendance_for_meeting(meeting.id)
            counts = collections.Counter(r.emp_id for r in rows)
            assert len(rows) == PEERS and set(counts.values()) == {1}
            assert {r.id for r in rows} == {p.attendance_id for p in room.peers.values()}
            assert all(r.left_at is None for r in rows)

            started = time.perf_counter()
            for conn in conns:
                conn.disconnect()
            for conn in conns:
                await conn.served.wait()
            left_in = time.perf_counter() - started
            print(f"{PEERS} leaves on {store.engine.dialect.name}: {left_in:.2f} s")
            assert h.hub.leaves.written == PEERS and not h.hub.leaves.pending

    rows = await store.attendance_for_meeting(meeting.id)
    assert len(rows) == PEERS
    assert all(r.leave_reason == "disconnected" and r.left_at is not None for r in rows)
    await store.close()
