"""Servers under test: each one a separate process on a loopback port of its own.

:class:`Target` knows how to start a server, how to mint the tokens its
clients authenticate with, and how to measure it (CPU and RSS via psutil).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

LOOPBACK = "127.0.0.1"
MESHROOM = [sys.executable, "-m", "meshroom"]


@functools.cache
def http_off() -> str:
    """How the meshroom under test spells "no HTTP listener" (it may be a pinned revision:
    before Settings had an ``off`` value, port 0 meant off; now 0 is any free port)."""
    probe = "import meshroom.config as c; print(getattr(c, 'OFF', '0'))"
    return subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout.strip()


NODE_RELAY = Path(__file__).parent / "node" / "relay_server.js"


def node_binary() -> str:
    """node, for the optional node-socketio target (its npm packages installed).

    Raises:
        RuntimeError: node is not on PATH, or ``npm ci`` has not run in bench/node.
    """
    node = shutil.which("node")
    if node is None:
        raise RuntimeError("the node-socketio target needs node on PATH")
    if not (NODE_RELAY.parent / "node_modules" / "socket.io").is_dir():
        raise RuntimeError("the node-socketio target needs `npm ci` in bench/node first")
    return node


def free_port() -> int:
    """A port nothing uses right now, below the ephemeral range (32768+ on Linux).

    Picking from the ephemeral range would race with every outgoing connection on
    the machine (the loaders' own included); the server start is retried anyway.
    """
    for _ in range(200):
        port = random.randint(20000, 32000)
        with socket.socket() as s:
            try:
                s.bind((LOOPBACK, port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port between 20000 and 32000")


class ServerExited(RuntimeError):
    pass


def wait_accepting(port: int, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServerExited(f"server exited with {proc.returncode} before listening")
        with socket.socket() as s:
            s.settimeout(0.2)
            if s.connect_ex((LOOPBACK, port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"server did not accept on port {port} within {timeout:g}s")


def raise_fd_limit(wanted: int) -> int:
    """Raise RLIMIT_NOFILE (soft, up to the hard limit) for this process and its children."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class CpuMeter:
    """CPU seconds (user + system, all threads) of a set of processes between two marks."""

    def __init__(self, pids: list[int]) -> None:
        self.procs = [psutil.Process(p) for p in pids]
        self._t0 = 0.0
        self._c0 = 0.0

    def _cpu(self) -> float:
        total = 0.0
        for p in self.procs:
            with contextlib.suppress(psutil.Error):
                t = p.cpu_times()
                total += t.user + t.system
        return total

    def start(self) -> None:
        self._t0, self._c0 = time.perf_counter(), self._cpu()

    def stop(self) -> dict[str, float]:
        wall = time.perf_counter() - self._t0
        cpu = self._cpu() - self._c0
        return {"cpu_seconds": cpu, "wall_seconds": wall, "cpu_percent": 100 * cpu / wall}


class Meters:
    """Server, loader and whole-machine CPU over one window, in % of one core.

    ``other_cpu`` is what the rest of the machine (the parent, other users'
    processes) burned meanwhile: on a shared box it says how noisy the run was.
    """

    def __init__(self, server_pids: int | list[int], loader_pids: list[int]) -> None:
        # Several server processes (bench cluster's nodes) count as one server.
        pids = server_pids if isinstance(server_pids, list) else [server_pids]
        self.server = CpuMeter(pids)
        self.loaders = CpuMeter(loader_pids)

    @staticmethod
    def _busy() -> float:
        t = psutil.cpu_times()
        return float(sum(t) - t.idle - getattr(t, "iowait", 0.0))

    def start(self) -> None:
        self.server.start()
        self.loaders.start()
        self._b0, self._t0 = self._busy(), time.perf_counter()

    def stop(self) -> dict[str, float]:
        server, loaders = self.server.stop(), self.loaders.stop()
        machine = 100 * (self._busy() - self._b0) / (time.perf_counter() - self._t0)
        return {
            "server_cpu": server["cpu_percent"],
            "loader_cpu": loaders["cpu_percent"],
            "other_cpu": max(0.0, machine - server["cpu_percent"] - loaders["cpu_percent"]),
        }


@dataclass
class Database:
    """The database a meshroom target uses: a fresh SQLite file or a fresh PostgreSQL database."""

    url: str
    kind: str
    _drop: Any = None

    @classmethod
    def create(cls, spec: str, workdir: Path) -> Database:
        if spec in ("sqlite", "") or spec.startswith("sqlite"):
            return cls(f"sqlite:///{workdir / 'meshroom.db'}", "sqlite")
        import sqlalchemy as sa

        base = sa.make_url(spec)
        name = f"meshroom_bench_{os.getpid()}_{secrets.token_hex(3)}"
        admin = sa.create_engine(base, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        admin.dispose()

        def drop() -> None:
            engine = sa.create_engine(base, isolation_level="AUTOCOMMIT")
            with engine.connect() as conn:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            engine.dispose()

        url = base.set(database=name).render_as_string(hide_password=False)
        return cls(url, "postgresql", drop)

    def open_rows(self, meeting_id: str) -> int:
        """Attendance rows of the meeting that have no leave written yet."""
        import sqlalchemy as sa

        if not hasattr(self, "_engine"):
            self._engine = sa.create_engine(self.url)
        with self._engine.connect() as conn:
            return int(
                conn.execute(
                    sa.text(
                        "SELECT count(*) FROM attendance WHERE meeting_id = :m AND left_at IS NULL"
                    ),
                    {"m": meeting_id},
                ).scalar_one()
            )

    def rows(self, meeting_id: str) -> dict[str, int]:
        import sqlalchemy as sa

        if not hasattr(self, "_engine"):
            self._engine = sa.create_engine(self.url)
        with self._engine.connect() as conn:
            result = conn.execute(
                sa.text(
                    "SELECT coalesce(leave_reason, 'open'), count(*) FROM attendance "
                    "WHERE meeting_id = :m GROUP BY 1"
                ),
                {"m": meeting_id},
            ).all()
        return {str(k): int(v) for k, v in result}

    def close(self) -> None:
        if hasattr(self, "_engine"):
            self._engine.dispose()
        if self._drop is not None:
            try:
                self._drop()
            except Exception as exc:
                print(f"bench: could not drop the bench database: {exc}", file=sys.stderr)


@dataclass
class Target:
    """One server under test."""

    name: str
    kind: str  # "meshroom", "naive" or "node-socketio"
    # meshroom's "standalone" wsproto listener, its Quart route served by hypercorn, or
    # "socketio": the Socket.IO endpoint, which `meshroom serve` routes at /socket.io/
    # on the standalone listener (same server, the loaders speak Socket.IO)
    transport: str = "standalone"
    database: str = "sqlite"
    profile: str | None = None  # "cprofile", "pyinstrument" or None
    profile_out: Path | None = None
    env: dict[str, str] = field(default_factory=dict)
    port: int = 0
    http_port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    workdir: Path | None = None
    db: Database | None = None
    secret: str = field(default_factory=lambda: secrets.token_urlsafe(48))

    @property
    def client_port(self) -> int:
        """Where the loaders connect: the standalone listener or the HTTP (Quart) port."""
        return self.http_port if self.transport == "quart" else self.port

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def psutil_process(self) -> psutil.Process:
        return psutil.Process(self.pid)

    def rss(self) -> int:
        return int(self.psutil_process.memory_info().rss)

    def _meshroom_env(self) -> dict[str, str]:
        assert self.db is not None and self.workdir is not None
        env = dict(os.environ)
        env.update(
            {
                "MESHROOM_HOST": LOOPBACK,
                "MESHROOM_PORT": str(self.port),
                "MESHROOM_DATABASE_URL": self.db.url,
                "MESHROOM_SECRET": self.secret,
                "MESHROOM_SECRET_FILE": str(self.workdir / "meshroom.secret"),
                "MESHROOM_LOG_LEVEL": "WARNING",
                # The HTTP API (and its Quart signaling route) only when that is measured.
                "MESHROOM_HTTP_PORT": str(self.http_port) if self.http_port else http_off(),
                "MESHROOM_API_KEY_FILE": str(self.workdir / "meshroom.apikey"),
                "MESHROOM_ATTENDANCE_JOURNAL": str(self.workdir / "meshroom.journal"),
                # A load generator is the abuse the limits are there to stop: the relay
                # floods past the per-connection rate limit, teardown fills one room far
                # past max-room-peers. Measured without them (meshroom serve has both on).
                "MESHROOM_RATE_LIMIT": "0",
                "MESHROOM_MAX_ROOM_PEERS": "0",
            }
        )
        env.update(self.env)
        return env

    @contextlib.contextmanager
    def running(self) -> Iterator[Target]:
        self.workdir = Path(tempfile.mkdtemp(prefix=f"bench-{self.kind}-"))
        self.port = free_port()
        self.http_port = free_port() if self.transport == "quart" else 0
        try:
            if self.kind == "meshroom":
                self.db = Database.create(self.database, self.workdir)
                # Create the schema before the server starts, with meshroom's own CLI.
                self.create_meeting("warm-up")
                cmd = [*MESHROOM, "serve"]
                env = self._meshroom_env()
            elif self.kind == "node-socketio":
                cmd = [node_binary(), str(NODE_RELAY), "--port", str(self.port)]
                env = dict(os.environ)
            else:
                cmd = [sys.executable, "-m", "bench.naive_relay", "--port", str(self.port)]
                env = dict(os.environ)
            if self.profile:
                assert self.profile_out is not None
                self.profile_out.parent.mkdir(parents=True, exist_ok=True)
                if self.profile == "cprofile":
                    cmd[1:1] = ["-m", "cProfile", "-o", str(self.profile_out)]
                else:
                    cmd[1:1] = ["-m", "pyinstrument", "-r", "html", "-o", str(self.profile_out)]
            for attempt in range(5):
                if self.kind == "meshroom":
                    env["MESHROOM_PORT"] = str(self.port)
                    http = str(self.http_port) if self.http_port else http_off()
                    env["MESHROOM_HTTP_PORT"] = http
                else:
                    cmd[cmd.index("--port") + 1] = str(self.port)
                self.proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL)
                try:
                    wait_accepting(self.port, self.proc)
                    if self.http_port:
                        wait_accepting(self.http_port, self.proc)
                    time.sleep(0.2)
                    if self.proc.poll() is not None:  # a listener failed after the first bound
                        raise ServerExited(f"server exited with {self.proc.returncode}")
                    break
                except ServerExited:
                    if attempt == 4:
                        raise
                    self.port = free_port()  # most likely someone took the port meanwhile
                    if self.http_port:
                        self.http_port = free_port()
            yield self
        finally:
            self.stop()
            if self.db is not None:
                self.db.close()
            shutil.rmtree(self.workdir, ignore_errors=True)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60 if self.profile else 20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    # Meetings and tokens

    def create_meeting(self, title: str, host: str = "host") -> str:
        """A LIVE meeting, made with ``meshroom meeting create --start --json``; its id."""
        if self.kind != "meshroom":
            return f"room-{uuid.uuid4().hex[:8]}"
        out = subprocess.run(
            [*MESHROOM, "meeting", "create", "--title", title, "--host", host, "--start", "--json"],
            env=self._meshroom_env(),
            check=True,
            capture_output=True,
            text=True,
        )
        return str(json.loads(out.stdout)["id"])

    def create_meetings(self, count: int, title: str = "bench room") -> list[str]:
        """``count`` LIVE meetings, made in-process through meshroom's store (fast in bulk)."""
        if self.kind != "meshroom":
            return [f"room-{uuid.uuid4().hex[:8]}" for _ in range(count)]
        assert self.db is not None
        return live_meetings(self.db.url, count, title)

    def token(self, meeting_id: str, emp_id: str, *, host: bool = False) -> str:
        if self.kind != "meshroom":
            return f"{meeting_id}|{emp_id}"
        return bench_token(self.secret, meeting_id, emp_id, host=host)


def live_meetings(database_url: str, count: int, title: str = "bench room") -> list[str]:
    """``count`` LIVE meetings, made in-process through meshroom's store (fast in bulk)."""
    import trio

    from meshroom import MeetingStatus, SqlStore

    async def make() -> list[str]:
        store = SqlStore(database_url, pool_size=2)
        await store.open()
        try:
            ids = []
            for i in range(count):
                meeting = await store.create_meeting(title=f"{title} {i}", host_emp_id="host")
                await store.transition(meeting.id, MeetingStatus.LIVE)
                ids.append(meeting.id)
            return ids
        finally:
            await store.close()

    return trio.run(make)


@functools.cache
def _keys(secret: str) -> Any:
    from meshroom import TokenKeys

    return TokenKeys.shared_secret(secret)


def bench_token(secret: str, meeting_id: str, emp_id: str, *, host: bool = False) -> str:
    """A two-hour access token signed with ``secret``."""
    from meshroom import Role, mint_token

    return mint_token(
        _keys(secret),
        meeting_id=meeting_id,
        emp_id=emp_id,
        display_name=emp_id,
        role=Role.HOST if host else Role.PARTICIPANT,
        ttl=dt.timedelta(hours=2),
    )
