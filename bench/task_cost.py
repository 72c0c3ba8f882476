"""``python -m bench.task_cost``: what one trio task costs, the floor under a peer's memory.

Starts 2,000 tasks of each kind in one nursery and prints the bytes tracemalloc traced
per task (and the RSS growth, which is coarse at this size): a task asleep in
``trio.sleep_forever``, one waiting in ``Event.wait``, and one waiting in
``SocketStream.receive_some`` on an accepted loopback TCP connection (the sockets are
made before the first snapshot, so only the task and its wait are counted). An idle
meshroom peer is one task of the last kind plus what meshroom keeps for it
(``python -m bench idle`` says what that is).
"""

from __future__ import annotations

import gc
import resource
import socket
import tracemalloc

import psutil
import trio
import trio.testing

N = 2000


def _report(
    label: str, before: tracemalloc.Snapshot, after: tracemalloc.Snapshot, rss: int
) -> None:
    stats = after.compare_to(before, "lineno")
    total = sum(s.size_diff for s in stats)
    print(f"{label}: {total / N:,.0f} B traced per task, RSS {rss / N / 1024:.2f} KiB per task")


async def _measure(kind: str) -> None:
    proc = psutil.Process()
    clients: list[socket.socket] = []
    streams: list[trio.SocketStream] = []
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    if kind == "receive_some":
        for _ in range(N):
            clients.append(socket.create_connection(("127.0.0.1", port)))
            streams.append(await listeners[0].accept())
    gc.collect()
    before, rss0 = tracemalloc.take_snapshot(), proc.memory_info().rss
    event = trio.Event()
    async with trio.open_nursery() as nursery:
        for i in range(N):
            if kind == "sleep_forever":
                nursery.start_soon(trio.sleep_forever)
            elif kind == "Event.wait":
                nursery.start_soon(event.wait)
            else:
                nursery.start_soon(streams[i].receive_some, 65536)
        await trio.testing.wait_all_tasks_blocked()
        gc.collect()
        after, rss1 = tracemalloc.take_snapshot(), proc.memory_info().rss
        _report(f"a task in {kind}", before, after, rss1 - rss0)
        nursery.cancel_scope.cancel()
    for stream in streams:
        await stream.aclose()
    for client in clients:
        client.close()
    await listeners[0].aclose()


async def main() -> None:
    for kind in ("sleep_forever", "Event.wait", "receive_some"):
        await _measure(kind)


if __name__ == "__main__":
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 3 * N + 100)), hard))
    tracemalloc.start(1)
    trio.run(main)
