"""A hub on an in-memory SQLite store, and in-memory client connections (not a test module).

``MemoryConnection`` implements the core's three-method Connection contract with
trio memory channels: no sockets, no transport, so tests control every step and
can wait for quiescence with ``trio.testing.wait_all_tasks_blocked``.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio

from meshroom import Role, mint_token
from meshroom.auth import TokenKeys
from meshroom.core import ConnectionClosed, ConnectionTimedOut, Hub, HubConfig
from meshroom.metrics import Metrics
from meshroom.store import Meeting, MeetingStatus, SqlStore

SECRET = "memory-hub-secret-" + "x" * 40
KEYS = TokenKeys("HS256", SECRET, SECRET, audience="meshroom", issuer="meshroom")

_TIMED_OUT = object()  # queued into a connection: its next receive raises ConnectionTimedOut
REAL_TIME_LIMIT = 30.0


@pytest.fixture(name="real_time_watchdog")
async def real_time_watchdog_fixture() -> AsyncIterator[None]:
    """Fail a test still running after REAL_TIME_LIMIT seconds of wall-clock time.

    Tests on a MockClock cannot use trio.fail_after (virtual time stands still while
    they wait), so a regression that makes one wait forever would hang the run instead.
    Request it as an argument: pytest-trio ignores async fixtures given by usefixtures.
    """

    async def watchdog() -> None:
        await trio.to_thread.run_sync(time.sleep, REAL_TIME_LIMIT, abandon_on_cancel=True)
        raise AssertionError(f"still running after {REAL_TIME_LIMIT:g} s of real time")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watchdog)
        yield
        nursery.cancel_scope.cancel()


class MemoryConnection:
    """One client connection: the hub calls receive/send/close, the test plays the client."""

    _serial = 0

    def __init__(self, name: str) -> None:
        MemoryConnection._serial += 1
        self.name = name
        self.serial = MemoryConnection._serial
        self._to_server, self._from_client = trio.open_memory_channel[Any](math.inf)
        self._to_client, self._from_server = trio.open_memory_channel[bytes](math.inf)
        self.close_code: int | None = None
        self.close_reason = ""
        self.closed = trio.Event()
        self.dropped = False
        self.stalled = False  # the client stopped reading: writes and the close hang
        self.served = trio.Event()  # Hub.serve returned for this connection
        self.seen: list[dict[str, Any]] = []  # every frame the test has read, in order

    # The server's side (the Connection contract)

    @property
    def remote(self) -> str:
        return f"memory:{self.name}#{self.serial}"

    async def receive(self) -> str | bytes:
        try:
            message = await self._from_client.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise ConnectionClosed(self.close_code or 1006) from None
        if message is _TIMED_OUT:
            raise ConnectionTimedOut(None, "heartbeat timeout")
        return message  # type: ignore[no-any-return]

    async def send(self, frames: Sequence[bytes]) -> None:
        await trio.lowlevel.checkpoint()
        if self.stalled:
            await trio.sleep_forever()
        if self.dropped or self.closed.is_set():
            raise ConnectionClosed(self.close_code or 1006)
        for frame in frames:
            self._to_client.send_nowait(frame)

    async def close(self, code: int, reason: str = "") -> None:
        await trio.lowlevel.checkpoint()
        if self.stalled:
            await trio.sleep_forever()
        if not self.closed.is_set():
            self.close_code, self.close_reason = code, reason
            self.closed.set()
            self._to_client.close()

    # The client's side

    async def send_json(self, event: str, data: Any = None, **extra: Any) -> None:
        frame: dict[str, Any] = {"event": event, **extra}
        if data is not None:
            frame["data"] = data
        await self.send_text(json.dumps(frame))

    async def send_text(self, text: str | bytes) -> None:
        if not self.dropped:
            self._to_server.send_nowait(text)

    def drop(self) -> None:
        """The network goes away: the server's receive fails, its sends fail."""
        self.dropped = True
        self._to_server.close()

    def stall(self) -> None:
        """The client stops reading, and never answers a close (a frozen tab, a dead NAT)."""
        self.stalled = True

    def time_out(self) -> None:
        """The transport's heartbeat gives up on this client."""
        self.dropped = True
        self._to_server.send_nowait(_TIMED_OUT)

    def frames(self) -> list[dict[str, Any]]:
        """Every frame the server sent that the test has not read yet (never blocks)."""
        out = []
        while True:
            try:
                out.append(json.loads(self._from_server.receive_nowait()))
            except (trio.WouldBlock, trio.EndOfChannel):
                self.seen.extend(out)
                return out

    async def next_frame(self) -> dict[str, Any]:
        try:
            frame: dict[str, Any] = json.loads(await self._from_server.receive())
        except trio.EndOfChannel:
            raise AssertionError(f"{self.name} closed ({self.close_code})") from None
        self.seen.append(frame)
        return frame

    async def wait_for(self, event: str, **match: Any) -> dict[str, Any]:
        while True:
            frame = await self.next_frame()
            data = frame.get("data") or {}
            if frame["event"] == event and all(data.get(k) == v for k, v in match.items()):
                return frame


class MemoryHub:
    """A running hub on ``sqlite://``; joins in-memory clients to it."""

    def __init__(self, hub: Hub, store: SqlStore, nursery: trio.Nursery) -> None:
        self.hub = hub
        self.store = store
        self.nursery = nursery
        self.metrics = Metrics()  # fed by the hub's events, as the runtime wires it
        self.metrics.observe(hub)

    async def meeting(self, title: str = "Standup", host: str = "host") -> Meeting:
        meeting = await self.store.create_meeting(title=title, host_emp_id=host)
        return await self.store.transition(meeting.id, MeetingStatus.LIVE)

    def token(self, meeting: Meeting | str, emp_id: str, role: Role = Role.PARTICIPANT) -> str:
        return mint_token(
            KEYS,
            meeting_id=meeting if isinstance(meeting, str) else meeting.id,
            emp_id=emp_id,
            display_name=emp_id.title(),
            role=role,
            ttl=dt.timedelta(hours=1),
        )

    def connect(self, name: str, conn: MemoryConnection | None = None) -> MemoryConnection:
        """A fresh connection (``conn``, if given) served by the hub; it must authenticate."""
        conn = conn or MemoryConnection(name)
        self.nursery.start_soon(self._serve, conn)
        return conn

    async def _serve(self, conn: MemoryConnection) -> None:
        try:
            await self.hub.serve(conn)
        finally:
            conn.served.set()

    async def join(
        self,
        meeting: Meeting | str,
        emp_id: str,
        role: Role = Role.PARTICIPANT,
        *,
        resume_token: str | None = None,
        last_seq: int | None = None,
        conn: MemoryConnection | None = None,
    ) -> tuple[MemoryConnection, dict[str, Any]]:
        """Connect and authenticate; the connection and its first frame (joined, or error)."""
        conn = self.connect(emp_id, conn)
        data: dict[str, Any] = {"meetingAccessToken": self.token(meeting, emp_id, role)}
        if resume_token is not None:
            data["resumeToken"] = resume_token
        if last_seq is not None:
            data["lastSeq"] = last_seq
        await conn.send_json("auth", data, id=0)
        return conn, await conn.next_frame()

    def room(self, meeting: Meeting | str) -> Any:
        return self.hub.rooms.get(meeting if isinstance(meeting, str) else meeting.id)


@asynccontextmanager
async def memory_hub(config: HubConfig | None = None) -> AsyncIterator[MemoryHub]:
    store = SqlStore("sqlite://")
    await store.open()
    try:
        hub = Hub(store, KEYS, config or HubConfig(close_timeout=1.0))
        async with hub.running(), trio.open_nursery() as clients:
            yield MemoryHub(hub, store, clients)
            clients.cancel_scope.cancel()
    finally:
        await store.close()
