"""Nodes of one cluster in the test's own Trio loop: same Redis, same database, same secret."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio
from _redis import RedisServer
from _servers import RunningServer, server_settings, start_server

from meshroom.cluster import ClusterNode
from meshroom.store import AttendanceRecord

# Short enough that takeovers happen within a test's patience, long enough for a
# loaded CI machine to renew in time (renewals go every node_ttl / 4).
NODE_TTL = 1.5
# Every step of a cluster test is bounded by this.
DEADLINE = 20


async def until(condition: Callable[[], bool], *, poll: float = 0.02) -> None:
    """Return once ``condition()`` holds (bound it with the caller's deadline).

    For states that live in Redis or across nodes, which no event announces: the test
    polls the observable effect instead of sleeping a guessed time.
    """
    while not condition():  # noqa: ASYNC110 - no event announces these states
        await trio.sleep(poll)


async def closed_rows(server: RunningServer, meeting_id: str) -> list[AttendanceRecord]:
    """The meeting's attendance rows once every one is closed (leaves are written by a
    task of their own, a moment after the peer is gone)."""
    while True:
        rows = await server.store.attendance_for_meeting(meeting_id)
        if all(row.left_at is not None for row in rows):
            return rows
        await trio.sleep(0.02)


def node_of(server: RunningServer) -> ClusterNode:
    runtime = server.server.runtime
    assert runtime is not None and runtime.cluster is not None
    return runtime.cluster


@asynccontextmanager
async def cluster(
    tmp_path: Path, redis: RedisServer, count: int, **overrides: Any
) -> AsyncIterator[list[RunningServer]]:
    """``count`` nodes; the first one's database is everybody's."""
    database_url = f"sqlite:///{tmp_path / 'meshroom.db'}"
    node_ttl = overrides.pop("node_ttl", NODE_TTL)
    async with trio.open_nursery() as nursery:
        servers = []
        for index in range(count):
            settings = server_settings(
                tmp_path,
                database_url=database_url,
                redis_url=redis.url,
                node_id=f"node{index}",
                node_ttl=node_ttl,
                attendance_journal=str(tmp_path / f"node{index}.journal"),
                **overrides,
            )
            servers.append(await start_server(nursery, settings))
        # A fresh Redis lets rooms be claimed node_ttl after the first node used it.
        with trio.fail_after(10 * node_ttl):
            await until(lambda: all(node_of(server).ready for server in servers))
        try:
            yield servers
        finally:
            for server in servers:
                server.server.request_shutdown()
