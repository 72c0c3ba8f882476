"""The scenarios: start a server, drive it with loader processes, measure, return numbers.

Each ``run_<scenario>(target, size, opts, ui)`` returns a flat dict of results
for one server at one size (plus ``_latencies``, a numpy array in seconds, that
the caller summarises and charts).
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing as mp
import multiprocessing.connection
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .loader import run_loader
from .servers import LOOPBACK, CpuMeter, Meters, Target

now = time.perf_counter


@dataclass
class Options:
    loaders: int = 2
    duration: float = 10.0
    warmup: float = 2.0
    window: int = 32
    message_bytes: int = 700
    ice_bytes: int = 250
    ice: int = 4
    rooms: int = 1
    room_size: int = 0  # storm / capacity: 0 = scenario default
    concurrency: int = 64
    heartbeat: float = 15.0
    hold: float = 20.0
    timeout: float = 120.0


class LoaderError(RuntimeError):
    pass


class Pool:
    """The loader processes of one run, and their messages."""

    def __init__(self, specs: list[dict[str, Any]], ui: Any) -> None:
        ctx = mp.get_context("spawn")
        self.ui = ui
        self.pipes: list[Any] = []
        self.procs: list[Any] = []
        self.progress: list[dict[str, Any]] = [{} for _ in specs]
        self.inbox: list[list[dict[str, Any]]] = [[] for _ in specs]
        for i, spec in enumerate(specs):
            parent, child = ctx.Pipe()
            proc = ctx.Process(
                target=run_loader, args=(child, spec), name=f"loader-{i}", daemon=True
            )
            proc.start()
            child.close()
            self.pipes.append(parent)
            self.procs.append(proc)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def total(self, key: str) -> int:
        return sum(int(p.get(key, 0)) for p in self.progress)

    def send_all(self, message: dict[str, Any]) -> None:
        for pipe in self.pipes:
            with contextlib.suppress(BrokenPipeError, OSError):
                pipe.send(message)

    def send(self, index: int, message: dict[str, Any]) -> None:
        self.pipes[index].send(message)

    def pump(self, timeout: float) -> None:
        ready = multiprocessing.connection.wait(self.pipes, timeout)
        for pipe in ready:
            i = self.pipes.index(pipe)
            try:
                message = pipe.recv()
            except EOFError:
                if not self.procs[i].is_alive() and not any(
                    m["type"] == "result" for m in self.inbox[i]
                ):
                    raise LoaderError(
                        f"loader {i} died (exit code {self.procs[i].exitcode})"
                    ) from None
                continue
            if message["type"] == "progress":
                self.progress[i] = message
            elif message["type"] == "error":
                raise LoaderError(f"loader {i} failed: {message['error']}")
            else:
                self.inbox[i].append(message)

    def wait_all(
        self,
        kind: str,
        timeout: float,
        tick: Callable[[], None] | None = None,
        until: Callable[[], bool] | None = None,
    ) -> list[dict[str, Any]]:
        """Wait for one ``kind`` message from every loader (or for ``until()``)."""
        deadline = now() + timeout
        while True:
            got = [next((m for m in box if m["type"] == kind), None) for box in self.inbox]
            if all(m is not None for m in got):
                for box, m in zip(self.inbox, got, strict=True):
                    box.remove(m)
                return got  # type: ignore[return-value]
            if until is not None and until():
                return []
            if now() > deadline:
                raise LoaderError(f"timed out after {timeout:g}s waiting for {kind!r}")
            self.pump(0.005 if tick is not None else 0.05)
            if tick is not None:
                tick()
            self.ui.refresh(self)

    def close(self) -> None:
        self.send_all({"type": "stop"})
        for proc in self.procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.terminate()
                proc.join()
        for pipe in self.pipes:
            pipe.close()


def _split(items: list[Any], parts: int) -> list[list[Any]]:
    return [items[i::parts] for i in range(parts)]


def _spec(
    target: Target, scenario: str, clients: list[tuple[str, str]], **extra: Any
) -> dict[str, Any]:
    return {
        "scenario": scenario,
        "host": LOOPBACK,
        "port": target.client_port,
        "socketio": target.transport == "socketio",
        "clients": clients,
        **extra,
    }


def go(pool: Pool, opts: Options) -> tuple[float, float, float]:
    """Start the loaders' load in 0.3 s: (start, measure from, measure until)."""
    start = now() + 0.3
    measure_from = start + opts.warmup
    measure_until = measure_from + opts.duration
    pool.send_all(
        {"type": "go", "start": start, "measure_from": measure_from, "measure_until": measure_until}
    )
    return start, measure_from, measure_until


def _sleep_until(t: float, pool: Pool) -> None:
    while now() < t:
        pool.pump(min(0.05, max(0.0, t - now())))
        pool.ui.refresh(pool)


def _latencies(results: list[dict[str, Any]]) -> np.ndarray:
    parts = [np.frombuffer(r["latencies"], dtype=np.float64) for r in results]
    return np.concatenate(parts) if parts else np.zeros(0)


def _failed(results: list[dict[str, Any]]) -> dict[str, int]:
    total: Counter[str] = Counter()
    for r in results:
        total.update(r.get("failed", {}))
        total.update(r.get("errors", {}))
    return dict(total)


def _finish(pool: Pool) -> list[dict[str, Any]]:
    pool.send_all({"type": "stop"})
    results = pool.wait_all("result", 60)
    return results


def _create_meetings(target: Target, count: int) -> list[str]:
    return target.create_meetings(count)


# relay ------------------------------------------------------------------------------


def run_relay(target: Target, pairs: int, opts: Options, ui: Any) -> dict[str, Any]:
    meeting = _create_meetings(target, 1)[0]
    groups: list[list[tuple[str, str]]] = [[] for _ in range(max(1, min(opts.loaders, pairs)))]
    for i in range(pairs):
        a, b = f"p{i}a", f"p{i}b"
        groups[i % len(groups)] += [(a, target.token(meeting, a)), (b, target.token(meeting, b))]
    specs = [
        _spec(
            target,
            "relay",
            g,
            window=opts.window,
            message_bytes=opts.message_bytes,
            join_timeout=opts.timeout,
            connect_window=64,
        )
        for g in groups
    ]
    ui.phase("joining", total=2 * pairs, key="joined")
    pool = Pool(specs, ui)
    try:
        ready = pool.wait_all("ready", opts.timeout)
        joined = sum(r["joined"] for r in ready)
        start, measure_from, measure_until = go(pool, opts)
        ui.phase("relaying", total=opts.warmup + opts.duration + 0.3, clock=start - 0.3)
        _sleep_until(measure_from, pool)
        meters = Meters(target.pid, pool.pids)
        meters.start()
        _sleep_until(measure_until, pool)
        cpu = meters.stop()
        rss = target.rss()
        results = pool.wait_all("result", 60)
    finally:
        pool.close()
    delivered = sum(r["delivered"] for r in results)
    return {
        "pairs": pairs,
        "peers": 2 * pairs,
        "joined": joined,
        "messages": delivered,
        "messages_per_s": delivered / opts.duration,
        "bad_frames": sum(r["bad"] for r in results),
        "failed": _failed(results),
        **cpu,
        "server_rss_mb": rss / 2**20,
        "_latencies": _latencies(results),
    }


# mesh -------------------------------------------------------------------------------


def run_mesh(target: Target, peers: int, opts: Options, ui: Any) -> dict[str, Any]:
    rooms = max(1, opts.rooms)
    meetings = _create_meetings(target, rooms)
    clients: list[tuple[str, str]] = []
    room_size: dict[str, int] = {}
    for i in range(peers):  # interleaved so that every room is spread over every loader
        for r, meeting in enumerate(meetings):
            emp = f"r{r}-{i}"
            clients.append((emp, target.token(meeting, emp)))
            room_size[emp] = peers
    n_loaders = max(1, min(opts.loaders, len(clients)))
    specs = [
        _spec(
            target,
            "mesh",
            part,
            ice=opts.ice,
            message_bytes=opts.message_bytes,
            ice_bytes=opts.ice_bytes,
            room_size={e: room_size[e] for e, _ in part},
            connect_window=10**9,  # everyone joins at once
        )
        for part in _split(clients, n_loaders)
    ]
    total_clients = len(clients)
    ui.phase("starting loaders", total=n_loaders, key=None)
    pool = Pool(specs, ui)
    try:
        pool.wait_all("ready", opts.timeout)
        start = now() + 0.5
        pool.send_all({"type": "go", "start": start, "deadline": start + opts.timeout})
        ui.phase("mesh negotiation (peers converged)", total=total_clients, key="done")
        _sleep_until(start, pool)
        meters = Meters(target.pid, pool.pids)
        meters.start()
        pool.wait_all("finished", opts.timeout + 30)
        cpu = meters.stop()
        rss = target.rss()
        results = _finish(pool)
    finally:
        pool.close()
    last = max(r["last"] for r in results)
    missing = sum(r["missing"] for r in results)
    converged = missing == 0 and all(r["incomplete"] == 0 for r in results)
    expected = rooms * peers * (peers - 1) * (1 + opts.ice)
    delivered = expected - missing
    elapsed = (last - start) if converged else float("nan")
    return {
        "rooms": rooms,
        "peers": peers,
        "joined": sum(r["joined"] for r in results),
        "join_s": max(r["last_joined"] for r in results) - start,
        "converge_s": elapsed,
        "signals_expected": expected,
        "signals_delivered": delivered,
        "lost": missing,
        "lossless": converged,
        "messages_per_s": delivered / elapsed if converged and elapsed > 0 else float("nan"),
        "other_frames": sum(r["other"] for r in results),
        "bad_frames": sum(r["bad"] for r in results),
        "failed": _failed(results),
        **cpu,
        "server_rss_mb": rss / 2**20,
        "_latencies": _latencies(results),
    }


# storm ------------------------------------------------------------------------------


def run_storm(target: Target, joins: int, opts: Options, ui: Any) -> dict[str, Any]:
    room_size = opts.room_size or 50
    meetings = _create_meetings(target, math.ceil(joins / room_size))
    clients = []
    for i in range(joins):
        emp = f"s{i}"
        clients.append((emp, target.token(meetings[i // room_size], emp)))
    n_loaders = max(1, min(opts.loaders, joins))
    window = max(1, opts.concurrency // n_loaders) if opts.concurrency else 10**9
    specs = [
        _spec(target, "storm", part, connect_window=window) for part in _split(clients, n_loaders)
    ]
    ui.phase("starting loaders", total=n_loaders, key=None)
    pool = Pool(specs, ui)
    try:
        pool.wait_all("ready", opts.timeout)
        start = now() + 0.3
        pool.send_all(
            {"type": "go", "start": start, "deadline": start + opts.timeout, "hold": opts.timeout}
        )
        ui.phase("joining", total=joins, key="joined")
        _sleep_until(start, pool)
        meters = Meters(target.pid, pool.pids)
        meters.start()
        pool.wait_all("joined", opts.timeout + 10)
        cpu = meters.stop()
        rss = target.rss()
        results = _finish(pool)
    finally:
        pool.close()
    joined = sum(r["joined"] for r in results)
    first = min(r["first_start"] for r in results if r["first_start"])
    last = max(r["last_joined"] for r in results)
    elapsed = last - first
    return {
        "joins": joins,
        "room_size": room_size,
        "concurrency": opts.concurrency,
        "joined": joined,
        "failed": _failed(results),
        "elapsed_s": elapsed,
        "joins_per_s": joined / elapsed if elapsed > 0 else float("nan"),
        **cpu,
        "server_rss_mb": rss / 2**20,
        "_latencies": _latencies(results),
    }


# capacity ---------------------------------------------------------------------------


def run_capacity(target: Target, peers: int, opts: Options, ui: Any) -> dict[str, Any]:
    room_size = opts.room_size or 20
    ui.phase("creating meetings", total=1, key=None)
    meetings = _create_meetings(target, math.ceil(peers / room_size))
    clients = []
    for i in range(peers):
        emp = f"c{i}"
        clients.append((emp, target.token(meetings[i // room_size], emp)))
    n_loaders = max(1, min(opts.loaders, peers))
    window = max(1, opts.concurrency // n_loaders)
    specs = [
        _spec(target, "capacity", part, connect_window=window, heartbeat=opts.heartbeat)
        for part in _split(clients, n_loaders)
    ]
    time.sleep(1.0)
    rss_before = target.rss()
    ui.phase("starting loaders", total=n_loaders, key=None)
    pool = Pool(specs, ui)
    try:
        pool.wait_all("ready", opts.timeout)
        pool.send_all({"type": "go", "deadline": now() + opts.timeout})
        ui.phase("joining", total=peers, key="joined")
        t0 = now()
        joined_msgs = pool.wait_all("joined", opts.timeout + 10)
        join_s = now() - t0
        joined = sum(m["joined"] for m in joined_msgs)
        _sleep_until(now() + 2.0, pool)  # let the peer:joined broadcasts drain
        rss_joined = target.rss()
        until = now() + opts.hold
        pool.send_all({"type": "hold", "until": until})
        ui.phase("holding idle peers", total=opts.hold, clock=now())
        meters = Meters(target.pid, pool.pids)
        meters.start()
        _sleep_until(until, pool)
        cpu = meters.stop()
        rss_after = target.rss()
        results = _finish(pool)
    finally:
        pool.close()
    rss_peak = max(rss_joined, rss_after)
    return {
        "peers": peers,
        "room_size": room_size,
        "joined": joined,
        "alive": sum(r["alive"] for r in results),
        "failed": _failed(results),
        "join_s": join_s,
        "heartbeat_s": opts.heartbeat,
        "hold_s": opts.hold,
        "pings": sum(r["pings"] for r in results),
        "acks": sum(r["acks"] for r in results),
        "server_rss_mb": rss_peak / 2**20,
        "rss_baseline_mb": rss_before / 2**20,
        "kb_per_peer": (rss_peak - rss_before) / max(1, joined) / 1024,
        **cpu,
        "_latencies": _latencies(results),
    }


# teardown ---------------------------------------------------------------------------


def run_teardown(target: Target, peers: int, opts: Options, ui: Any) -> dict[str, Any]:
    if target.kind != "meshroom":
        raise ValueError("teardown needs host:end, which only meshroom implements")
    assert target.db is not None
    meeting = _create_meetings(target, 1)[0]
    host = "host"
    clients = [(host, target.token(meeting, host, host=True))]
    clients += [(f"t{i}", target.token(meeting, f"t{i}")) for i in range(1, peers)]
    n_loaders = max(1, min(opts.loaders, peers))
    window = max(1, opts.concurrency // n_loaders)
    specs = [
        _spec(target, "teardown", part, connect_window=window, host_emp=host)
        for part in _split(clients, n_loaders)
    ]
    ui.phase("starting loaders", total=n_loaders, key=None)
    pool = Pool(specs, ui)
    db = target.db
    rows: dict[str, float] = {}
    try:
        pool.wait_all("ready", opts.timeout)
        pool.send_all({"type": "go", "deadline": now() + opts.timeout})
        ui.phase("joining", total=peers, key="joined")
        joined = sum(m["joined"] for m in pool.wait_all("joined", opts.timeout + 10))
        everyone = joined * (joined - 1) // 2
        ui.phase("waiting for peer:joined broadcasts", total=everyone, key="peer_joined")
        pool.wait_all("never", opts.timeout, until=lambda: pool.total("peer_joined") >= everyone)
        _sleep_until(now() + 0.5, pool)
        open_before = db.open_rows(meeting)

        def poll_rows() -> None:
            if "written" not in rows and db.open_rows(meeting) == 0:
                rows["written"] = now()

        ui.phase("host:end (peers closed)", total=joined, key="finished")
        t_cmd = now()
        server_cpu = CpuMeter([target.pid])
        server_cpu.start()
        pool.send_all({"type": "end", "deadline": now() + opts.timeout})
        results = pool.wait_all("result", opts.timeout + 30, tick=poll_rows)
        server = server_cpu.stop()
        deadline = now() + 10
        while "written" not in rows and now() < deadline:
            poll_rows()
            time.sleep(0.005)
        by_reason = db.rows(meeting)
    finally:
        pool.close()
    t_end = max(r["t_end_sent"] for r in results) or t_cmd
    closes = np.array([t for r in results for t in r["closes"]]) - t_end
    notices = np.array([t for r in results for t in r["notices"]]) - t_end
    codes: Counter[str] = Counter()
    for r in results:
        codes.update(r["close_codes"])
    return {
        "peers": peers,
        "joined": joined,
        "failed": _failed(results),
        "open_rows_before": open_before,
        "meeting_ended_notices": sum(r["meeting_ended"] for r in results),
        "sockets_closed": len(closes),
        "close_codes": dict(codes),
        "host_ack": any(r["host_ack"] for r in results),
        "all_closed_s": float(closes.max()) if len(closes) else float("nan"),
        "notice_p50_s": float(np.median(notices)) if len(notices) else float("nan"),
        "rows_written_s": rows["written"] - t_end if "written" in rows else float("nan"),
        "rows_by_reason": by_reason,
        "server_cpu": server["cpu_percent"],
        "server_rss_mb": target.rss() / 2**20,
        "_latencies": closes,
    }


SCENARIOS = {
    "relay": run_relay,
    "mesh": run_mesh,
    "storm": run_storm,
    "capacity": run_capacity,
    "teardown": run_teardown,
}
