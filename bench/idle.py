"""``python -m bench idle N``: where an idle joined peer's bytes (and CPU) go, in-process.

The capacity scenario measures RSS per peer from outside; this one says what the
bytes are. It runs meshroom's real server (:class:`meshroom.server.Server`: the
standalone listener, the hub, a fresh SQLite store) **in this process** with
:mod:`tracemalloc` on, drives it with the capacity scenario's loader processes
(``N`` peers in rooms of ``--room-size``, each pinging every ``--heartbeat``
seconds once held), and compares snapshots: before any peer, once every peer has
joined, and after ``--hold`` idle seconds (server heartbeats and client pings
included). It prints, per joined peer:

* the bytes traced, grouped by the line that allocated them, and by the
  meshroom line that caused the allocation (the innermost meshroom frame of the
  traceback: "Room.attach started a task" rather than "trio's Task.__init__");
* a census of the Python objects the peers added, by type (``sys.getsizeof``;
  a coroutine's size includes its frame), and the trio tasks per peer;
* RSS per peer (with tracemalloc's own overhead: read the capacity scenario's
  figure for the RSS, this one for the shares).

With ``--cpu`` it measures the server process's CPU time (every thread: the
event loop and the store's worker threads) over the hold instead, without
tracemalloc, and with ``--profile FILE`` where the event loop spent it (cProfile,
switched on for the hold only, so the joins are not in it).

Numbers are for the ``meshroom`` that Python imports from the working directory.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import cProfile
import gc
import io
import linecache
import math
import os
import pstats
import sys
import tempfile
import time
import tracemalloc
import types
from pathlib import Path
from typing import Any

import psutil
import trio

from .runner import Pool, _split
from .servers import LOOPBACK, raise_fd_limit

# Allocations made on behalf of the harness itself (the loader pool's pipes, the
# worker thread driving it), not of the server.
_HARNESS = (
    "*/multiprocessing/*",
    "*/threading.py",
    "*/bench/*",
    "*/tracemalloc.py",
    "*/selectors.py",
)


class _Ui:
    """The loader pool wants a progress UI; this one is silent."""

    def phase(self, *args: Any, **kwargs: Any) -> None:
        pass

    def refresh(self, pool: Any) -> None:
        pass


def _short(filename: str) -> str:
    for marker in ("site-packages/", "/meshroom/", "/lib/python3"):
        if marker in filename:
            _head, _, tail = filename.partition(marker)
            return ("meshroom/" if marker == "/meshroom/" else "") + tail
    return filename


def _census() -> tuple[collections.Counter[str], collections.Counter[str]]:
    """Bytes (``sys.getsizeof``) of the live Python objects, by type and by owner.

    By type: every GC-tracked object, plus the bytes/str/bytearray objects they
    refer to (those are not GC-tracked); a coroutine's size includes its frame, and
    coroutines are told apart by their function. By owner: each instance's
    ``__dict__`` and the containers and buffers held in its attributes, as
    ``Type.attribute``.
    """
    by_type: collections.Counter[str] = collections.Counter()
    by_owner: collections.Counter[str] = collections.Counter()
    seen: set[int] = set()
    leaves = (bytes, bytearray, str)
    containers = (set, dict, list, collections.deque, bytes, bytearray, tuple)
    for obj in gc.get_objects():
        kind = type(obj)
        name = f"{kind.__module__}.{kind.__qualname__}"
        if kind is types.CoroutineType:
            name = f"coroutine {obj.cr_code.co_qualname}"
        by_type[name] += sys.getsizeof(obj)
        for ref in gc.get_referents(obj):
            if type(ref) in leaves and id(ref) not in seen:
                seen.add(id(ref))
                by_type[f"builtins.{type(ref).__name__} (referenced)"] += sys.getsizeof(ref)
        attrs = _attributes(obj, kind)
        # (Not the instance dict itself: reading it is what made CPython build it.)
        attrs.pop("__dict__", None)
        for attr, value in attrs.items():
            if type(value) in containers:
                by_owner[f"{kind.__qualname__}.{attr} ({type(value).__name__})"] += sys.getsizeof(
                    value
                )
    return by_type, by_owner


def _attributes(obj: Any, kind: type) -> dict[str, Any]:
    """An instance's attributes (and its ``__dict__``), read without running any of its code."""
    attrs: dict[str, Any] = {}
    if isinstance(obj, type):
        return attrs
    try:
        instance_dict = object.__getattribute__(obj, "__dict__")
    except Exception:
        instance_dict = None
    if type(instance_dict) is dict:
        attrs.update(instance_dict)
        attrs["__dict__"] = instance_dict
    for klass in kind.__mro__:
        slots = klass.__dict__.get("__slots__", ())
        for slot in (slots,) if isinstance(slots, str) else slots:
            descriptor = klass.__dict__.get(slot)
            if descriptor is not None and hasattr(descriptor, "__get__"):
                with contextlib.suppress(Exception):
                    attrs[slot] = descriptor.__get__(obj, kind)
    return attrs


def _tasks() -> int:
    count = 0
    stack = [trio.lowlevel.current_root_task()]
    while stack:
        task = stack.pop()
        count += 1
        for nursery in task.child_nurseries:
            stack.extend(nursery.child_tasks)
    return count


class Snapshot:
    """Traced allocations, RSS and trio tasks now; and, with ``census``, the objects by type.

    The census reads instances' ``__dict__``, which makes CPython build a dict for
    an instance that had none: it is only taken where nothing is measured after it.
    """

    def __init__(self, label: str, peers: int, *, census: bool, hub: Any) -> None:
        gc.collect()
        self.states = collections.Counter(
            peer.state.value for room in hub.rooms.values() for peer in room.peers.values()
        )
        self.label = label
        self.peers = peers
        self.rss = psutil.Process().memory_info().rss
        self.trace = tracemalloc.take_snapshot().filter_traces(
            [tracemalloc.Filter(False, pattern) for pattern in _HARNESS]
        )
        self.tasks = _tasks()
        self.census, self.owners = _census() if census else (None, None)


def _diff(after: Snapshot, before: Snapshot, *, key: str, top: int, per: int) -> list[str]:
    lines = []
    stats = after.trace.compare_to(before.trace, key)
    total = sum(s.size_diff for s in stats)
    lines.append(f"  traced: {total / per:,.0f} B/peer ({total / 2**20:.1f} MiB in all)")
    shown = 0
    for stat in stats:
        if shown == top:
            break
        if stat.size_diff / per < 8:
            continue
        frame = stat.traceback[0]
        where = f"{_short(frame.filename)}:{frame.lineno}"
        code = linecache.getline(frame.filename, frame.lineno).strip()[:70]
        lines.append(
            f"  {stat.size_diff / per:8,.0f} B  {stat.count_diff / per:6.2f} blocks  "
            f"{where}  {code}"
        )
        shown += 1
    return lines


def _by_cause(after: Snapshot, before: Snapshot, *, top: int, per: int) -> list[str]:
    """Bytes per peer by the innermost meshroom frame of each allocation's traceback."""

    def causes(snapshot: Snapshot) -> collections.Counter[str]:
        out: collections.Counter[str] = collections.Counter()
        for stat in snapshot.trace.statistics("traceback"):
            cause = None
            for frame in stat.traceback:  # innermost first
                if "/meshroom/" in frame.filename:
                    code = linecache.getline(frame.filename, frame.lineno).strip()[:60]
                    cause = f"{_short(frame.filename)}:{frame.lineno}  {code}"
                    break
            out[cause or "(no meshroom frame: " + _short(stat.traceback[0].filename) + ")"] += (
                stat.size
            )
        return out

    grown = causes(after)
    grown.subtract(causes(before))
    lines = []
    for cause, size in grown.most_common(top):
        if size / per < 8:
            break
        lines.append(f"  {size / per:8,.0f} B  {cause}")
    return lines


def _by_type(
    after: collections.Counter[str], before: collections.Counter[str], *, top: int, per: int
) -> list[str]:
    grown = collections.Counter(after)
    grown.subtract(before)
    lines = []
    for kind, size in grown.most_common(top):
        if size / per < 8:
            break
        lines.append(f"  {size / per:8,.0f} B  {kind}")
    return lines


def report(after: Snapshot, before: Snapshot, top: int) -> str:
    per = max(1, after.peers)
    out = [
        f"== {after.label} vs {before.label}: {after.peers} peers ==",
        f"  RSS: {(after.rss - before.rss) / per / 1024:,.1f} KiB/peer (tracemalloc on)",
        f"  trio tasks: {(after.tasks - before.tasks) / per:.2f} per peer; peers by state: "
        + ", ".join(f"{n} {state}" for state, n in sorted(after.states.items())),
        "-- by allocating line --",
        *_diff(after, before, key="lineno", top=top, per=per),
        "-- by the meshroom line that caused it --",
        *_by_cause(after, before, top=top, per=per),
    ]
    if after.census is not None and before.census is not None:
        assert after.owners is not None and before.owners is not None
        out += [
            "-- Python objects added, by type (sys.getsizeof) --",
            *_by_type(after.census, before.census, top=top, per=per),
            "-- containers and buffers added, by owner (sys.getsizeof) --",
            *_by_type(after.owners, before.owners, top=top, per=per),
        ]
    return "\n".join(out)


async def run(args: argparse.Namespace) -> str:
    import datetime as dt

    from meshroom import MeetingStatus, Role, TokenKeys, mint_token
    from meshroom.config import Settings
    from meshroom.server import Server

    workdir = Path(tempfile.mkdtemp(prefix="bench-memory-"))
    secret = os.urandom(32).hex()
    settings = Settings(
        host=LOOPBACK,
        port=0,
        http_port=None,
        database_url=f"sqlite:///{workdir / 'meshroom.db'}",
        secret=secret,
        secret_file=str(workdir / "meshroom.secret"),
        attendance_journal=str(workdir / "meshroom.journal"),
        rate_limit=0,
        max_room_peers=0,
        **({"heartbeat_interval": args.server_heartbeat} if args.server_heartbeat else {}),
        log_level="WARNING",
    )
    keys = TokenKeys.shared_secret(secret)
    peers, room_size = args.peers, args.room_size
    async with trio.open_nursery() as nursery:
        server: Server = await nursery.start(Server(settings).run)
        assert server.runtime is not None and server.port is not None
        store = server.runtime.store
        meetings = []
        for i in range(math.ceil(peers / room_size)):
            meeting = await store.create_meeting(title=f"memory {i}", host_emp_id="host")
            await store.transition(meeting.id, MeetingStatus.LIVE)
            meetings.append(meeting.id)
        clients = [
            (
                f"c{i}",
                mint_token(
                    keys,
                    meeting_id=meetings[i // room_size],
                    emp_id=f"c{i}",
                    display_name=f"c{i}",
                    role=Role.PARTICIPANT,
                    ttl=dt.timedelta(hours=2),
                ),
            )
            for i in range(peers)
        ]
        specs = [
            {
                "scenario": "capacity",
                "host": LOOPBACK,
                "port": server.port,
                "socketio": False,
                "clients": part,
                "connect_window": 32,
                "heartbeat": args.heartbeat,
            }
            for part in _split(clients, 2)
        ]
        await trio.sleep(1.0)
        hub = server.runtime.hub
        if args.cpu:
            try:
                return await _measure_cpu(args, specs, hub)
            finally:
                server.request_shutdown()
        tracemalloc.start(args.frames)
        empty = Snapshot("no peer", 0, census=True, hub=hub)
        pool = await trio.to_thread.run_sync(Pool, specs, _Ui())
        try:
            count = await _join(pool, args)
            full = Snapshot("joined", count, census=False, hub=hub)
            # The loaders hold (and ping) until told to stop, which is after the last snapshot.
            pool.send_all({"type": "hold", "until": time.perf_counter() + 10 * args.timeout})
            await trio.sleep(args.hold)
            held = Snapshot(f"held {args.hold:g} s", count, census=True, hub=hub)
        finally:
            await trio.to_thread.run_sync(pool.close)
            tracemalloc.stop()
            server.request_shutdown()
    return "\n\n".join([report(full, empty, args.top), report(held, empty, args.top)])


async def _join(pool: Pool, args: argparse.Namespace) -> int:
    await trio.to_thread.run_sync(pool.wait_all, "ready", args.timeout)
    pool.send_all({"type": "go", "deadline": time.perf_counter() + args.timeout})
    joined = await trio.to_thread.run_sync(pool.wait_all, "joined", args.timeout + 10)
    await trio.sleep(2.0)  # the peer:joined broadcasts drain
    return sum(int(m["joined"]) for m in joined)


class _GcTimer:
    """A ``gc.callbacks`` entry: how many collections of each generation, and how long."""

    def __init__(self) -> None:
        self.count: collections.Counter[int] = collections.Counter()
        self.seconds: collections.Counter[int] = collections.Counter()
        self._start = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            # CPU time of the collecting thread: wall time would count preemptions too.
            self._start = time.thread_time()
        else:
            self.count[info["generation"]] += 1
            self.seconds[info["generation"]] += time.thread_time() - self._start


async def _measure_cpu(args: argparse.Namespace, specs: list[dict[str, Any]], hub: Any) -> str:
    """The server process's CPU (every thread) over the hold; with --profile, where it went."""
    pool = await trio.to_thread.run_sync(Pool, specs, _Ui())
    profiler = cProfile.Profile() if args.profile else None
    try:
        count = await _join(pool, args)
        pool.send_all({"type": "hold", "until": time.perf_counter() + 10 * args.timeout})
        # One heartbeat period for the pings to spread out before the measured window.
        await trio.sleep(args.heartbeat)
        me = psutil.Process()
        collections_timed = _GcTimer()
        gc.callbacks.append(collections_timed)
        cpu0, wall0 = me.cpu_times(), time.perf_counter()
        if profiler is not None:
            profiler.enable()
        await trio.sleep(args.hold)
        if profiler is not None:
            profiler.disable()
        cpu1, wall = me.cpu_times(), time.perf_counter() - wall0
        gc.callbacks.remove(collections_timed)
        states = collections.Counter(
            peer.state.value for room in hub.rooms.values() for peer in room.peers.values()
        )
    finally:
        await trio.to_thread.run_sync(pool.close)
    busy = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    lines = [
        f"== idle CPU: {count} peers held {args.hold:g} s ==",
        f"  server process: {100 * busy / wall:.2f} % of one core "
        f"(user {cpu1.user - cpu0.user:.2f} s, system {cpu1.system - cpu0.system:.2f} s)",
        "  peers by state: " + ", ".join(f"{n} {state}" for state, n in sorted(states.items())),
        "  garbage collections: "
        + ", ".join(
            f"gen{g} {n} ({collections_timed.seconds[g] * 1000:.0f} ms)"
            for g, n in sorted(collections_timed.count.items())
        ),
    ]
    if profiler is not None:
        profiler.dump_stats(args.profile)
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(25)
        lines.append(out.getvalue())
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench idle", description=__doc__.split("\n")[0])
    p.add_argument("peers", type=int, nargs="?", default=1000)
    p.add_argument("--room-size", type=int, default=20)
    p.add_argument(
        "--heartbeat",
        type=float,
        default=25.0,
        help="client ping period, seconds (meshroom.js: 25; 0: the clients never ping)",
    )
    p.add_argument("--hold", type=float, default=25.0, help="idle seconds before the last snapshot")
    p.add_argument("--frames", type=int, default=16, help="traceback depth kept by tracemalloc")
    p.add_argument("--top", type=int, default=25, help="lines shown per breakdown")
    p.add_argument("--timeout", type=float, default=120.0)
    p.add_argument("--out", type=Path, help="also write the report here")
    p.add_argument(
        "--cpu",
        action="store_true",
        help="measure the server's idle CPU over the hold (no tracemalloc) instead of memory",
    )
    p.add_argument(
        "--server-heartbeat",
        type=float,
        help="the server's heartbeat interval, seconds (default: meshroom's, 25)",
    )
    p.add_argument("--profile", type=Path, help="with --cpu: cProfile the hold into this file")
    args = p.parse_args(argv)
    raise_fd_limit(args.peers * 2 + 1024)
    text = trio.run(run, args)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0
