"""Never two owners: a node that cannot renew evicts its rooms before another may take
them; Redis going away and coming back leaves no split brain and rooms recover."""

from __future__ import annotations

import itertools
import logging
import re
from contextlib import AsyncExitStack

import httpx
import pytest
import trio
from _signaling import events_until_closed

from meshroom import Role
from meshroom.client import JoinRefused, connect
from meshroom.cluster import ClusterUnavailable, open_client

from .harness import DEADLINE, NODE_TTL, closed_rows, cluster, node_of, until

HELD = re.compile(
    r"cluster: room (\S+) epoch (\d+) (acquired|fenced|released) (?:by|on) (\S+) at ([\d.]+)"
)


def ownership(caplog: pytest.LogCaptureFixture) -> dict[str, list[tuple[int, str, float, float]]]:
    """Per room: (epoch, node, from, until) of every lease held, from the nodes' logs."""
    held: dict[tuple[str, int], list] = {}
    for record in caplog.records:
        match = HELD.search(record.getMessage())
        if not match:
            continue
        room, epoch, what, node, at = match.groups()
        entry = held.setdefault((room, int(epoch)), [node, None, None])
        if what == "acquired":
            entry[1] = float(at)
        else:
            entry[2] = float(at)
    rooms: dict[str, list[tuple[int, str, float, float]]] = {}
    for (room, epoch), (node, start, end) in held.items():
        rooms.setdefault(room, []).append((epoch, node, start, end if end else float("inf")))
    return {room: sorted(spans) for room, spans in rooms.items()}


def assert_one_owner_at_a_time(caplog: pytest.LogCaptureFixture) -> None:
    for room, spans in ownership(caplog).items():
        for (epoch, node, _, end), (next_epoch, next_node, next_start, _) in itertools.pairwise(
            spans
        ):
            assert next_epoch > epoch, (room, spans)
            assert end <= next_start, (
                f"room {room}: {node} held it until {end}, {next_node} from {next_start}"
            )


async def test_a_node_cut_off_from_redis_evicts_its_rooms_before_another_takes_them(
    tmp_path, redis, caplog, monkeypatch
):
    caplog.set_level(logging.INFO, logger="meshroom.cluster")
    with trio.fail_after(DEADLINE):
        async with cluster(tmp_path, redis, 2, resume_grace=0) as (a, b), AsyncExitStack() as stack:
            meeting = await a.meeting()
            alice = await stack.enter_async_context(
                connect(a.url, a.token(meeting, "alice", Role.HOST))
            )
            bob = await stack.enter_async_context(connect(b.url, b.token(meeting, "bob")))
            await alice.wait_for("peer:joined", empId="bob")

            # Node a alone loses Redis (a partition; its process stays up).
            async def unreachable(what: str, call: object) -> None:
                raise ClusterUnavailable(f"Redis failed {what}: partitioned (test)")

            monkeypatch.setattr(node_of(a).client, "command", unreachable)
            for peer in (alice, bob):
                events = await events_until_closed(peer)
                assert [e.name for e in events[-2:]] == ["server:shutdown", "session:closed"]
                assert peer.close_code == 1001  # reconnect
            assert not node_of(a).ready and meeting.id not in node_of(a).leases

            # Node b takes the room once a's registration is gone; the meeting goes on.
            with trio.fail_after(5 * NODE_TTL):
                while True:
                    try:
                        async with connect(b.url, b.token(meeting, "bob")) as bob:
                            break
                    except JoinRefused as refused:
                        assert refused.code == "CLUSTER_UNAVAILABLE"
                    await trio.sleep(NODE_TTL / 10)
            assert node_of(b).holds(meeting.id)
            # And a client of node a, which cannot reach Redis, is refused, not served.
            with pytest.raises(JoinRefused) as refused:
                async with connect(a.url, a.token(meeting, "alice", Role.HOST)):
                    pass
            assert refused.value.code == "CLUSTER_UNAVAILABLE"
            assert refused.value.close_code == 1013

            with trio.fail_after(5):
                rows = await closed_rows(a, meeting.id)
            # Every row closed once: the fenced room's by its eviction, not by recovery.
            assert sorted((r.emp_id, r.leave_reason) for r in rows) == [
                ("alice", "server-shutdown"),
                ("bob", "disconnected"),
                ("bob", "server-shutdown"),
            ]
            assert not any(r.closed_by_recovery for r in rows)
    assert_one_owner_at_a_time(caplog)


async def test_redis_killed_and_restarted_no_split_brain_and_rooms_recover(tmp_path, redis, caplog):
    caplog.set_level(logging.INFO, logger="meshroom.cluster")
    with trio.fail_after(DEADLINE):
        async with (
            cluster(tmp_path, redis, 2, http_port=0) as (a, b),
            AsyncExitStack() as stack,
            httpx.AsyncClient(base_url=a.http_url) as http,
        ):
            meeting = await a.meeting()
            alice = await stack.enter_async_context(
                connect(a.url, a.token(meeting, "alice", Role.HOST))
            )
            bob = await stack.enter_async_context(connect(b.url, b.token(meeting, "bob")))
            await alice.wait_for("peer:joined", empId="bob")
            assert (await http.get("/readyz")).json()["status"] == "ok"

            await redis.stop()  # every key is gone with it
            for peer in (alice, bob):
                events = await events_until_closed(peer)
                assert events[-2].name == "server:shutdown"
            assert not node_of(a).ready and not node_of(b).ready
            ready = await http.get("/readyz")
            assert ready.status_code == 503
            assert ready.json()["detail"].startswith("redis: Redis failed a renewal")
            await redis.start()  # empty, on the same port

            # Both nodes come back; the meeting reopens, on whichever node is asked first.
            with trio.fail_after(10 * NODE_TTL):
                await until(lambda: node_of(a).ready and node_of(b).ready)
            async with (
                connect(b.url, b.token(meeting, "bob")) as bob,
                connect(a.url, a.token(meeting, "alice", Role.HOST)) as alice,
            ):
                await bob.wait_for("peer:joined", empId="alice")
                assert (
                    await alice.request(
                        "signal:offer",
                        {"targetEmpId": "bob", "offer": {"sdp": "x", "type": "offer"}},
                    )
                    == {}
                )
                await bob.wait_for("signal:offer")
            with trio.fail_after(5):
                rows = await closed_rows(a, meeting.id)
            assert len(rows) == 4
    assert_one_owner_at_a_time(caplog)


async def test_a_quick_redis_restart_keeps_rooms_running(tmp_path, redis):
    # node_ttl well above a restart's length: the owner re-asserts its lease in time.
    with trio.fail_after(DEADLINE):
        async with cluster(tmp_path, redis, 2, node_ttl=4.0) as (a, b), AsyncExitStack() as stack:
            meeting = await a.meeting()
            alice = await stack.enter_async_context(
                connect(a.url, a.token(meeting, "alice", Role.HOST))
            )
            bob = await stack.enter_async_context(connect(b.url, b.token(meeting, "bob")))
            await alice.wait_for("peer:joined", empId="bob")
            lease = node_of(a).leases[meeting.id]

            await redis.stop()
            await redis.start()  # empty: the lease's record is gone
            # The owner's next renewal writes it back, same epoch: nobody else could
            # claim the room meanwhile (a fresh Redis lets no unknown room be claimed
            # for node_ttl).
            async with open_client(redis.url, "meshroom") as probe:
                with trio.fail_after(4.0):
                    while await probe.redis.get(probe.room_key(meeting.id)) != lease.value.encode():  # noqa: ASYNC110 - state in Redis
                        await trio.sleep(0.05)
            assert node_of(a).leases[meeting.id] is lease
            # The pub/sub connections came back too: the relay works, nothing was evicted.
            await bob.request(
                "signal:offer", {"targetEmpId": "alice", "offer": {"sdp": "y", "type": "offer"}}
            )
            assert (await alice.wait_for("signal:offer")).data["fromEmpId"] == "bob"
