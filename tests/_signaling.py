"""Helpers shared by the networked signaling tests (not a test module)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import quote

import trio
from _servers import server_settings as server_settings
from _servers import start_server as start_server
from trio_websocket import ConnectionClosed, WebSocketConnection, open_websocket_url

from meshroom.client import Event, MeshroomError, Peer, connect

# Every networked test body runs under this deadline, so a bug fails instead of hanging.
DEADLINE = 10


@asynccontextmanager
async def raw_socket(
    url: str, *, token: str | None = None, queue: int = 64
) -> AsyncIterator[WebSocketConnection]:
    """A bare WebSocket to the server, with the token in the query string if given."""
    if token is not None:
        url = f"{url}?meetingAccessToken={quote(token)}"
    async with open_websocket_url(url, message_queue_size=queue) as ws:
        yield ws


async def send_json(ws: WebSocketConnection, event: str, data: Any = None, **extra: Any) -> None:
    frame: dict[str, Any] = {"event": event, **extra}
    if data is not None:
        frame["data"] = data
    await ws.send_message(json.dumps(frame))


async def receive_json(ws: WebSocketConnection) -> dict[str, Any]:
    return json.loads(await ws.get_message())  # type: ignore[no-any-return]


@asynccontextmanager
async def raw_peer(url: str, token: str) -> AsyncIterator[tuple[WebSocketConnection, dict]]:
    """A raw socket that has authenticated; yields it with its room:joined snapshot."""
    async with raw_socket(url) as ws:
        await send_json(ws, "auth", {"meetingAccessToken": token}, id=0)
        joined = await receive_json(ws)
        assert joined["event"] == "room:joined", joined
        yield ws, joined["data"]


async def close_code(ws: WebSocketConnection) -> tuple[int | None, list[dict[str, Any]]]:
    """Read until the server closes; the close code and every frame read on the way."""
    frames = []
    try:
        while True:
            frames.append(await receive_json(ws))
    except ConnectionClosed as exc:
        return (exc.reason.code if exc.reason else None), frames


async def next_frame(ws: WebSocketConnection, event: str) -> dict[str, Any]:
    """Skip frames until one called ``event``."""
    while True:
        frame = await receive_json(ws)
        if frame["event"] == event:
            return frame


async def events_until_closed(peer: Peer) -> list[Event]:
    events = []
    async for event in peer:
        events.append(event)
    await peer.wait_closed()
    return events


async def ping(peer: Peer) -> None:
    """A round trip: every frame the server queued for this peer before it is delivered."""
    await peer.request("ping")


def pending(peer: Peer) -> list[Event]:
    """The events received but not yet read, taken off the queue."""
    events = []
    while True:
        try:
            events.append(peer._events.receive_nowait())
        except trio.WouldBlock:
            return events


async def assert_quiet(*peers: Peer) -> None:
    """Each peer has been sent nothing it has not read yet (checked after a round trip)."""
    for peer in peers:
        await ping(peer)
        assert pending(peer) == [], peer.emp_id


async def request_error(peer: Peer, event: str, data: dict[str, Any] | None = None) -> str:
    """Send a request that must be refused; the error code."""
    try:
        answer = await peer.request(event, data)
    except MeshroomError as exc:
        return exc.code
    raise AssertionError(f"{event} was accepted: {answer}")


__all__ = ["DEADLINE", "Event", "Peer", "connect", "trio"]
