"""In-memory connections and a hub on a real store, for attendance tests without sockets."""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import trio

from meshroom import Role, mint_token
from meshroom.auth import TokenKeys
from meshroom.core import ConnectionClosed, Hub, HubConfig
from meshroom.core.attendance import AttendanceConfig
from meshroom.core.connection import ConnectionTimedOut
from meshroom.store import AttendanceRecord, Meeting, MeetingStatus, SqlStore

SECRET = "store-tests-secret-" + "x" * 40
KEYS = TokenKeys("HS256", SECRET, SECRET, audience="meshroom", issuer="meshroom")


class FakeConnection:
    """A client connection as the hub sees it; the test plays the client."""

    def __init__(self, name: str, *, stall_after_join: bool = False) -> None:
        self.name = name
        # A client that stops reading once it has joined: later sends block forever.
        self.stall_after_join = stall_after_join
        self.sent_frames = 0
        self._inbound_send, self._inbound = trio.open_memory_channel[str | bytes](math.inf)
        # Raw frames, decoded only when a test looks for one (storms send O(n^2) of them).
        self._outbound_send, self._outbound = trio.open_memory_channel[bytes](math.inf)
        self.close_code: int | None = None
        self.closed = trio.Event()
        self.timed_out = False
        # Set when Hub.serve returned: the session is over and its leave recorded (or queued).
        self.served = trio.Event()

    @property
    def remote(self) -> str:
        return f"fake:{self.name}"

    async def receive(self) -> str | bytes:
        try:
            return await self._inbound.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            if self.timed_out:
                raise ConnectionTimedOut(None, "heartbeat timeout") from None
            raise ConnectionClosed(self.close_code or 1006) from None

    async def send(self, frames: Sequence[bytes | str]) -> None:
        if self.closed.is_set():
            raise ConnectionClosed(self.close_code)
        if self.stall_after_join and self.sent_frames:
            await trio.sleep_forever()
        for frame in frames:
            self.sent_frames += 1
            self._outbound_send.send_nowait(frame if isinstance(frame, bytes) else frame.encode())

    async def close(self, code: int, reason: str = "") -> None:
        if not self.closed.is_set():
            self.close_code = code
            self.closed.set()
            self._inbound_send.close()
            self._outbound_send.close()

    # The client's side

    async def request(self, event: str, data: dict[str, Any] | None = None, id: int = 1) -> None:
        await self._inbound_send.send(json.dumps({"event": event, "id": id, "data": data or {}}))

    def disconnect(self) -> None:
        """The network goes away: the server's next receive fails."""
        self._inbound_send.close()

    def stop_answering(self) -> None:
        """The client stops answering heartbeats: the transport gives up on it."""
        self.timed_out = True
        self._inbound_send.close()

    async def wait_for(self, event: str) -> dict[str, Any]:
        needle = event.encode()
        async for raw in self._outbound:
            if needle in raw:
                frame: dict[str, Any] = json.loads(raw)
                if frame.get("event") == event:
                    return frame
        raise AssertionError(f"{self.name} closed ({self.close_code}) before {event}")


def token(meeting: Meeting, emp_id: str, role: Role = Role.PARTICIPANT) -> str:
    return mint_token(
        KEYS,
        meeting_id=meeting.id,
        emp_id=emp_id,
        display_name=emp_id.title(),
        role=role,
        ttl=dt.timedelta(hours=1),
    )


class HubHarness:
    """A running hub on a real store, and helpers to join fake peers to it."""

    def __init__(self, hub: Hub, store: SqlStore, nursery: trio.Nursery) -> None:
        self.hub = hub
        self.store = store
        self.nursery = nursery

    async def live_meeting(self) -> Meeting:
        meeting = await self.store.create_meeting(title="Payroll", host_emp_id="host")
        return await self.store.transition(meeting.id, MeetingStatus.LIVE)

    async def join(
        self, meeting: Meeting, emp_id: str, role: Role = Role.PARTICIPANT, **options: Any
    ) -> FakeConnection:
        """Join and return once the peer is in the room (its row is open)."""
        conn = FakeConnection(emp_id, **options)
        self.nursery.start_soon(self.serve, conn, token(meeting, emp_id, role))
        joined = await conn.wait_for("room:joined")
        assert joined["data"]["self"]["empId"] == emp_id
        return conn

    async def serve(self, conn: FakeConnection, token: str) -> None:
        try:
            await self.hub.serve(conn, token=token)
        finally:
            conn.served.set()

    async def rows(self, meeting: Meeting) -> dict[str, list[AttendanceRecord]]:
        by_emp: dict[str, list[AttendanceRecord]] = {}
        for record in await self.store.attendance_for_meeting(meeting.id):
            by_emp.setdefault(record.emp_id, []).append(record)
        return by_emp


@asynccontextmanager
async def running_hub(
    store: SqlStore,
    *,
    config: HubConfig | None = None,
    attendance: AttendanceConfig | None = None,
) -> AsyncIterator[HubHarness]:
    config = config or HubConfig(close_timeout=1.0, auth_timeout=5.0)
    hub = Hub(store, KEYS, config, attendance=attendance)
    # The clients' tasks stop first; then the hub shuts down (recording every leave).
    async with hub.running(), trio.open_nursery() as clients:
        yield HubHarness(hub, store, clients)
        clients.cancel_scope.cancel()


class ServerProcess:
    """``meshroom serve`` in a subprocess, its log lines readable as they come."""

    def __init__(self, database_url: str, cwd: Any, *extra: str) -> None:
        self.args = [
            sys.executable, "-m", "meshroom", "serve",
            "--database-url", database_url, "--secret", SECRET,
            "--host", "127.0.0.1", "--port", "0", "--http-port", "0",
            "--log-level", "INFO", *extra,
        ]  # fmt: skip
        self.cwd = cwd
        self.lines: list[str] = []
        self._changed = trio.Event()
        self.process: trio.Process | None = None
        self.url = ""

    async def start(self, nursery: trio.Nursery) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MESHROOM_")}
        self.process = await trio.lowlevel.open_process(
            self.args, cwd=self.cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        nursery.start_soon(self._read)
        line = await self.wait_for_line("meshroom signaling on ")
        self.url = re.search(r"(ws://\S+)", line).group(1).rstrip(",")  # type: ignore[union-attr]

    async def _read(self) -> None:
        assert self.process is not None and self.process.stderr is not None
        buffer = b""
        async for chunk in self.process.stderr:
            buffer += chunk
            *complete, buffer = buffer.split(b"\n")
            self.lines.extend(line.decode(errors="replace") for line in complete)
            self._changed.set()
            self._changed = trio.Event()
        self._changed.set()

    async def wait_for_line(self, text: str) -> str:
        seen = 0
        while True:
            for line in self.lines[seen:]:
                if text in line:
                    return line
            seen = len(self.lines)
            if self.process is not None and self.process.returncode is not None:
                raise AssertionError(f"server exited before {text!r}:\n" + "\n".join(self.lines))
            await self._changed.wait()

    async def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        await self.process.wait()

    async def terminate(self) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return await self.process.wait()
