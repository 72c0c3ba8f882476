"""Helpers for the Socket.IO tests: a server with the endpoint, and client drivers.

A *driver* is an unmodified Socket.IO client in a subprocess (npm ``socket.io-client``
via node/driver.js, or python-socketio's asyncio ``AsyncClient`` via py_driver.py),
commanded with JSON lines and reporting what it observes as JSON lines, so the
tests wait for observable effects (an event, an ack, a disconnect) and never sleep.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
from _servers import RunningServer, server_settings, start_server

from meshroom.transports.socketio import SOCKETIO_PATH, SocketIOEndpoint, endpoint_for
from meshroom.transports.websocket import Upgrade, WebSocketConnection, serve_websocket

HERE = Path(__file__).parent
NODE_DIR = HERE / "node"
# Every observation a test waits for must come within this many seconds.
WAIT = 10.0
# The disconnect reason each client library reports for a Socket.IO DISCONNECT from
# the server (after which it does not reconnect by itself).
SERVER_DISCONNECT = {"node": "io server disconnect", "python": "server disconnect"}
# The reasons for a transport that ended under the socket (it then reconnects).
TRANSPORT_ENDED = {"transport close", "transport error"}


@dataclass
class SioServer:
    """A meshroom server, plus a listener serving ``/socket.io/`` over the same hub.

    The extra listener is :func:`serve_websocket` with the endpoint as its
    ``extra_route`` (what ``meshroom serve`` does on its signaling port), and
    native WebSockets at ``/meetings`` on the same port.
    """

    native: RunningServer
    endpoint: SocketIOEndpoint
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/meetings"


@asynccontextmanager
async def socketio_server(tmp_path: Path, **overrides: Any) -> AsyncIterator[SioServer]:
    settings = server_settings(tmp_path, **overrides)
    async with trio.open_nursery() as outer:
        native = await start_server(outer, settings)
        hub = native.hub
        async with trio.open_nursery() as nursery:
            endpoint = endpoint_for(settings, hub.serve)
            await nursery.start(endpoint.run)
            listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
            port = listeners[0].socket.getsockname()[1]

            async def native_handler(conn: WebSocketConnection, upgrade: Upgrade) -> None:
                await hub.serve(conn, token=upgrade.token, resume_token=upgrade.resume_token)

            await nursery.start(
                partial(
                    serve_websocket,
                    native_handler,
                    listeners,
                    max_message_bytes=settings.max_message_bytes,
                    handshake_timeout=settings.auth_timeout,
                    slots=hub.slots,
                    extra_route=(SOCKETIO_PATH, endpoint.serve_stream),
                )
            )
            yield SioServer(native, endpoint, port)
            native.server.request_shutdown()
            with trio.move_on_after(WAIT):
                await native.server._http_done.wait()
            nursery.cancel_scope.cancel()


def node_available() -> str | None:
    """Why the Node tests cannot run here (None: they can). In CI they must run."""
    if shutil.which("node") is None:
        return "node is not on PATH"
    if not (NODE_DIR / "node_modules" / "socket.io-client").is_dir():
        return "run `npm ci` in tests/socketio/node first"
    return None


def require_node() -> None:
    reason = node_available()
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(f"Socket.IO Node tests cannot run in CI: {reason}")
        pytest.skip(reason)


@dataclass
class Driver:
    """One Socket.IO client in a subprocess."""

    kind: str  # "node" or "python"
    process: trio.Process
    seen: list[dict[str, Any]] = field(default_factory=list)  # unread observations
    history: list[dict[str, Any]] = field(default_factory=list)
    _buffer: bytes = b""
    _tags: int = 0

    async def send(self, cmd: str, **fields: Any) -> None:
        assert self.process.stdin is not None
        await self.process.stdin.send_all((json.dumps({"cmd": cmd, **fields}) + "\n").encode())

    async def _read(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        while b"\n" not in self._buffer:
            data = await self.process.stdout.receive_some(65536)
            if not data:
                raise AssertionError(f"{self.kind} driver exited; saw {self.history}")
            self._buffer += data
        line, self._buffer = self._buffer.split(b"\n", 1)
        obs: dict[str, Any] = json.loads(line)
        self.history.append(obs)
        return obs

    async def expect(self, type: str, **match: Any) -> dict[str, Any]:
        """The first unread observation of ``type`` whose fields equal ``match``."""

        def fits(obs: dict[str, Any]) -> bool:
            return obs["type"] == type and all(obs.get(k) == v for k, v in match.items())

        for i, obs in enumerate(self.seen):
            if fits(obs):
                return self.seen.pop(i)
        with trio.move_on_after(WAIT):
            while True:
                obs = await self._read()
                if fits(obs):
                    return obs
                self.seen.append(obs)
        raise AssertionError(
            f"{self.kind}: no {type} {match} within {WAIT} s; last seen: {self.history[-8:]}"
        )

    async def event(self, name: str) -> Any:
        """The data of the next unread event ``name``."""
        return (await self.expect("event", event=name))["data"]

    async def connect(
        self,
        url: str,
        token: str | None = None,
        *,
        transports: list[str] | None = None,
        **extra: Any,
    ) -> None:
        auth = extra.pop("auth", {"meetingAccessToken": token} if token is not None else {})
        await self.send("connect", url=url, auth=auth, transports=transports, **extra)

    async def join(self, url: str, token: str, *, transports: list[str] | None = None) -> Any:
        """Connect and wait until joined; the room:joined snapshot."""
        await self.connect(url, token, transports=transports)
        await self.expect("connect")
        return await self.event("room:joined")

    async def call(self, event: str, data: Any) -> list[Any]:
        """Emit with an ack callback; the ack's arguments."""
        self._tags += 1
        tag = self._tags
        await self.send("emit", event=event, data=data, ack=True, tag=tag)
        return list((await self.expect("ack", tag=tag))["args"])

    async def emit(self, event: str, data: Any) -> None:
        await self.send("emit", event=event, data=data)
        await self.expect("done", cmd="emit")

    def unread(self, type: str) -> list[dict[str, Any]]:
        return [obs for obs in self.seen if obs["type"] == type]


@asynccontextmanager
async def driver(kind: str) -> AsyncIterator[Driver]:
    if kind == "node":
        require_node()
        command = [shutil.which("node") or "node", str(NODE_DIR / "driver.js")]
    else:
        command = [sys.executable, str(HERE / "py_driver.py")]
    process = await trio.lowlevel.open_process(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    d = Driver(kind, process)
    try:
        await d.expect("ready")
        yield d
    finally:
        with trio.move_on_after(2) as waiting:
            waiting.shield = True
            try:
                await d.send("exit")
                await process.wait()
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
        if process.returncode is None:
            process.kill()
            with trio.CancelScope(shield=True):
                await process.wait()
        for stream in (process.stdin, process.stdout):
            if stream is not None:
                await stream.aclose()


async def upgrade_runs(url: str, tokens: list[str]) -> list[dict[str, Any]]:
    """Connect socket.io-client with its default transports once per token, one after
    the other (node/upgrades.js); per connection, whether it upgraded to WebSocket.

    Each connection is done once its namespace is connected and its upgrade settled
    (the engine's ``upgrade`` or ``upgradeError``): no timing is involved.
    """
    require_node()
    command = [shutil.which("node") or "node", str(NODE_DIR / "upgrades.js")]
    process = await trio.lowlevel.open_process(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert process.stdin is not None and process.stdout is not None
    results: list[dict[str, Any]] = []
    buffer = b""
    try:
        await process.stdin.send_all((json.dumps({"url": url, "tokens": tokens}) + "\n").encode())
        # A probe that hangs ends after the server's connect timeout (10 s) at worst.
        with trio.fail_after(WAIT + 3 * len(tokens)):
            while True:
                data = await process.stdout.receive_some(65536)
                if not data:
                    raise AssertionError(f"upgrades.js exited; saw {results}")
                buffer += data
                *lines, rest = buffer.split(b"\n")
                buffer = rest
                for line in lines:
                    obs = json.loads(line)
                    if obs["type"] == "end":
                        return results
                    results.append(obs)
    finally:
        if process.returncode is None:
            process.kill()
        with trio.CancelScope(shield=True):
            await process.wait()
        for stream in (process.stdin, process.stdout):
            await stream.aclose()


async def state(d: Driver) -> dict[str, Any]:
    """Whether the client is connected, and whether it is (or will be) reconnecting."""
    await d.send("state")
    return await d.expect("state")
