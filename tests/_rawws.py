"""A raw WebSocket client on a trio stream, driven by hand with wsproto (not a test module).

Unlike trio-websocket, it does nothing by itself: it never answers a ping, and
never closes unless told to; tests use it to play dead, half-open or rude clients.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)


class Refused(Exception):
    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(f"HTTP {status}: {body!r}")
        self.status = status
        self.body = body


class RawClient:
    def __init__(self, stream: trio.abc.Stream, ws: WSConnection) -> None:
        self.stream = stream
        self.ws = ws
        self.pings = 0
        self.close_code: int | None = None
        self._events: list[Event] = []

    async def send_text(self, text: str) -> None:
        await self.stream.send_all(self.ws.send(TextMessage(data=text)))

    async def send_bytes(self, data: bytes) -> None:
        await self.stream.send_all(self.ws.send(BytesMessage(data=data)))

    async def send_json(self, event: str, data: Any = None, **extra: Any) -> None:
        frame: dict[str, Any] = {"event": event, **extra}
        if data is not None:
            frame["data"] = data
        await self.send_text(json.dumps(frame))

    async def next_event(self) -> Event | None:
        """The next WebSocket event, or None when the server hung up. Pings are counted only."""
        while True:
            while self._events:
                event = self._events.pop(0)
                if isinstance(event, Ping):
                    self.pings += 1  # and never answered
                    continue
                if isinstance(event, CloseConnection):
                    self.close_code = event.code
                return event
            try:
                data = await self.stream.receive_some(65536)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            if not data:
                return None
            self.ws.receive_data(data)
            self._events.extend(self.ws.events())

    async def receive_json(self) -> dict[str, Any]:
        """The next text frame, parsed; AssertionError if the server closed first."""
        while True:
            event = await self.next_event()
            if isinstance(event, TextMessage):
                return json.loads(event.data)  # type: ignore[no-any-return]
            if event is None or isinstance(event, CloseConnection):
                raise AssertionError(f"closed ({self.close_code}) while waiting for a frame")

    async def frames_until_closed(self) -> list[dict[str, Any]]:
        """Every text frame until the server closes (or hangs up); see ``close_code``."""
        frames = []
        while True:
            event = await self.next_event()
            if isinstance(event, TextMessage):
                frames.append(json.loads(event.data))
            elif event is None or isinstance(event, CloseConnection):
                return frames

    async def authenticate(self, token: str, **data: Any) -> dict[str, Any]:
        await self.send_json("auth", {"meetingAccessToken": token, **data}, id=0)
        return await self.receive_json()

    async def abort(self) -> None:
        await trio.aclose_forcefully(self.stream)


async def open_stream(url: str, *, ssl_context: ssl.SSLContext | None = None) -> trio.abc.Stream:
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    stream: trio.abc.Stream = await trio.open_tcp_stream(parts.hostname, parts.port)
    if parts.scheme == "wss":
        assert ssl_context is not None
        stream = trio.SSLStream(stream, ssl_context, server_hostname=parts.hostname)
    return stream


async def handshake(
    stream: trio.abc.Stream, url: str, *, headers: dict[str, str] | None = None
) -> RawClient:
    """Upgrade ``stream`` to a WebSocket. Raises Refused with the HTTP status if refused."""
    parts = urlsplit(url)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    ws = WSConnection(ConnectionType.CLIENT)
    extra = [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await stream.send_all(ws.send(Request(host=parts.netloc, target=target, extra_headers=extra)))
    status, body = None, b""
    while True:
        data = await stream.receive_some(65536)
        if not data:
            if status is not None:
                raise Refused(status, body)
            raise ConnectionError("the server hung up during the handshake")
        ws.receive_data(data)
        for event in ws.events():
            if isinstance(event, AcceptConnection):
                return RawClient(stream, ws)
            if isinstance(event, RejectConnection):
                status = event.status_code
                if not event.has_body:
                    raise Refused(status, b"")
            elif isinstance(event, RejectData):
                body += event.data
                if event.body_finished:
                    assert status is not None
                    raise Refused(status, body)


@asynccontextmanager
async def raw_client(
    url: str,
    *,
    headers: dict[str, str] | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> AsyncIterator[RawClient]:
    stream = await open_stream(url, ssl_context=ssl_context)
    try:
        client = await handshake(stream, url, headers=headers)
        yield client
    finally:
        await trio.aclose_forcefully(stream)
