"""The standalone signaling listener: WebSocket on trio streams, sans-I/O underneath.

This is meshroom's fast path. wsproto runs the HTTP upgrade handshake; after it,
meshroom's own frame reader and writer (:mod:`.frames`) take over. Each
connection is one trio stream with no extra tasks or queues of its own: the room
core's writer task calls :meth:`WebSocketConnection.send` with every message it
has queued, and they leave in a single ``send_all``.

Heartbeats take one task per listener, not one per connection: :class:`Heartbeats`
looks at every connection a few times per interval, sends a Ping to one quiet for
``heartbeat_interval`` seconds, and when nothing at all (a Pong or anything else)
arrives within ``heartbeat_timeout`` seconds more, wakes its reader, whose
``receive`` raises :class:`~meshroom.core.connection.ConnectionTimedOut`. (A
connection used on its own, or over TLS, times its own reads instead.) Once a
connection has joined a room, the listener hands it over (see ``ConnectionHandler``)
and keeps no task for it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import parse_qs, urlsplit

import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import Request
from wsproto.utilities import RemoteProtocolError, generate_accept_token

from ..core.connection import ConnectionClosed, ConnectionTimedOut, MessageTooLarge
from ..core.limits import ConnectionSlots, OriginPolicy
from . import frames
from .frames import FrameReader, ProtocolViolation
from .gate import ACCEPT_CAPACITY_ERRNOS, ACCEPT_RETRY, HandshakeGate

log = logging.getLogger(__name__)

_NO_EVENTS: Final[list[frames.Event]] = []  # shared, never appended to
_PING: Final = frames.frame(frames.OP_PING, b"meshroom")

RECEIVE_SIZE: Final = 65536
DEFAULT_MAX_MESSAGE_BYTES: Final = 64 * 1024
TOKEN_QUERY_PARAMETER: Final = "meetingAccessToken"
RESUME_QUERY_PARAMETER: Final = "resumeToken"
LAST_SEQ_QUERY_PARAMETER: Final = "lastSeq"
# How long a connection refused for want of a slot may take to send its request.
REFUSAL_READ_SECONDS: Final = 2.0
# How long a connection that missed its heartbeat is given to take our close frame.
TIMED_OUT_CLOSE_SECONDS: Final = 1.0
# A read after this long without a word from the client skips its extra yield (see _read).
IDLE_READ_SECONDS: Final = 1.0
# An upgrade request's line and headers; past it, HTTP 431. It is h11's own bound for a
# head that is still incomplete, applied here to one that arrived whole as well.
MAX_REQUEST_HEAD_BYTES: Final = 16 * 1024
# wsproto's answer to an upgrade that asks for no subprotocol and takes no extension,
# byte for byte (tests/test_websocket_handshake.py checks): filled in here, it costs a
# tenth of what h11's serializer does, once per join.
SWITCHING_PROTOCOLS: Final = (
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Accept: %s\r\n\r\n"
)


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """Ping a connection quiet for ``interval`` s; dead if silent ``timeout`` s more."""

    interval: float
    timeout: float


class WebSocketConnection:
    """:class:`meshroom.core.Connection` over a trio stream, after the handshake.

    Frames are read by :class:`~meshroom.transports.frames.FrameReader` and
    written by :mod:`~meshroom.transports.frames`; wsproto only did the handshake.

    Heartbeats come in two forms. On its own, a connection with a ``heartbeat``
    times itself: while waiting for input it waits at most until its next ping
    (or the ping's answer) is due. On a listener, :class:`Heartbeats` (one timer
    for every connection) does it instead, and a waiting reader has no deadline
    at all: that is what keeps ten thousand idle connections cheap.
    """

    __slots__ = (
        "_broken",
        "_close_sent",
        "_closed",
        "_events",
        "_heartbeat",
        "_heartbeats",
        "_initial",
        "_last_heard",
        "_max",
        "_next_event",
        "_on_release",
        "_ping_deadline",
        "_reader",
        "_remote",
        "_send_lock",
        "_socket",
        "_stream",
        "_unsent",
        "_waiting",
        "close_code",
        "timed_out",
    )

    def __init__(
        self,
        stream: trio.abc.Stream,
        *,
        remote: str,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        heartbeat: Heartbeat | None = None,
        initial: bytes = b"",
    ) -> None:
        self._stream = stream
        # A plain TCP stream is read and written on its socket directly (see _read).
        self._socket = stream.socket if isinstance(stream, trio.SocketStream) else None
        self._remote = remote
        self._max = max_message_bytes
        self._reader = FrameReader(max_message_bytes)
        # Events of the last read not yet handed out: _events[_next_event:].
        self._events: list[frames.Event] = _NO_EVENTS
        self._next_event = 0
        self._initial = initial  # frames the client sent right behind its upgrade request
        self._send_lock = trio.StrictFIFOLock()  # the writer task and pong replies share the stream
        self._broken = False  # a write failed or was cut short: no more frames can go out
        self._close_sent = False
        self._closed = False
        self.close_code: int | None = None  # what the client sent, if it closed first
        self._heartbeat = heartbeat
        self._heartbeats: Heartbeats | None = None  # the listener's timer, once joined
        self._last_heard = trio.current_time()
        self._ping_deadline: float | None = None  # set while a ping awaits an answer
        # Bytes written without the writer (a ping, an answer sent at once) that the socket
        # did not take at once: they go out before anything else.
        self._unsent = b""
        # The reader is waiting for input: only then does the heartbeat timer judge it (a
        # request the server is busy with never counts against the client).
        self._waiting = False
        # Called once by release() (the listener's connection slot, for one handed over).
        self._on_release: Callable[[], None] | None = None
        self.timed_out = False

    @property
    def remote(self) -> str:
        return self._remote

    def release(self) -> None:
        """Its owner is done with it (and has closed it): give back what the listener holds.

        For a connection the listener handed over (see ConnectionHandler), the owner's
        ``done``. Closes the socket if the owner somehow did not; idempotent.
        """
        if not self._closed:
            self._closed = True
            if self._heartbeats is not None:
                self._heartbeats.discard(self)
                self._heartbeats = None
            if self._socket is not None:
                self._socket.close()
        on_release, self._on_release = self._on_release, None
        if on_release is not None:
            on_release()

    def join_heartbeats(self, heartbeats: Heartbeats) -> bool:
        """Let ``heartbeats`` ping this connection instead of timing itself.

        Only a plain TCP stream can (the timer writes pings straight to its socket, and
        wakes its reader through the socket); False, and nothing changes, for others.
        """
        if self._socket is None or self._closed:
            return False
        self._heartbeats = heartbeats
        heartbeats.add(self)
        return True

    async def receive(self) -> str | bytes:
        while True:
            events = self._events
            while self._next_event < len(events):
                event = events[self._next_event]
                self._next_event += 1
                if type(event) is frames.Message:
                    return event.data.decode() if event.text else event.data
                await self._handle_other(event)
            self._events = _NO_EVENTS  # an idle connection holds nothing of its last read
            self._next_event = 0
            if self.timed_out:
                raise ConnectionTimedOut(None, "heartbeat timeout")
            if self._closed or self._close_sent:
                raise ConnectionClosed(self.close_code)
            if self._initial:
                data, self._initial = self._initial, b""
            else:
                try:
                    received = await self._receive_some()
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    received = None if self.timed_out else b""
                if received is None:
                    self.timed_out = True
                    log.debug("%s missed its heartbeat", self._remote)
                    raise ConnectionTimedOut(None, "heartbeat timeout")
                data = bytes(received)
                del received
            if not data:
                await self._abort()
                raise ConnectionClosed(1006, "connection lost")
            try:
                self._events = self._reader.feed(data)
                del data  # (an idle reader waits holding none of its last read)
            except ProtocolViolation as exc:
                log.debug("protocol error from %s: %s", self._remote, exc.reason)
                # close() waits for the client's answer, and nothing else bounds that
                # wait here: a client that broke the protocol and then went silent would
                # hold its connection forever. It gets as long as a timed-out one.
                with trio.move_on_after(TIMED_OUT_CLOSE_SECONDS):
                    await self.close(exc.code, exc.reason)  # (which hangs up, in any case)
                raise ConnectionClosed(exc.code, exc.reason) from None

    async def _handle_other(self, event: frames.Event) -> None:
        if type(event) is frames.Oversized:
            raise MessageTooLarge(event.size, self._max)
        if type(event) is frames.Ping:
            with contextlib.suppress(ConnectionClosed):
                await self._send_bytes(frames.frame(frames.OP_PONG, event.payload))
        elif type(event) is frames.Close:
            self.close_code = event.code
            if not self._close_sent:
                self._close_sent = True
                reply = (
                    frames.close_frame(event.code)
                    if event.code
                    else frames.frame(frames.OP_CLOSE, b"")
                )
                with contextlib.suppress(ConnectionClosed):
                    await self._send_bytes(reply)
            await self._abort()
            raise ConnectionClosed(event.code, event.reason)
        # A Pong needs nothing: liveness is judged by any traffic.

    async def _receive_some(self) -> bytes | bytearray | None:
        """The next bytes from the client; None if it missed its heartbeat."""
        heartbeat = self._heartbeat
        if self._heartbeats is not None or heartbeat is None:
            # No deadline here: the listener's timer pings, and wakes this read (the
            # socket reports closed) if the client misses its heartbeat.
            self._waiting = True
            try:
                data = await self._read()
            finally:
                self._waiting = False
            self._last_heard = trio.current_time()
            self._ping_deadline = None  # any traffic answers a ping
            return data
        while True:
            if self._ping_deadline is None:
                deadline = self._last_heard + heartbeat.interval
            else:
                deadline = self._ping_deadline
            with trio.move_on_at(deadline):
                data = await self._read()
                self._last_heard = trio.current_time()
                self._ping_deadline = None  # any traffic answers a ping
                return data
            if self._ping_deadline is not None:
                return None
            # Quiet for a whole interval: ask. Sending counts against the timeout too
            # (a client that reads nothing can have filled our socket buffer).
            self._ping_deadline = trio.current_time() + heartbeat.timeout
            with trio.move_on_at(self._ping_deadline), contextlib.suppress(ConnectionClosed):
                await self._send_bytes(_PING)

    async def _read(self) -> bytes | bytearray:
        """``receive_some`` of the stream; on a plain TCP stream, straight from its socket.

        trio's SocketStream.receive_some goes through five layers of coroutines and
        context managers, and an idle reader keeps them all alive while it waits (and
        the garbage collector walks them, again and again). This does what they do (try
        the read, else wait until the socket is readable; a checkpoint either way) with
        one wait. The descriptor is looked up each time: a closed socket has none, so a
        late read can never touch another connection that reused the number.
        """
        sock = self._socket
        if sock is None:
            return await self._stream.receive_some(RECEIVE_SIZE)
        await trio.lowlevel.checkpoint_if_cancelled()
        waited = False
        while True:
            fd = sock.fileno()
            if fd < 0:
                raise trio.ClosedResourceError("the socket was closed")
            try:
                data = os.read(fd, RECEIVE_SIZE)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(sock)
                waited = True
                continue
            except OSError as exc:
                raise trio.BrokenResourceError(f"socket read failed: {exc}") from exc
            # A yield even after a wait (itself a checkpoint): the other readers woken
            # with this one read before any of them relays, and the writers then take
            # more per write. Without it the relay made 0.885x the messages per second
            # (bench compare, 2026-12-03). Except after a long silence: such a reader
            # (an idle peer's ping) has no burst to share, and the step is a tenth of
            # what its wake-up costs.
            if not waited or trio.current_time() - self._last_heard < IDLE_READ_SECONDS:
                await trio.lowlevel.cancel_shielded_checkpoint()
            return data

    async def _write(self, data: bytes) -> None:
        """``send_all`` of the stream; on a plain TCP stream, straight to its socket."""
        sock = self._socket
        if sock is None:
            await self._stream.send_all(data)
            return
        view: memoryview | None = None
        sent = 0
        while True:
            fd = sock.fileno()
            if fd < 0:
                raise trio.ClosedResourceError("the socket was closed")
            try:
                sent += os.write(fd, data if view is None else view[sent:])
            except BlockingIOError:
                pass
            except OSError as exc:
                raise trio.BrokenResourceError(f"socket write failed: {exc}") from exc
            if sent >= len(data):
                break
            if view is None:
                view = memoryview(data)
            await trio.lowlevel.wait_writable(sock)
        await trio.lowlevel.cancel_shielded_checkpoint()

    # Driven by Heartbeats (synchronously: the timer never waits for one connection)

    def _ping_now(self) -> None:
        """Put a ping on the wire, straight to the socket: the timer pings hundreds a second."""
        if self._broken or self._close_sent or self._closed:
            return  # nothing to ping
        self._unsent += _PING
        if not self._send_lock.locked():
            # (While the writer holds the stream a frame of its may be half written: its
            # next write takes the ping along, or the next sweep does, if it comes first.)
            self._write_unsent()

    def _write_unsent(self) -> None:
        """Write what is in ``_unsent`` as far as the socket takes it now, without waiting.

        Only while no write is under way. What the socket does not take stays in
        ``_unsent``: the next write sends it first, or the heartbeat timer's next sweep.
        """
        assert self._socket is not None
        try:
            written = os.write(self._socket.fileno(), self._unsent)
        except BlockingIOError:
            written = 0
        except OSError:
            self._broken = True  # the reader finds out at its next read
            self._unsent = b""
            return
        self._unsent = self._unsent[written:]

    def can_send_at_once(self) -> bool:
        """Whether :meth:`send_at_once` may be called now: no write is under way.

        Only on a listener's connection (joined to its heartbeat timer, which retries
        what a full socket did not take) and while the stream is usable.
        """
        return (
            self._heartbeats is not None
            and not self._unsent
            and not self._broken
            and not self._close_sent
            and not self._closed
            and not self._send_lock.locked()
        )

    def send_at_once(self, messages: Sequence[bytes]) -> bool:
        """Write ``messages`` now, from the caller's task, without waiting.

        For a few frames to a connection with no write under way (a ping's answer, a
        broadcast's frame): a writer task would cost several times the write itself.
        Only after :meth:`can_send_at_once` said yes, with no checkpoint in between.
        False if the socket did not take it all: the rest goes out first at the next
        :meth:`send` (which the room then starts), or with the heartbeat timer's next
        sweep if that comes first. A failed write is found out by the reader, as for a ping.
        """
        self._unsent = frames.text_frames(messages)
        self._write_unsent()
        return not self._unsent

    def _time_out(self) -> None:
        """The client missed its heartbeat: wake the reader, which raises ConnectionTimedOut.

        notify_closing wakes whoever waits on the socket (the reader; a writer stuck on
        a full buffer) with ClosedResourceError; the socket stays open for one try at
        sending the close frame, then whoever owns the connection closes it.
        """
        self.timed_out = True
        log.debug("%s missed its heartbeat", self._remote)
        if self._heartbeats is not None:
            self._heartbeats.discard(self)
        assert self._socket is not None
        trio.lowlevel.notify_closing(self._socket)

    async def send(self, messages: Sequence[bytes]) -> None:
        if self._close_sent or self._closed:
            raise ConnectionClosed(self.close_code)
        # Messages are already UTF-8 JSON: framed as they are, no decode and re-encode.
        await self._send_bytes(frames.text_frames(messages))

    async def _send_bytes(self, data: bytes) -> None:
        if self._broken:
            raise ConnectionClosed(self.close_code)
        async with self._send_lock:
            # Taking the lock may have yielded, and a deadline may have passed meanwhile
            # (the auth timeout, due with a heartbeat ping): be cancelled here, with nothing
            # written and the connection intact, rather than inside send_all, which would
            # leave it marked broken. (On a TCP stream nothing yields between this and
            # send_all's own check; under TLS, SSLStream has a yield of its own in between.)
            await trio.lowlevel.checkpoint_if_cancelled()
            if self._unsent:  # the rest of a ping the timer could not write at once
                data, self._unsent = self._unsent + data, b""
            sending = True
            try:
                await self._write(data)
                sending = False
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._broken = True
                if self.timed_out:  # (the heartbeat timer woke this write)
                    raise ConnectionTimedOut(self.close_code, "heartbeat timeout") from None
                raise ConnectionClosed(self.close_code) from None
            finally:
                if sending:
                    # Cancelled mid-write: a partial frame may be on the wire.
                    self._broken = True

    async def close(self, code: int, reason: str = "") -> None:
        """Send a close frame, wait (within the caller's deadline) for the reply, hang up."""
        if self._closed:
            return
        try:
            if self._broken or self._close_sent:
                return
            self._close_sent = True
            if self.timed_out:
                # Presumed dead: one try at telling it why, no waiting for an answer.
                with trio.move_on_after(TIMED_OUT_CLOSE_SECONDS):
                    await self._send_bytes(frames.close_frame(code, reason))
                return
            await self._send_bytes(frames.close_frame(code, reason))
            # Hanging up with unread input would make the kernel send RST, and the
            # client could lose our close frame; so read until it answers or goes.
            while True:
                data = await self._stream.receive_some(RECEIVE_SIZE)
                if not data:
                    return
                if any(type(e) is frames.Close for e in self._reader.feed(bytes(data))):
                    return
        except (
            ConnectionClosed,
            ProtocolViolation,
            MessageTooLarge,
            trio.BrokenResourceError,
            trio.ClosedResourceError,
        ):
            pass
        finally:
            await self._abort()

    async def _abort(self) -> None:
        self._closed = True
        if self._heartbeats is not None:
            self._heartbeats.discard(self)
            self._heartbeats = None
        await trio.aclose_forcefully(self._stream)


class Heartbeats:
    """One timer for the heartbeats of every connection of a listener.

    Each connection's reader used to wait with a deadline (its next ping, or the
    ping's answer): a cancel scope per read, a timer per connection, and a
    Cancelled exception unwound through the reader's stack every quiet interval.
    Here one task looks at every connection every ``tick`` seconds instead: it
    pings those quiet for ``interval`` (writing the ping straight to the socket),
    and times out those that stayed silent ``timeout`` seconds after their ping,
    by waking their reader. So a ping goes out between ``interval`` and
    ``interval + tick`` after a connection's last word, and a silent client is
    found out between ``interval + timeout`` and ``interval + timeout + 2 tick``.
    As before, a connection is judged only while its reader waits for input.
    """

    __slots__ = ("_connections", "heartbeat", "tick")

    def __init__(self, heartbeat: Heartbeat, tick: float | None = None) -> None:
        self.heartbeat = heartbeat
        # A quarter of the shorter period, at most 2.5 s: detection stays within 5 s of the
        # self-timed one, and a sweep of 10,000 connections costs ~2 ms.
        self.tick = (
            tick if tick is not None else min(heartbeat.interval, heartbeat.timeout, 10.0) / 4
        )
        self._connections: set[WebSocketConnection] = set()

    def __len__(self) -> int:
        return len(self._connections)

    def add(self, conn: WebSocketConnection) -> None:
        self._connections.add(conn)

    def discard(self, conn: WebSocketConnection) -> None:
        self._connections.discard(conn)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Sweep every ``tick`` seconds until cancelled."""
        task_status.started()
        while True:
            await trio.sleep(self.tick)
            self.sweep(trio.current_time())

    def sweep(self, now: float) -> None:
        """Ping the connections quiet for an interval; time out those silent since their ping."""
        interval, timeout = self.heartbeat.interval, self.heartbeat.timeout
        dead = []
        for conn in self._connections:
            if conn._unsent and not conn._send_lock.locked():
                conn._write_unsent()  # the socket was full: try the rest again
            if not conn._waiting:
                continue  # busy with what the client sent, or not reading yet: not judged
            deadline = conn._ping_deadline
            if deadline is None:
                if now - conn._last_heard >= interval:
                    conn._ping_deadline = now + timeout
                    conn._ping_now()
            elif now >= deadline:
                dead.append(conn)
        for conn in dead:
            conn._time_out()


@dataclass(frozen=True, slots=True)
class Upgrade:
    """What a handler learns about an accepted WebSocket request."""

    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]

    @property
    def token(self) -> str | None:
        values = self.query.get(TOKEN_QUERY_PARAMETER)
        return values[0] if values else None

    @property
    def resume_token(self) -> str | None:
        values = self.query.get(RESUME_QUERY_PARAMETER)
        return values[0] if values else None

    @property
    def last_seq(self) -> int | None:
        """The seq of the last frame a resuming client has (None if absent or not a count)."""
        return parse_last_seq(self.query.get(LAST_SEQ_QUERY_PARAMETER, [None])[0])


def parse_last_seq(value: str | None) -> int | None:
    if value is None or not value.isdigit() or len(value) > 18:
        return None
    return int(value)


# Serves one accepted connection. It may return True: it handed the connection over (to
# a room, see Hub.hand_over), whose owner closes it and then calls conn.release(); the
# listener then keeps no task for it. Otherwise the listener closes it when this returns.
ConnectionHandler = Callable[[WebSocketConnection, Upgrade], Awaitable[bool | None]]
# Serves a raw stream whose request the listener routed elsewhere (see serve_websocket's
# extra_route): (stream, the bytes already read off it, remote address).
StreamRoute = Callable[[trio.abc.Stream, bytes, str], Awaitable[None]]


async def accept_websocket(
    stream: trio.abc.Stream,
    *,
    path: str,
    remote: str,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    heartbeat: Heartbeat | None = None,
    origins: OriginPolicy | None = None,
    full: bool = False,
    received: bytes = b"",
) -> tuple[WebSocketConnection, Upgrade] | None:
    """Run the HTTP upgrade handshake on a fresh stream. None if it was refused (and closed).

    Refusals are plain HTTP answers: 404 for another path, 403 for an Origin not
    in ``origins``, 503 (with Retry-After) when ``full`` (no connection slot left),
    431 for a request head over MAX_REQUEST_HEAD_BYTES, 426 for anything but an upgrade.
    """
    ws = WSConnection(ConnectionType.SERVER)
    request: Request | None = None
    head_bytes = 0  # bytes fed to the HTTP parser, the request's and any after it
    while request is None:
        data, received = received or await stream.receive_some(RECEIVE_SIZE), b""
        if not data:
            await trio.aclose_forcefully(stream)
            return None
        head_bytes += len(data)
        try:
            ws.receive_data(bytes(data))
            for event in ws.events():
                if isinstance(event, Request):
                    request = event
                    break
        except RemoteProtocolError as exc:
            if getattr(exc.__context__, "error_status_hint", None) == 431:
                # h11 gave up on a head still incomplete past MAX_REQUEST_HEAD_BYTES.
                await _plain_response(stream, 431, "request headers are too large\n")
                return None
            await _plain_response(
                stream, 426, f"this endpoint speaks WebSocket only ({exc})\n", upgrade=True
            )
            return None
    # Bytes the client sent right behind its request (frames, already) are still in
    # wsproto's HTTP parser; they go to meshroom's frame reader instead.
    initial = bytes(ws.handshake._h11_connection.trailing_data[0])
    if head_bytes - len(initial) > MAX_REQUEST_HEAD_BYTES:
        # One read takes up to 64 KiB, so h11 may have parsed a head over its bound:
        # refuse it the same, whatever pieces it came in.
        await _plain_response(stream, 431, "request headers are too large\n")
        return None
    if full:
        await _plain_response(
            stream, 503, "too many connections; try again shortly\n", retry_after=5
        )
        return None
    target = urlsplit(request.target)
    if target.path.rstrip("/") != path.rstrip("/"):
        await _plain_response(stream, 404, f"no WebSocket endpoint at {target.path}; try {path}\n")
        return None
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in request.extra_headers}
    if origins is not None and not origins.allows(headers.get("origin")):
        log.info("refused a WebSocket from %s: Origin %r", remote, headers.get("origin"))
        await _plain_response(stream, 403, "this Origin may not open a signaling WebSocket\n")
        return None
    # wsproto's checks passed, so the key is there: its handshake refuses a request without.
    accept = generate_accept_token(headers["sec-websocket-key"].encode("latin-1"))
    await stream.send_all(SWITCHING_PROTOCOLS % accept)
    conn = WebSocketConnection(
        stream,
        remote=remote,
        max_message_bytes=max_message_bytes,
        heartbeat=heartbeat,
        initial=initial,
    )
    return conn, Upgrade(path=target.path, query=parse_qs(target.query), headers=headers)


async def _plain_response(
    stream: trio.abc.Stream,
    status: int,
    body: str,
    *,
    upgrade: bool = False,
    retry_after: int | None = None,
) -> None:
    reason = {
        403: "Forbidden",
        404: "Not Found",
        426: "Upgrade Required",
        431: "Request Header Fields Too Large",
        503: "Service Unavailable",
    }[status]
    payload = body.encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(payload)}\r\nConnection: close\r\n"
        + ("Upgrade: websocket\r\n" if upgrade else "")
        + (f"Retry-After: {retry_after}\r\n" if retry_after is not None else "")
        + "\r\n"
    )
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        await stream.send_all(head.encode() + payload)
    await trio.aclose_forcefully(stream)


async def _request_line(stream: trio.abc.Stream, data: bytes = b"") -> bytes:
    """Read until the request line is complete (or 8 KiB, or EOF); every byte read."""
    while b"\r\n" not in data and len(data) < 8192:
        more = await stream.receive_some(RECEIVE_SIZE)
        if not more:
            break
        data += more
    return data


def _targets(received: bytes, prefix: str) -> bool:
    parts = received.split(b" ", 2)
    return len(parts) > 1 and parts[1].startswith(prefix.encode())


def _remote_of(stream: trio.abc.Stream) -> str:
    tcp: Any = getattr(stream, "transport_stream", stream)  # under TLS, the TCP stream
    try:
        host, port = tcp.socket.getpeername()[:2]
        return f"{host}:{port}"
    except (AttributeError, OSError):
        return "?"


async def serve_websocket(
    handler: ConnectionHandler,
    listeners: Sequence[trio.abc.Listener[Any]],
    *,
    path: str = "/meetings",
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    handshake_timeout: float = 10.0,
    heartbeat: Heartbeat | None = None,
    origins: OriginPolicy | None = None,
    slots: ConnectionSlots | None = None,
    handler_nursery: trio.Nursery | None = None,
    extra_route: tuple[str, StreamRoute] | None = None,
    gate: bool = True,
    task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Accept WebSocket connections on ``listeners`` at ``path`` and run ``handler`` on each.

    On plain TCP listeners, connections are accepted and their request heads read by a
    :class:`~.gate.HandshakeGate` thread (``gate=False``: by a trio task each, as on TLS).

    ``extra_route`` = ``(prefix, route)``: a request whose target starts with ``prefix``
    (e.g. ``/socket.io/``, plain HTTP or WebSocket) is handed to ``route`` instead.

    ``listeners`` may be TLS listeners (:class:`trio.SSLListener`): the TLS handshake
    then counts against ``handshake_timeout`` like the HTTP one. ``slots`` bounds the
    connections held at once (handshakes included); past it, new ones get HTTP 503.
    """
    slots = slots if slots is not None else ConnectionSlots()

    async def on_stream(
        stream: trio.abc.Stream, received: bytes = b"", waited: float = 0.0
    ) -> None:
        if not slots.acquire():
            with trio.move_on_after(min(handshake_timeout, REFUSAL_READ_SECONDS)):
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    await accept_websocket(
                        stream, path=path, remote="?", full=True, received=received
                    )
            await trio.aclose_forcefully(stream)
            return
        handed_over = False
        try:
            # The handshake deadline counts from accept, time in the gate included.
            handed_over = await _serve_stream(
                stream, received, trio.current_time() + handshake_timeout - waited
            )
        finally:
            if not handed_over:
                slots.release()  # (a connection handed over releases it: conn.release)
                await trio.aclose_forcefully(stream)

    async def _serve_stream(stream: trio.abc.Stream, received: bytes, deadline: float) -> bool:
        remote = _remote_of(stream)
        accepted = None
        if extra_route is not None:
            with trio.move_on_at(deadline):
                try:
                    received = await _request_line(stream, received)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    await trio.aclose_forcefully(stream)
                    return False
            if _targets(received, extra_route[0]):
                try:
                    await extra_route[1](stream, received, remote)
                except Exception:
                    log.exception("extra route failed for %s", remote)
                finally:
                    await trio.aclose_forcefully(stream)
                return False
        try:
            with trio.move_on_at(deadline):
                accepted = await accept_websocket(
                    stream,
                    path=path,
                    remote=remote,
                    max_message_bytes=max_message_bytes,
                    heartbeat=heartbeat,
                    origins=origins,
                    received=received,
                )
                if accepted is None:
                    return False
            if accepted is None:  # the handshake timed out
                await trio.aclose_forcefully(stream)
                return False
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            await trio.aclose_forcefully(stream)
            return False
        conn, upgrade = accepted
        del accepted
        if heartbeats is not None:
            conn.join_heartbeats(heartbeats)
        conn._on_release = slots.release
        handed_over = False
        try:
            handed_over = bool(await handler(conn, upgrade))
        except Exception:
            log.exception("connection handler failed for %s", remote)
            with trio.move_on_after(1):
                await conn.close(1011, "internal error")
        finally:
            if not handed_over:
                conn._on_release = None
                await conn._abort()
        return handed_over

    # One timer for every connection's heartbeat (those on plain TCP; a TLS one times
    # itself). It stops with the accept loop: by then every connection is being closed.
    heartbeats = Heartbeats(heartbeat) if heartbeat is not None else None
    async with trio.open_nursery() as nursery:
        if heartbeats is not None:
            nursery.start_soon(heartbeats.run, name="websocket heartbeats")
        handlers = handler_nursery if handler_nursery is not None else nursery
        plain = [lst for lst in listeners if isinstance(lst, trio.SocketListener)]
        if gate and len(plain) == len(listeners):
            await nursery.start(
                _gated_accepts, plain, handlers, on_stream, handshake_timeout, slots
            )
        else:  # TLS (the handshake needs trio's SSLStream) or listeners of another kind
            for listener in listeners:
                nursery.start_soon(_accept_loop, listener, handlers, on_stream)
        task_status.started(list(listeners))


async def _gated_accepts(
    listeners: list[trio.SocketListener],
    handlers: trio.Nursery,
    on_stream: Callable[[trio.abc.Stream, bytes, float], Awaitable[None]],
    handshake_timeout: float,
    slots: ConnectionSlots,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Accept through a :class:`~.gate.HandshakeGate`; the listeners close when it stops."""

    def deliver(sock: socket.socket, received: bytes, waited: float) -> None:
        stream = trio.SocketStream(trio.socket.from_stdlib_socket(sock))
        handlers.start_soon(on_stream, stream, received, waited)

    gate = HandshakeGate(
        listeners,
        deliver,
        timeout=handshake_timeout,
        head_limit=MAX_REQUEST_HEAD_BYTES,
        slots=slots,
    )
    async with contextlib.AsyncExitStack() as stack:
        for listener in listeners:
            await stack.enter_async_context(listener)
        await gate.run(task_status=task_status)


async def _accept_loop(
    listener: trio.abc.Listener[Any],
    handlers: trio.Nursery,
    on_stream: Callable[[trio.abc.Stream], Awaitable[None]],
) -> None:
    """trio.serve_listeners' accept loop, less its closing of a stream once its handler
    returns: a connection handed over to a room outlives its handler task."""
    async with listener:
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                if exc.errno not in ACCEPT_CAPACITY_ERRNOS:
                    raise
                log.error(
                    "accept failed: %s; retrying in %s s", os.strerror(exc.errno), ACCEPT_RETRY
                )
                await trio.sleep(ACCEPT_RETRY)
            else:
                handlers.start_soon(on_stream, stream)
