"""``python -m bench cluster``: meshroom as a cluster of nodes on one Redis.

Three measurements, each in one invocation so that the ratios compare like with like:

- **scale-out**: the relay scenario (pairs keeping ``window`` 700-byte signals in
  flight), its rooms on one node, then spread over two nodes (every room's peers on
  the node that runs it: no cross-node hop). Ratio: 2 nodes / 1 node.
- **cross-node hop**: the same load with every pair split over the two nodes, so
  every signal goes client → node A → Redis → node B → client. Latency p50/p99 against
  the same-node run.
- **failover**: two peers of a meeting whose node is killed with SIGKILL; the time
  until a signal from one reaches the other again, through another node (default
  ``node_ttl``: the dead node's rooms are taken once its registration expires).

The nodes are real ``meshroom serve`` processes with ``--redis-url``; Redis is a
throwaway ``redis-server`` on a free port. Loaders are bench's own processes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .runner import Options, Pool, _failed, _latencies, _sleep_until, go
from .servers import (
    LOOPBACK,
    MESHROOM,
    Meters,
    bench_token,
    free_port,
    live_meetings,
    wait_accepting,
)


class _QuietUi:
    """What the runner's Pool asks of a UI, printing nothing."""

    def refresh(self, pool: Any) -> None:
        pass

    def phase(self, *args: Any, **kwargs: Any) -> None:
        pass


@dataclass
class Cluster:
    nodes: int
    node_ttl: float | None = None  # None: meshroom's default
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="bench-cluster-")))
    secret: str = "bench-cluster-secret-" + "x" * 40
    redis: subprocess.Popen[bytes] | None = None
    procs: list[subprocess.Popen[bytes] | None] = field(default_factory=list)
    ports: list[int] = field(default_factory=list)

    @property
    def database_url(self) -> str:
        return f"sqlite:///{self.workdir / 'meshroom.db'}"

    def env(self, index: int) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            MESHROOM_HOST=LOOPBACK,
            MESHROOM_PORT=str(self.ports[index]),
            MESHROOM_HTTP_PORT="off",
            MESHROOM_DATABASE_URL=self.database_url,
            MESHROOM_SECRET=self.secret,
            MESHROOM_LOG_LEVEL="WARNING",
            MESHROOM_REDIS_URL=f"redis://{LOOPBACK}:{self.redis_port}/0",
            MESHROOM_NODE_ID=f"bench{index}",
            MESHROOM_ATTENDANCE_JOURNAL=str(self.workdir / f"node{index}.journal"),
            MESHROOM_RATE_LIMIT="0",
            MESHROOM_MAX_ROOM_PEERS="0",
        )
        if self.node_ttl is not None:
            env["MESHROOM_NODE_TTL"] = str(self.node_ttl)
        return env

    @contextmanager
    def running(self) -> Iterator[Cluster]:
        binary = shutil.which("redis-server")
        if binary is None:
            raise SystemExit("bench cluster needs redis-server (apt-get install redis-server)")
        self.redis_port = free_port()
        self.redis = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.redis_port),
                "--bind",
                LOOPBACK,
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
            ],
            stdout=subprocess.DEVNULL,
        )
        try:
            wait_accepting(self.redis_port, self.redis)
            subprocess.run(
                [*MESHROOM, "db", "upgrade", f"--database-url={self.database_url}"],
                check=True,
                capture_output=True,
            )
            for index in range(self.nodes):
                self.ports.append(free_port())
                self.procs.append(self.start(index))
            # A fresh Redis lets rooms be claimed node_ttl after the first node used it.
            time.sleep(self.node_ttl or 2.0)
            yield self
        finally:
            for proc in self.procs:
                if proc is not None and proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            for proc in self.procs:
                if proc is not None:
                    try:
                        proc.wait(timeout=20)
                    except subprocess.TimeoutExpired:
                        proc.kill()
            self.redis.kill()
            self.redis.wait()
            shutil.rmtree(self.workdir, ignore_errors=True)

    def start(self, index: int) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen([*MESHROOM, "serve"], env=self.env(index), stdin=subprocess.DEVNULL)
        wait_accepting(self.ports[index], proc)
        return proc

    def kill(self, index: int) -> None:
        proc = self.procs[index]
        assert proc is not None
        proc.kill()
        proc.wait()
        self.procs[index] = None

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs if p is not None]

    def meetings(self, count: int) -> list[str]:
        return live_meetings(self.database_url, count, "bench")

    def token(self, meeting_id: str, emp_id: str) -> str:
        return bench_token(self.secret, meeting_id, emp_id)


def relay(cluster: Cluster, pairs: int, rooms: int, layout: str, opts: Options) -> dict[str, Any]:
    """Pairs in ``rooms`` meetings; ``layout``: "one" (every peer on node 0), "spread"
    (a room's peers on node room % nodes) or "split" (a pair's two peers on two nodes)."""
    meetings = cluster.meetings(rooms)
    nodes = len(cluster.ports)
    loaders = max(1, opts.loaders)
    groups: list[list[tuple[str, str, int]]] = [[] for _ in range(loaders)]
    for i in range(pairs):
        room = i % rooms
        meeting = meetings[room]
        a, b = f"p{i}a", f"p{i}b"
        if layout == "one":
            ports = (cluster.ports[0], cluster.ports[0])
        elif layout == "spread":
            ports = (cluster.ports[room % nodes],) * 2
        else:
            ports = (cluster.ports[0], cluster.ports[1 % nodes])
        groups[i % loaders] += [
            (a, cluster.token(meeting, a), ports[0]),
            (b, cluster.token(meeting, b), ports[1]),
        ]
    specs = [
        {
            "scenario": "relay",
            "host": LOOPBACK,
            "port": cluster.ports[0],
            "socketio": False,
            "clients": group,
            "window": opts.window,
            "message_bytes": opts.message_bytes,
            "join_timeout": opts.timeout,
            "connect_window": 64,
        }
        for group in groups
    ]
    pool = Pool(specs, _QuietUi())
    try:
        ready = pool.wait_all("ready", opts.timeout)
        _, measure_from, measure_until = go(pool, opts)
        _sleep_until(measure_from, pool)
        meters = Meters(cluster.pids, pool.pids)
        meters.start()
        _sleep_until(measure_until, pool)
        cpu = meters.stop()
        results = pool.wait_all("result", 60)
    finally:
        pool.close()
    delivered = sum(r["delivered"] for r in results)
    latencies = _latencies(results)
    return {
        "layout": layout,
        "nodes": nodes,
        "joined": sum(r["joined"] for r in ready),
        "messages_per_s": delivered / opts.duration,
        "p50_ms": float(np.percentile(latencies, 50)) * 1000 if len(latencies) else None,
        "p99_ms": float(np.percentile(latencies, 99)) * 1000 if len(latencies) else None,
        "server_cpu": cpu["server_cpu"],
        "loader_cpu": cpu["loader_cpu"],
        "failed": _failed(results),
    }


def failover(node_ttl: float | None) -> dict[str, Any]:
    """Seconds from SIGKILL of a room's node to a signal relayed again via another node."""
    import trio

    from meshroom.client import JoinRefused, connect

    with Cluster(2, node_ttl=node_ttl).running() as cluster:
        meeting = cluster.meetings(1)[0]
        urls = [f"ws://{LOOPBACK}:{port}/meetings" for port in cluster.ports]

        async def run() -> float:
            async with (
                connect(urls[0], cluster.token(meeting, "a")) as a,
                connect(urls[1], cluster.token(meeting, "b")) as b,
            ):
                await a.wait_for("peer:joined", empId="b")
                killed = time.perf_counter()
                cluster.kill(0)
                async for _ in b:  # told to reconnect once node 0's registration expires
                    pass
            # Both come back through node 1, as a load balancer would send them; a
            # client retries every 50 ms while the room moves.
            while True:
                try:
                    async with (
                        connect(urls[1], cluster.token(meeting, "b")) as b,
                        connect(urls[1], cluster.token(meeting, "a")) as a,
                    ):
                        await b.wait_for("peer:joined", empId="a")
                        await a.request(
                            "signal:offer",
                            {"targetEmpId": "b", "offer": {"type": "offer", "sdp": "x"}},
                        )
                        await b.wait_for("signal:offer")
                        return time.perf_counter() - killed
                except JoinRefused:
                    await trio.sleep(0.05)

        seconds = trio.run(run)
    return {"node_ttl": node_ttl or 2.0, "kill_to_relaying_s": seconds}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench cluster", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--pairs", type=int, default=20)
    parser.add_argument("--rooms", type=int, default=4)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--loaders", type=int, default=2)
    parser.add_argument("--window", type=int, default=32)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    opts = Options(
        loaders=args.loaders, duration=args.duration, warmup=args.warmup, window=args.window
    )
    rows = []
    with Cluster(1).running() as one:
        rows.append(relay(one, args.pairs, args.rooms, "one", opts))
    with Cluster(2).running() as two:
        rows.append(relay(two, args.pairs, args.rooms, "spread", opts))
        rows.append(relay(two, args.pairs, args.rooms, "split", opts))
    fail = failover(None)
    base = rows[0]["messages_per_s"]
    print(
        f"bench cluster: {args.pairs} pairs in {args.rooms} rooms, {opts.window} in flight, "
        f"{opts.duration:g} s, {os.cpu_count()} cores"
    )
    print(
        f"{'layout':8} {'nodes':>5} {'msg/s':>9} {'ratio':>6} {'p50 ms':>7} {'p99 ms':>7} "
        f"{'server%':>8} {'loader%':>8}"
    )
    for row in rows:
        print(
            f"{row['layout']:8} {row['nodes']:5d} {row['messages_per_s']:9.0f} "
            f"{row['messages_per_s'] / base:6.2f} "
            f"{row['p50_ms'] or 0:7.1f} {row['p99_ms'] or 0:7.1f} "
            f"{row['server_cpu']:8.0f} {row['loader_cpu']:8.0f}"
        )
    print(
        f"failover: SIGKILL of the room's node to relaying again: "
        f"{fail['kill_to_relaying_s']:.2f} s (node_ttl {fail['node_ttl']:g} s)"
    )
    if args.json:
        args.json.write_text(json.dumps({"relay": rows, "failover": fail}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
