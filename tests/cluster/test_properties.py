"""Random joins, leaves, kicks and bans across three nodes, with nodes cut off from Redis
and back, keep the cluster's invariants: at most one node runs a room at any time (the
epochs' spans never overlap), a banned employee is never admitted, and every attendance
row is closed exactly once in the end."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import trio
from _redis import running_redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshroom import Role
from meshroom.client import JoinRefused, Peer, connect
from meshroom.cluster import ClusterUnavailable

from .harness import DEADLINE, NODE_TTL, closed_rows, cluster, node_of, until
from .test_fencing import assert_one_owner_at_a_time

EMPLOYEES = ["ann", "ben", "cat", "dan"]

steps = st.lists(
    st.one_of(
        st.tuples(st.just("join"), st.sampled_from(EMPLOYEES), st.integers(0, 2)),
        st.tuples(st.just("leave"), st.sampled_from(EMPLOYEES), st.just(0)),
        st.tuples(st.just("kick"), st.sampled_from(EMPLOYEES), st.integers(0, 2)),
        st.tuples(st.just("ban"), st.sampled_from(EMPLOYEES), st.integers(0, 2)),
        st.tuples(st.just("cut"), st.just(""), st.integers(0, 2)),
    ),
    min_size=3,
    max_size=10,
)


@pytest.mark.trio
@settings(
    max_examples=10,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(steps=steps)
async def test_random_operations_across_nodes_keep_the_invariants(tmp_path_factory, caplog, steps):
    caplog.clear()
    caplog.set_level(logging.INFO, logger="meshroom.cluster")
    tmp_path = tmp_path_factory.mktemp("cluster")
    (tmp_path / "redis").mkdir()
    async with running_redis(tmp_path / "redis") as redis:
        with trio.fail_after(6 * DEADLINE):
            await _run(tmp_path, redis, steps)
    assert_one_owner_at_a_time(caplog)


async def _client(
    url: str, token: str, *, task_status: trio.TaskStatus[tuple[Peer, trio.Event] | JoinRefused]
) -> None:
    """One client in a task of its own (connections then close in any order)."""
    try:
        async with connect(url, token) as peer:
            stop = trio.Event()
            task_status.started((peer, stop))
            await stop.wait()
    except JoinRefused as refused:
        task_status.started(refused)


async def _run(tmp_path: Any, redis: Any, steps: list[tuple[str, str, int]]) -> None:
    async with cluster(tmp_path, redis, 3, resume_grace=0) as nodes, trio.open_nursery() as clients:
        meeting = await nodes[0].meeting(host="ann")
        peers: dict[str, tuple[Peer, trio.Event]] = {}
        banned: set[str] = set()
        cut: set[int] = set()

        def drop(emp: str) -> None:
            _, stop = peers.pop(emp)
            stop.set()

        for op, emp, at in steps:
            node = nodes[at]
            if op == "cut" and at not in cut and len(cut) < 2:
                # Node `at` loses Redis: its rooms are evicted (their peers told to go).
                cut.add(at)

                async def unreachable(what: str, call: object) -> None:
                    raise ClusterUnavailable(f"Redis failed {what}: cut off (test)")

                node_of(node).client.command = unreachable  # type: ignore[method-assign]
                with trio.fail_after(5 * NODE_TTL):
                    await until(lambda n=node: not node_of(n).leases and not node_of(n).ready)
                for name in list(peers):
                    if peers[name][0].closed.is_set():
                        drop(name)
            elif op == "join" and emp not in peers and at not in cut:
                role = Role.HOST if emp == "ann" else Role.PARTICIPANT
                joined = await clients.start(_client, node.url, node.token(meeting, emp, role))
                if isinstance(joined, JoinRefused):
                    if emp in banned:
                        assert joined.code == "BANNED"
                    else:
                        # Only while the room moves off a node that was cut off: refused,
                        # or told to reconnect ("?": server:shutdown came before a join).
                        assert cut and joined.code in ("CLUSTER_UNAVAILABLE", "?"), joined
                    continue
                assert emp not in banned, f"banned {emp} was admitted"
                peers[emp] = joined
            elif op == "leave" and emp in peers:
                peer, _ = peers[emp]
                if not peer.closed.is_set():
                    await peer.leave()
                drop(emp)
            elif op in ("kick", "ban") and at not in cut:
                service = node.server.runtime.service  # type: ignore[union-attr]
                if op == "kick":
                    await service.kick(meeting.id, emp, by="test")
                else:
                    await service.ban(meeting.id, emp, by="test")
                    banned.add(emp)
                if emp in peers:
                    drop(emp)
            # At most one node believes it runs the room.
            holders = [n for n in nodes if node_of(n).holds(meeting.id)]
            assert len(holders) <= 1
        for emp in list(peers):
            drop(emp)
        for index in cut:  # heal, so that every node drains its rooms and rows normally
            del node_of(nodes[index]).client.command
        with trio.fail_after(DEADLINE):
            rows = await closed_rows(nodes[0], meeting.id)
        assert all(r.leave_reason for r in rows), rows
