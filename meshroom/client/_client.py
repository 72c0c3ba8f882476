from __future__ import annotations

import json
import math
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, open_websocket_url

# Tell the server every this many frames which one we have, so it can forget them.
ACK_EVERY = 128


@dataclass(frozen=True, slots=True)
class Event:
    name: str
    data: dict[str, Any] = field(default_factory=dict)
    id: int | str | None = None


class MeshroomError(Exception):
    """The server answered a request with an ``error`` frame."""

    def __init__(self, code: str, message: str, data: dict[str, Any] | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.data = data or {}


class JoinRefused(MeshroomError):
    """The server refused to admit this connection, and closed it."""

    def __init__(
        self, code: str, message: str, close_code: int | None, data: dict[str, Any] | None = None
    ) -> None:
        super().__init__(code, message, data)
        self.close_code = close_code


class Peer:
    """One joined connection. Create it with :func:`connect`."""

    def __init__(self, ws: WebSocketConnection) -> None:
        self._ws = ws
        self._next_id = 1
        self._waiting: dict[int, trio.MemorySendChannel[Event]] = {}
        self._events_in, self._events = trio.open_memory_channel[Event](math.inf)
        self.snapshot: dict[str, Any] = {}
        self.resumed = False  # this connection took back an earlier one's place (room:resumed)
        # The seq of the last frame received: pass it to connect(..., last_seq=) to resume
        # with exactly the frames that follow it (docs/protocol.md §9.5).
        self.last_seq: int | None = None
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self.closed = trio.Event()

    @property
    def emp_id(self) -> str:
        return str(self.snapshot["self"]["empId"])

    @property
    def role(self) -> str:
        return str(self.snapshot["self"]["role"])

    @property
    def resume_token(self) -> str | None:
        """The credential to resume this peer after a drop (None if the server has no resume)."""
        token = self.snapshot.get("resumeToken")
        return str(token) if token is not None else None

    # Sending

    async def send(self, event: str, data: dict[str, Any] | None = None, *, id: Any = None) -> None:
        """Send one frame without waiting for an answer."""
        frame: dict[str, Any] = {"event": event, "data": data or {}}
        if id is not None:
            frame["id"] = id
        await self.send_raw(json.dumps(frame))

    async def send_raw(self, text: str | bytes) -> None:
        """Send one frame as it is.

        Raises:
            ConnectionError: the connection is closed.
        """
        try:
            await self._ws.send_message(text)
        except ConnectionClosed as exc:
            code = exc.reason.code if exc.reason else None
            raise ConnectionError(f"connection closed with code {code}") from None

    async def request(self, event: str, data: dict[str, Any] | None = None) -> dict[str, Any]:
        """Send a frame with an id and wait for its ``ack``.

        Raises:
            MeshroomError: the server answered with an ``error``.
            ConnectionError: the connection closed before an answer came.
        """
        request_id = self._next_id
        self._next_id += 1
        send, receive = trio.open_memory_channel[Event](1)
        self._waiting[request_id] = send
        try:
            await self.send(event, data, id=request_id)
            try:
                answer = await receive.receive()
            except trio.EndOfChannel:
                raise ConnectionError(
                    f"connection closed ({self.close_code}) before {event} was answered"
                ) from None
        finally:
            self._waiting.pop(request_id, None)
        if answer.name == "error":
            raise MeshroomError(
                answer.data.get("code", "?"), answer.data.get("message", ""), answer.data
            )
        return answer.data

    async def offer(self, target: str, offer: dict[str, Any]) -> None:
        await self.send("signal:offer", {"targetEmpId": target, "offer": offer})

    async def answer(self, target: str, answer: dict[str, Any]) -> None:
        await self.send("signal:answer", {"targetEmpId": target, "answer": answer})

    async def ice(self, target: str, candidate: dict[str, Any] | None) -> None:
        await self.send("signal:ice", {"targetEmpId": target, "candidate": candidate})

    async def kick(self, target: str) -> dict[str, Any]:
        return await self.request("host:kick", {"targetEmpId": target})

    async def ban(self, target: str, reason: str | None = None) -> dict[str, Any]:
        data = {"targetEmpId": target} | ({"reason": reason} if reason else {})
        return await self.request("host:ban", data)

    async def unban(self, target: str) -> dict[str, Any]:
        return await self.request("host:unban", {"targetEmpId": target})

    async def promote(self, target: str) -> dict[str, Any]:
        return await self.request("host:promote", {"targetEmpId": target})

    async def demote(self, target: str) -> dict[str, Any]:
        return await self.request("host:demote", {"targetEmpId": target})

    async def end_meeting(self) -> dict[str, Any]:
        return await self.request("host:end")

    async def set_presence(self, **presence: bool) -> dict[str, Any]:
        return await self.request("presence:update", presence)

    async def leave(self) -> None:
        await self.request("peer:leave")

    # Receiving

    async def next_event(self) -> Event:
        """The next event the server pushed (not acks or errors answering a request).

        Raises:
            ConnectionError: the connection closed and every event has been read.
        """
        try:
            return await self._events.receive()
        except trio.EndOfChannel:
            raise ConnectionError(f"connection closed with code {self.close_code}") from None

    async def wait_for(self, name: str, **match: Any) -> Event:
        """Skip events until one called ``name`` whose data has every ``match`` item."""
        while True:
            event = await self.next_event()
            if event.name == name and all(event.data.get(k) == v for k, v in match.items()):
                return event

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Event]:
        async for event in self._events:
            yield event

    async def wait_closed(self) -> int | None:
        await self.closed.wait()
        return self.close_code

    async def close(self, code: int = 1000) -> None:
        await self._ws.aclose(code)

    # Internals

    async def _read(self) -> None:
        unacknowledged = 0
        try:
            while True:
                text = await self._ws.get_message()
                frame = json.loads(text)
                seq = frame.get("seq")
                if isinstance(seq, int):
                    self.last_seq = seq
                    unacknowledged += 1
                    if unacknowledged >= ACK_EVERY:
                        unacknowledged = 0
                        ack = {"event": "ping", "data": {"lastSeq": seq}}  # no id: no answer
                        await self._ws.send_message(json.dumps(ack))
                event = Event(frame.get("event", ""), frame.get("data") or {}, frame.get("id"))
                waiter = self._waiting.get(event.id) if isinstance(event.id, int) else None
                if waiter is not None and event.name in ("ack", "error"):
                    waiter.send_nowait(event)
                else:
                    self._events_in.send_nowait(event)
        except ConnectionClosed as exc:
            if exc.reason is not None:
                self.close_code = exc.reason.code
                self.close_reason = exc.reason.reason
        finally:
            self._events_in.close()
            for waiter in self._waiting.values():
                waiter.close()
            self.closed.set()


@asynccontextmanager
async def connect(
    url: str,
    token: str,
    *,
    token_in_query: bool = False,
    connect_timeout: float = 10,
    resume_token: str | None = None,
    last_seq: int | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> AsyncIterator[Peer]:
    """Connect, authenticate and join; yield the joined :class:`Peer`.

    With ``resume_token`` (an earlier peer's :attr:`Peer.resume_token`), the server
    gives back that peer's place if it is still kept (``peer.resumed``), else this is
    an ordinary join. With ``last_seq`` too (the earlier peer's :attr:`Peer.last_seq`),
    exactly the events after that one follow, each once, in order.

    Raises:
        JoinRefused: the server refused the token or the join (``.code``, ``.close_code``).
    """
    if token_in_query:
        url = f"{url}{'&' if '?' in url else '?'}meetingAccessToken={quote(token)}"
        if resume_token is not None:
            url = f"{url}&resumeToken={quote(resume_token)}"
            if last_seq is not None:
                url = f"{url}&lastSeq={last_seq}"
    async with open_websocket_url(
        url,
        connect_timeout=connect_timeout,
        message_queue_size=0,
        max_message_size=16 * 2**20,
        ssl_context=ssl_context,
    ) as ws:
        peer = Peer(ws)
        if not token_in_query:
            auth: dict[str, Any] = {"meetingAccessToken": token}
            if resume_token is not None:
                auth["resumeToken"] = resume_token
                if last_seq is not None:
                    auth["lastSeq"] = last_seq
            await ws.send_message(json.dumps({"event": "auth", "id": 0, "data": auth}))
        try:
            first = json.loads(await ws.get_message())
        except ConnectionClosed as exc:
            reason = exc.reason
            raise JoinRefused(
                "CLOSED", (reason.reason if reason else None) or "", reason.code if reason else None
            ) from None
        if first.get("event") not in ("room:joined", "room:resumed"):
            data = first.get("data") or {}
            code = None
            try:
                await ws.get_message()
            except ConnectionClosed as exc:
                code = exc.reason.code if exc.reason else None
            raise JoinRefused(data.get("code", "?"), data.get("message", ""), code, data)
        peer.snapshot = first["data"]
        peer.resumed = first["event"] == "room:resumed"
        peer.last_seq = first.get("seq", last_seq if peer.resumed else None)
        # Opened only now, so that JoinRefused above is raised as itself, not in a group.
        async with trio.open_nursery() as nursery:
            nursery.start_soon(peer._read)
            try:
                yield peer
            finally:
                nursery.cancel_scope.cancel()
