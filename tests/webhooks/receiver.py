"""A webhook receiver on loopback: a real HTTP/1.1 server (h11 on Trio sockets).

It records every request it gets, and answers as its ``respond`` policy says: a
status code, or never (the policy hangs, as a stuck receiver does). Tests wait on
what it records (``await receiver.until(...)``), never on the clock.
"""

from __future__ import annotations

import functools
import inspect
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import h11
import trio
from standardwebhooks import Webhook


@dataclass
class Received:
    index: int  # position in the receiver's log (arrival order)
    headers: dict[str, str]
    body: bytes
    status: int | None = None  # what the receiver answered (None: not yet, or never)
    answered: trio.Event = field(default_factory=trio.Event)

    @property
    def id(self) -> str:
        return self.headers["webhook-id"]

    @property
    def json(self) -> dict[str, Any]:
        return json.loads(self.body)  # type: ignore[no-any-return]

    @property
    def type(self) -> str:
        return str(self.json["type"])

    @property
    def data(self) -> dict[str, Any]:
        return self.json["data"]  # type: ignore[no-any-return]

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    def verify(self, secret: str) -> dict[str, Any]:
        """What an off-the-shelf Standard Webhooks verifier makes of this request."""
        return Webhook(secret).verify(self.body, self.headers)  # type: ignore[no-any-return]


Policy = Callable[[Received], "int | Awaitable[int]"]


class Receiver:
    def __init__(self, respond: Policy | None = None, path: str = "/hooks") -> None:
        self.respond: Policy = respond or (lambda _request: 200)
        self.path = path
        self.requests: list[Received] = []
        self.port = 0
        self._changed = trio.Event()
        self._down = trio.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.path}"

    def delivered(self) -> list[Received]:
        """The requests it answered 2xx, in arrival order."""
        return [r for r in self.requests if r.ok]

    def first_deliveries(self) -> list[Received]:
        """The first 2xx-answered request of each webhook-id (duplicates dropped)."""
        seen: set[str] = set()
        first = []
        for request in self.delivered():
            if request.id not in seen:
                seen.add(request.id)
                first.append(request)
        return first

    async def until(self, predicate: Callable[[Receiver], bool]) -> None:
        """Return once ``predicate(self)`` holds; re-checked after every request or answer."""
        while not predicate(self):
            await self._changed.wait()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def run(
        self, *, task_status: trio.TaskStatus[Receiver] = trio.TASK_STATUS_IGNORED
    ) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await self.come_up()
            task_status.started(self)
            await trio.sleep_forever()

    async def come_up(self) -> None:
        """Listen (again, on the same port): connections are accepted from now on."""
        self._down = trio.Event()
        await self._nursery.start(self._listen)

    async def go_down(self) -> None:
        """Stop listening and hang up on every connection: connections are refused."""
        self._listening.cancel()
        await self._down.wait()

    async def _listen(self, *, task_status: trio.TaskStatus[None]) -> None:
        try:
            with trio.CancelScope() as self._listening:
                listeners = await trio.open_tcp_listeners(self.port, host="127.0.0.1")
                self.port = listeners[0].socket.getsockname()[1]
                async with trio.open_nursery() as connections:
                    connections.start_soon(
                        functools.partial(
                            trio.serve_listeners,
                            self._serve,
                            listeners,
                            handler_nursery=connections,
                        )
                    )
                    task_status.started()
        finally:
            self._down.set()

    async def _serve(self, stream: trio.SocketStream) -> None:
        connection = h11.Connection(h11.SERVER)
        try:
            while True:
                request = await self._next(stream, connection)
                if request is None:
                    return
                await self._answer(stream, connection, request)
                if connection.our_state is h11.MUST_CLOSE:
                    return
                connection.start_next_cycle()
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.RemoteProtocolError):
            return
        finally:
            await stream.aclose()

    async def _next(self, stream: trio.SocketStream, connection: h11.Connection) -> Received | None:
        headers: dict[str, str] = {}
        body = b""
        while True:
            event = connection.next_event()
            if event is h11.NEED_DATA:
                data = await stream.receive_some(65536)
                connection.receive_data(data)
                continue
            if isinstance(event, h11.Request):
                headers = {k.decode().lower(): v.decode() for k, v in event.headers}
            elif isinstance(event, h11.Data):
                body += bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                received = Received(len(self.requests), headers, body)
                self.requests.append(received)
                self._notify()
                return received
            elif isinstance(event, h11.ConnectionClosed):
                return None

    async def _answer(
        self, stream: trio.SocketStream, connection: h11.Connection, request: Received
    ) -> None:
        status = self.respond(request)
        if inspect.isawaitable(status):
            status = await status
        assert isinstance(status, int)
        body = b"" if status == 204 else b"ok" if 200 <= status < 300 else b"receiver says no"
        headers = [("content-type", "text/plain"), ("content-length", str(len(body)))]
        await stream.send_all(connection.send(h11.Response(status_code=status, headers=headers)))
        await stream.send_all(connection.send(h11.Data(data=body)))
        await stream.send_all(connection.send(h11.EndOfMessage()))
        request.status = status
        request.answered.set()
        self._notify()


async def hang(_request: Received) -> int:
    """A policy that never answers (the sender's timeout must end the attempt)."""
    await trio.sleep_forever()
    raise AssertionError("unreachable")
