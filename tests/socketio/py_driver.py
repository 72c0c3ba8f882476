"""Drives one python-socketio ``AsyncClient`` for tests/socketio (see harness.py).

Run as a subprocess: python-socketio is asyncio, the tests are trio. stdin: one
JSON command per line; stdout: one JSON observation per line (as node/driver.js).
MESHROOM_SIO_DEBUG=1 shows the client's own protocol log on stderr.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import Any

import socketio


def out(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


class Client:
    def __init__(self, cmd: dict[str, Any]) -> None:
        self.namespace: str = cmd.get("namespace", "/meetings")
        debug = bool(os.environ.get("MESHROOM_SIO_DEBUG"))
        self.sio = socketio.AsyncClient(
            reconnection=cmd.get("reconnection", True),
            reconnection_delay=0.05,
            reconnection_delay_max=0.1,
            randomization_factor=0,
            logger=debug,
            engineio_logger=debug,
        )
        self.tasks: set[asyncio.Task[None]] = set()
        ns = self.namespace
        self.sio.on("connect", self.on_connect, namespace=ns)
        self.sio.on("connect_error", self.on_connect_error, namespace=ns)
        self.sio.on("disconnect", self.on_disconnect, namespace=ns)
        self.sio.on("*", self.on_any, namespace=ns)

    async def on_connect(self) -> None:
        out({"type": "connect", "transport": self.sio.transport()})

    async def on_connect_error(self, data: Any = None) -> None:
        message = data.get("message") if isinstance(data, dict) else data
        data_field = data.get("data") if isinstance(data, dict) else None
        out({"type": "connect_error", "message": message, "data": data_field})

    async def on_disconnect(self, reason: Any = None) -> None:
        out({"type": "disconnect", "reason": str(reason)})

    async def on_any(self, event: str, *args: Any) -> None:
        out({"type": "event", "event": event, "data": args[0] if args else None})

    async def connect(self, cmd: dict[str, Any]) -> None:
        try:
            await self.sio.connect(
                cmd["url"],
                namespaces=[self.namespace],
                auth=cmd.get("auth"),
                transports=cmd.get("transports"),
                wait_timeout=5,
            )
        except socketio.exceptions.ConnectionError as exc:
            out({"type": "connect_failed", "message": str(exc)})

    async def call(self, cmd: dict[str, Any]) -> None:
        result = await self.sio.call(
            cmd["event"], cmd.get("data"), namespace=self.namespace, timeout=5
        )
        args = list(result) if isinstance(result, tuple) else [result]
        out({"type": "ack", "tag": cmd.get("tag"), "args": args})

    async def handle(self, cmd: dict[str, Any]) -> None:
        if cmd["cmd"] == "connect":
            await self.connect(cmd)
        elif cmd["cmd"] == "emit" and cmd.get("ack"):
            # In the background: the ack may come after other commands.
            task = asyncio.create_task(self.call(cmd))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        elif cmd["cmd"] == "emit":
            await self.sio.emit(cmd["event"], cmd.get("data"), namespace=self.namespace)
        elif cmd["cmd"] == "disconnect":
            await self.sio.disconnect()
        elif cmd["cmd"] == "state":
            # "active": connected, or a reconnection is under way (as socket.active in JS).
            reconnecting = self.sio._reconnect_task is not None
            out(
                {
                    "type": "state",
                    "connected": self.sio.connected,
                    "active": self.sio.connected or reconnecting,
                }
            )


async def main() -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    client: Client | None = None
    out({"type": "ready"})
    while line := await reader.readline():
        if not line.strip():
            continue
        cmd = json.loads(line)
        if cmd["cmd"] == "exit":
            break
        if cmd["cmd"] == "connect":
            client = Client(cmd)
        assert client is not None
        await client.handle(cmd)
        out({"type": "done", "cmd": cmd["cmd"], "tag": cmd.get("tag")})
    if client is not None and client.sio.connected:
        await client.sio.disconnect()


if __name__ == "__main__":
    asyncio.run(main())
