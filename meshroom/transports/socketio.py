"""The Socket.IO v4 endpoint (Engine.IO v4 at ``/socket.io/``): a third transport adapter.

Unmodified ``socket.io-client`` (npm) and ``python-socketio`` clients connect to the
namespace ``/meetings`` exactly as they connected to the Node service meshroom
replaces. Each Socket.IO namespace connection becomes one native connection
(:class:`SocketIOConnection`, a :class:`meshroom.core.Connection`) served by
:meth:`meshroom.core.Hub.serve`, so rooms, the store, limits and metrics are the
native protocol's. What this module adds is I/O only; the rules are sans-I/O:

* :mod:`meshroom.protocol.engineio` / :mod:`meshroom.protocol.socketio`: the codecs,
  and the namespace ↔ native translation (:class:`~meshroom.protocol.socketio.NamespaceBridge`);
* :mod:`meshroom.protocol.engineio_session`: one Engine.IO session's state machine.

Task tree (every task has an owner)::

    SocketIOEndpoint.run                    started by the server / the Quart app
    └── one task per Engine.IO session      _run_session
        ├── heartbeat                       pings, the ping timeout, the connect timeout
        └── Hub.serve                       the namespace's native connection

HTTP requests and WebSockets are served in the tasks of whoever accepted them (the
standalone listener's connection handler, or Quart's request task); they only
feed the session and wait for its output.

Resume through Socket.IO: socket.io-client reconnects by sending its CONNECT
(with the same ``auth``) on a new Engine.IO session. The endpoint remembers, per
access token, the ``resumeToken`` of the last ``room:joined`` / ``room:resumed``
of a connection whose *transport dropped* (never of a live connection, or two
tabs with one token would take the place from each other forever), and offers it
to the core on the next CONNECT with that access token. A client may instead send
``auth.resumeToken`` itself, which wins.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import secrets
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol
from urllib.parse import parse_qs, urlsplit

import h11
import trio
from wsproto.utilities import generate_accept_token

from ..core.connection import Connection, ConnectionClosed, ConnectionTimedOut, MessageTooLarge
from ..core.limits import OriginPolicy
from ..protocol import engineio, socketio
from ..protocol.engineio import EngineIOProtocolError, ErrorCode, PacketType
from ..protocol.engineio_session import (
    EngineSession,
    Heartbeat,
    SessionError,
    Timer,
    Transport,
    parse_probe_reply,
)
from ..protocol.socketio import Ending, NamespaceBridge, SocketIOProtocolError
from .websocket import WebSocketConnection

log = logging.getLogger(__name__)

SOCKETIO_PATH: Final = "/socket.io/"
NAMESPACE: Final = "/meetings"
# socket.io's defaults, used when meshroom's own heartbeat is turned off: an
# Engine.IO client gives up on a server that does not ping within interval + timeout.
DEFAULT_HEARTBEAT: Final = Heartbeat(25.0, 20.0)
# While upgrading, GETs answered with a bare noop are spaced this far apart (engine.io's
# upgrade check interval).
UPGRADE_NOOP_INTERVAL: Final = 0.1
# Room for the Socket.IO framing around a native message of max_message_bytes.
FRAMING_SLACK: Final = 1024
# A native connection's inbound frames waiting for the core: past this, the POST
# (or the WebSocket read) waits, so a flooding client is slowed, not buffered.
INBOUND_QUEUE: Final = 64
RECEIVE_SIZE: Final = 65536
# How many dropped connections' resume tokens are remembered (oldest forgotten first).
RESUME_MEMORY: Final = 16384
MAX_REQUEST_HEAD: Final = 16384
KEEPALIVE_IDLE_SECONDS: Final = 60.0


class Serve(Protocol):
    """The core's entry point (``Hub.serve``)."""

    def __call__(
        self, conn: Connection, *, token: str | None = ..., resume_token: str | None = ...
    ) -> Awaitable[None]: ...


@dataclass(frozen=True, slots=True)
class HttpResponse:
    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=UTF-8"
    headers: tuple[tuple[str, str], ...] = ()
    close: bool = False  # hang up after answering (the body was not read)


def _error(status: int, code: ErrorCode, *, close: bool = False) -> HttpResponse:
    return HttpResponse(status, engineio.error_body(code), "application/json", close=close)


class BodyTooLarge(Exception):
    """A polling POST body over ``maxPayload``."""


BodyReader = Callable[[int], Awaitable[bytes]]  # reads the whole body, at most n bytes


class _Session:
    """An Engine.IO session's trio side: wake-ups around the sans-I/O state."""

    def __init__(self, endpoint: SocketIOEndpoint, state: EngineSession, remote: str) -> None:
        self.endpoint = endpoint
        self.state = state
        self.remote = remote
        # Two wake-up channels, so that traffic one way does not wake the other way's
        # waiters: "out" for the outbox (GET, WebSocket writer, senders held back by
        # backpressure), "in" for the native connection's inbound queue.
        self._changed = trio.Event()
        self._changed_in = trio.Event()
        self._waiting_in = False  # someone waits on _changed_in
        self.done = trio.Event()
        self.nursery: trio.Nursery | None = None
        self.conn: SocketIOConnection | None = None
        self.timed_out = False
        self.connect_deadline: float | None = trio.current_time() + endpoint.connect_timeout
        self.swallow_attachments = 0  # binary attachments of a refused packet still to come
        self.ws: Connection | None = None  # the WebSocket carrying the session, once it does
        self._ws_lock = trio.StrictFIFOLock()  # writes to it leave in outbox order
        self._last_upgrade_noop = -math.inf  # when a GET was last answered with a bare noop

    @property
    def sid(self) -> str:
        return self.state.sid

    def notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait_change(self) -> None:
        await self._changed.wait()

    def notify_in(self) -> None:
        # Once per frame each way on the hot path: a new Event only if someone waits.
        if self._waiting_in:
            self._waiting_in = False
            self._changed_in.set()
            self._changed_in = trio.Event()

    async def wait_in(self) -> None:
        self._waiting_in = True
        await self._changed_in.wait()

    def notify_all(self) -> None:
        self.notify()
        self.notify_in()

    def push(self, packets: Sequence[socketio.Packet]) -> None:
        self.push_text([socketio.encode(packet) for packet in packets])

    def push_text(self, texts: Sequence[str], *, wake: bool = True, seq: int | None = None) -> None:
        """Queue Socket.IO packets; ``seq``: the native frame they carry (on the last)."""
        last = len(texts) - 1
        for i, text in enumerate(texts):
            self.state.push(engineio.Packet(PacketType.MESSAGE, text), seq if i == last else None)
        if texts and wake:
            self.notify()

    async def flush_websocket(self) -> None:
        """Write what is queued to the WebSocket now, in the caller's task.

        The core's writer calls this through :meth:`SocketIOConnection.send`, so a
        relayed signal leaves without waking another task; the session's own writer
        task sends what other paths queue (pings, refusals).

        Raises:
            ConnectionClosed: the WebSocket is gone.
        """
        ws = self.ws
        if ws is None:
            return
        async with self._ws_lock:
            state = self.state
            sent_before = state.taken_tag
            frames = state.take_websocket()
            if frames:
                try:
                    await ws.send([f.encode() if isinstance(f, str) else f for f in frames])
                except ConnectionClosed:
                    # Not written: they do not count as sent (a resume replays them).
                    state.taken_tag = sent_before
                    raise

    async def send_websocket(
        self, ws: Connection, bridge: NamespaceBridge, frames: Sequence[bytes]
    ) -> None:
        """Translate native frames and write them to the WebSocket (the outbox is empty).

        As :meth:`flush_websocket` would after queueing them, minus the queue: the
        frames' seqs count as taken once handed to the WebSocket, and not if it fails.

        Raises:
            ConnectionClosed: the WebSocket is gone (the session is terminated).
        """
        out: list[bytes] = []
        last: int | None = None
        for frame in frames:
            out += bridge.outbound_messages(frame)
            if bridge.frame_seq is not None:
                last = bridge.frame_seq
        if not out:
            return
        state = self.state
        async with self._ws_lock:
            sent_before = state.taken_tag
            state.took(last)
            try:
                await ws.send(out)
            except ConnectionClosed:
                # Not written: they do not count as sent (a resume replays them).
                state.taken_tag = sent_before
                self.terminate("WebSocket closed")
                raise ConnectionClosed(1006) from None

    def terminate(self, reason: str, *, timed_out: bool = False) -> None:
        """End the session (idempotent); the namespace's native connection sees the drop."""
        if self.state.closed and self.done.is_set():
            return
        if not self.state.closed:
            log.debug("socket.io session %s from %s ends: %s", self.sid, self.remote, reason)
            self.state.close(reason)
        self.timed_out = self.timed_out or timed_out
        if self.conn is not None:
            self.conn.transport_gone()
        self.done.set()
        self.notify_all()

    # -- input from the client, whichever transport ----------------------------------

    async def feed(self, packet: engineio.Packet) -> None:
        """One Engine.IO packet from the client.

        Raises:
            SessionError: the client broke the protocol (the caller ends the session).
        """
        message = self.state.receive(packet, trio.current_time())
        if self.state.closed:
            self.terminate("client closed the session")
            return
        if message is None:
            self.notify()  # a ping may have queued a pong
            return
        if isinstance(message, bytes):
            await self._binary(None)
            return
        if self.swallow_attachments:
            raise SessionError(ErrorCode.BAD_REQUEST, "text where a binary attachment was due")
        try:
            packet_sio, start = socketio.decode_at(message)
        except SocketIOProtocolError as exc:
            raise SessionError(ErrorCode.BAD_REQUEST, f"socket.io: {exc}") from None
        await self._dispatch(packet_sio, message, start)

    async def _event(self, conn: SocketIOConnection, message: str) -> None:
        """An Engine.IO message carrying an EVENT (``42…``) while ``conn`` is the
        connected namespace.

        Raises:
            SessionError: as :meth:`feed`.
        """
        try:
            packet, start = socketio.decode_at(message, 1)
        except SocketIOProtocolError as exc:
            raise SessionError(ErrorCode.BAD_REQUEST, f"socket.io: {exc}") from None
        if packet.namespace != NAMESPACE:
            await self._dispatch(packet, message, start)
            return
        frame = conn.bridge.inbound(packet, message, start)
        if frame is not None and not conn.deliver_now(frame):
            await conn.deliver(frame)

    async def _binary(self, packet: socketio.Packet | None) -> None:
        conn = self.conn
        if packet is None and self.swallow_attachments:
            self.swallow_attachments -= 1
            return
        if packet is not None:
            self.swallow_attachments = packet.attachments
        if conn is None or not conn.bridge.joined:
            raise SessionError(ErrorCode.BAD_REQUEST, "binary packet outside a connected namespace")
        self.push(conn.bridge.binary_refusal(packet))

    async def _dispatch(self, packet: socketio.Packet, text: str = "", start: int = 0) -> None:
        kind = packet.type
        conn = self.conn
        if kind is socketio.PacketType.CONNECT:
            if packet.namespace != NAMESPACE:
                self.push([socketio.invalid_namespace(packet.namespace)])
                return
            if conn is not None:
                raise SessionError(ErrorCode.BAD_REQUEST, f"second CONNECT to {NAMESPACE}")
            self._connect(packet.data if isinstance(packet.data, dict) else {})
            return
        if conn is None or packet.namespace != NAMESPACE:
            # As socket.io does: a packet for a namespace that is not connected ends it all.
            raise SessionError(
                ErrorCode.BAD_REQUEST, f"{kind.name} for {packet.namespace} before its CONNECT"
            )
        if kind in (socketio.PacketType.BINARY_EVENT, socketio.PacketType.BINARY_ACK):
            await self._binary(packet)
            return
        try:
            frame = conn.bridge.inbound(packet, text, start)
        except SocketIOProtocolError as exc:
            raise SessionError(ErrorCode.BAD_REQUEST, f"socket.io: {exc}") from None
        if frame is not None:
            await conn.deliver(frame)

    def _connect(self, auth: dict[str, Any]) -> None:
        assert self.nursery is not None
        token = auth.get("meetingAccessToken", auth.get("token"))
        resume = auth.get("resumeToken")
        last_seq = auth.get("lastSeq") if isinstance(resume, str) else None
        key = _token_key(token) if isinstance(token, str) else None
        if not isinstance(resume, str) and key is not None:
            recalled = self.endpoint.recall(key)
            if recalled is not None:
                # What the dropped connection's client was sent: the core replays the rest.
                resume, last_seq = recalled
                log.debug("socket.io session %s: resuming a dropped connection", self.sid)
        bridge = NamespaceBridge(NAMESPACE, secrets.token_urlsafe(15))
        conn = self.conn = SocketIOConnection(self, bridge, token_key=key)
        self.connect_deadline = None
        # The core's own auth path: the first frame is a native auth request, so
        # a missing or over-long token is refused exactly as on the native protocol.
        data: dict[str, Any] = {}
        if token is not None:
            data["meetingAccessToken"] = token
        if isinstance(resume, str):
            data["resumeToken"] = resume
            if last_seq is not None:
                data["lastSeq"] = last_seq
        conn.deliver_nowait(encode_json({"event": "auth", "data": data}).decode())
        self.nursery.start_soon(self._serve, conn)

    async def _serve(self, conn: SocketIOConnection) -> None:
        try:
            await self.endpoint.serve(conn, token=None)
        finally:
            if self.conn is conn:
                self.conn = None
                self.connect_deadline = trio.current_time() + self.endpoint.connect_timeout
                self.notify_all()

    # -- the heartbeat ----------------------------------------------------------------

    async def heartbeat(self) -> None:
        state = self.state
        while not state.closed:
            deadline = state.deadline()
            if self.connect_deadline is not None:
                deadline = min(deadline, self.connect_deadline)
            with trio.move_on_at(deadline):
                await self.done.wait()
                return
            now = trio.current_time()
            if self.connect_deadline is not None and now >= self.connect_deadline:
                # As socket.io's connectTimeout: an Engine.IO session with no namespace.
                self.terminate("no namespace connected in time")
                return
            timer = state.on_timer(now)
            if timer is Timer.TIMEOUT:
                self.terminate("ping timeout", timed_out=True)
            elif timer is Timer.PING:
                self.notify()

    # -- polling ------------------------------------------------------------------

    async def poll(self) -> HttpResponse:
        state = self.state
        try:
            state.begin_get()
        except SessionError as exc:
            self.terminate(exc.reason)
            return _error(400, exc.code)
        try:
            while not state.poll_ready():
                await self.wait_change()
            if state.upgrade_noop_due:
                # From the probe until "5" every GET is answered (see poll_ready), but a
                # client that probes and then polls on without ever sending "5" would
                # spin until the probe times out. engine.io answers such GETs with a noop
                # every 100 ms at most, and so does this; the first one goes at once.
                with trio.move_on_at(self._last_upgrade_noop + UPGRADE_NOOP_INTERVAL):
                    while state.upgrade_noop_due:
                        await self.wait_change()
                self._last_upgrade_noop = trio.current_time()
            body = state.take_poll()
        finally:
            state.end_get()
        self.notify()  # the outbox shrank: a waiting writer may go on
        if body is None:
            return _error(400, ErrorCode.UNKNOWN_SID)
        return HttpResponse(200, body.encode())

    async def post(self, read_body: BodyReader) -> HttpResponse:
        state = self.state
        try:
            state.begin_post()
        except SessionError as exc:
            self.terminate(exc.reason)
            return _error(400, exc.code, close=True)
        try:
            try:
                body = await read_body(state.max_payload)
            except BodyTooLarge:
                self.terminate("POST body over maxPayload")
                return HttpResponse(
                    413, engineio.error_body(ErrorCode.BAD_REQUEST), "application/json", close=True
                )
            try:
                packets = engineio.decode_payload(body.decode("utf-8"))
                for packet in packets:
                    if state.closed:
                        break
                    await self.feed(packet)
            except (EngineIOProtocolError, UnicodeDecodeError) as exc:
                self.terminate(f"bad payload: {exc}")
                return _error(400, ErrorCode.BAD_REQUEST)
            except SessionError as exc:
                self.terminate(exc.reason)
                return _error(400, exc.code)
        finally:
            state.end_post()
        return HttpResponse(200, b"ok", "text/html")

    # -- WebSocket ----------------------------------------------------------------

    async def run_websocket(self, ws: Connection, *, probing: bool) -> None:
        """Carry the session over ``ws`` until either ends."""
        state = self.state
        if probing:
            upgraded = False
            # A probe that never completes must not hold the connection forever.
            with trio.move_on_after(self.endpoint.connect_timeout):
                with contextlib.suppress(ConnectionClosed):
                    upgraded = await self._upgrade(ws)
            if not upgraded:
                if self.state.upgrading:
                    state.upgrade_failed()
                    self.notify()
                with trio.move_on_after(1):
                    await ws.close(1002, "upgrade not completed")
                return
        close: list[tuple[int, str]] = []
        self.ws = ws
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._write_websocket, ws, nursery.cancel_scope)
                try:
                    close.append(await self._read_websocket(ws))
                finally:
                    nursery.cancel_scope.cancel()
        finally:
            self.ws = None
        code, reason = close[0] if close else (1000, "")
        with trio.move_on_after(1):
            await ws.close(code, reason)

    async def _upgrade(self, ws: Connection) -> bool:
        state = self.state
        try:
            answer = state.probe(parse_probe_reply(await ws.receive()))
            await ws.send([b"3" + str(answer.data).encode()])
            self.notify()  # a pending GET is answered now (noop if nothing is queued)
            state.upgrade(parse_probe_reply(await ws.receive()))
        except (SessionError, MessageTooLarge) as exc:
            log.debug("socket.io upgrade of %s failed: %s", self.sid, exc)
            return False
        self.notify()
        return True

    async def _write_websocket(self, ws: Connection, scope: trio.CancelScope) -> None:
        state = self.state
        try:
            while True:
                if state.has_output:
                    await self.flush_websocket()
                    self.notify()  # the outbox emptied: a waiting sender may go on
                    continue
                if state.closed:
                    # No "1" (close) packet: python-socketio would take it as final.
                    break
                await self.wait_change()
        except ConnectionClosed:
            self.terminate("WebSocket closed")
        scope.cancel()

    async def _read_websocket(self, ws: Connection) -> tuple[int, str]:
        """Feed the session until either ends; the WebSocket close code to send."""
        while not self.state.closed:
            try:
                data = await ws.receive()
            except MessageTooLarge as exc:
                if self.conn is not None:
                    await self.conn.deliver_error(exc)
                continue
            except ConnectionClosed:
                self.terminate("WebSocket closed")
                return 1000, ""
            try:
                conn = self.conn
                if (
                    conn is not None
                    and type(data) is str
                    and data.startswith("42")
                    and not self.swallow_attachments
                ):
                    # The hot path: an EVENT on a connected namespace, as feed() would
                    # take it (a message proves the client alive), minus the layers.
                    self.state.heard(0.0)
                    frame = conn.bridge.event_frame(data)
                    if frame is None:
                        await self._event(conn, data)  # the general way
                    elif not conn.deliver_now(frame):
                        await conn.deliver(frame)
                else:
                    await self.feed(engineio.decode_packet(data))
            except (EngineIOProtocolError, SessionError) as exc:
                log.info("socket.io protocol error from %s: %s", self.remote, exc)
                self.terminate(f"protocol error: {exc}")
                return 1002, str(exc)[:120]
        return 1000, ""


class SocketIOConnection:
    """One Socket.IO namespace connection as the core sees it (a :class:`Connection`)."""

    def __init__(
        self, session: _Session, bridge: NamespaceBridge, *, token_key: str | None
    ) -> None:
        self._session = session
        self.bridge = bridge
        self._token_key = token_key
        self._inbound: deque[str | MessageTooLarge] = deque()
        self._max = session.endpoint.max_message_bytes
        self._closed = False  # the core closed it
        self._gone = False  # the transport went away first

    @property
    def remote(self) -> str:
        return self._session.remote

    def transport_gone(self) -> None:
        if self._gone or self._closed:
            return
        self._gone = True
        bridge = self.bridge
        key = self._token_key
        if bridge.joined and not bridge.client_disconnected and key and bridge.resume_token:
            session = self._session
            session.endpoint.remember(key, bridge.resume_token, session.state.taken_tag)

    # -- from the client ----------------------------------------------------------

    def deliver_nowait(self, frame: str) -> None:
        self._inbound.append(frame)
        self._session.notify_in()

    def deliver_now(self, frame: str) -> bool:
        """:meth:`deliver` if it need not wait (the hot path: no coroutine); False if it must."""
        if len(self._inbound) >= INBOUND_QUEUE or len(frame) * 4 > self._max:
            return False
        self._inbound.append(frame)
        self._session.notify_in()
        return True

    async def deliver(self, frame: str) -> None:
        # The limit is in bytes; a str can only be over it if its length is over a quarter.
        if len(frame) * 4 > self._max:
            size = len(frame.encode())
            if size > self._max:
                await self.deliver_error(MessageTooLarge(size, self._max))
                return
        while len(self._inbound) >= INBOUND_QUEUE and not self._ended:
            await self._session.wait_in()
        self.deliver_nowait(frame)

    async def deliver_error(self, error: MessageTooLarge) -> None:
        while len(self._inbound) >= INBOUND_QUEUE and not self._ended:
            await self._session.wait_in()
        self._inbound.append(error)
        self._session.notify_in()

    @property
    def _ended(self) -> bool:
        return self._closed or self._gone

    # -- Connection ------------------------------------------------------------------

    async def receive(self) -> str | bytes:
        session = self._session
        while True:
            if self._inbound:
                item = self._inbound.popleft()
                session.notify_in()  # room in the queue: a waiting reader may go on
                if isinstance(item, MessageTooLarge):
                    raise item
                return item
            if self._gone or self._closed:
                if session.timed_out:
                    raise ConnectionTimedOut(None, "heartbeat timeout")
                raise ConnectionClosed(1006, "transport closed")
            await session.wait_in()

    async def send(self, frames: Sequence[bytes]) -> None:
        if self.bridge.client_disconnected:
            # The client left (DISCONNECT, our peer:leave): what is still said to it,
            # such as that leave's ack, is moot, and must not turn the leave into a drop
            # because its transport went away right behind the DISCONNECT.
            return
        if self._ended:
            raise ConnectionClosed(1006)
        session = self._session
        bridge = self.bridge
        state = session.state
        ws = session.ws
        if (
            ws is not None
            and not state.has_output
            and not state.closed
            and state.transport is Transport.WEBSOCKET
        ):
            # The hot path: nothing queued before these frames, so they go out as
            # they are translated, without passing through the session's outbox.
            await session.send_websocket(ws, bridge, frames)
            return
        for frame in frames:
            # Each frame's packets carry its seq, so the session knows how far the
            # client has been sent its frames (the lastSeq of a resume).
            session.push_text(bridge.outbound_text(frame), wake=False, seq=bridge.frame_seq)
        if session.ws is not None:
            try:
                await session.flush_websocket()
            except ConnectionClosed:
                session.terminate("WebSocket closed")
                raise ConnectionClosed(1006) from None
            return
        session.notify()
        # Backpressure: the core's writer waits while the client has not taken what
        # it was sent; the core's own queue then decides when it is a slow consumer.
        while session.state.outbox_bytes > session.endpoint.outbox_bytes and not self._ended:
            await session.wait_change()
        if self._gone:
            raise ConnectionClosed(1006)

    async def close(self, code: int, reason: str = "") -> None:
        if self._closed:
            return
        was_gone = self._gone
        self._closed = True
        session = self._session
        endpoint = session.endpoint
        if self._token_key is not None and code in socketio.SERVER_DECIDED and not was_gone:
            # Removed while connected: nothing to resume. (After a drop the core closes
            # the gone connection too, with 1000; the remembered token must survive that.)
            endpoint.forget(self._token_key)
        if was_gone:
            session.notify_all()
            return
        packets, ending = self.bridge.closing(code, reason)
        session.push(packets)
        if ending is Ending.CLOSE_TRANSPORT:
            session.terminate(f"closed with {code}")
        if session.conn is self:
            session.conn = None
            session.connect_deadline = trio.current_time() + endpoint.connect_timeout
        # Like a WebSocket close handshake: give the client the time (within the
        # caller's deadline) to take the last packets.
        with trio.move_on_after(endpoint.close_timeout):
            while session.state.has_output and not session.done.is_set():
                await session.wait_change()
        session.notify_all()


def encode_json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def _token_key(token: str) -> str:
    # The memory is keyed by a digest: the server keeps no bearer tokens around.
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass
class SocketIOEndpoint:
    """Engine.IO v4 sessions and the ``/meetings`` namespace over a hub's ``serve``.

    Args:
        serve: the core's entry point (``hub.serve``; for an app whose hub starts
            later, a function that finds the hub when called).
        heartbeat_interval / heartbeat_timeout: meshroom's heartbeat settings; they
            become Engine.IO's ``pingInterval`` / ``pingTimeout`` (0 = socket.io's defaults).
        max_message_bytes: the native message limit; ``maxPayload`` adds the framing.
        connect_timeout: how long a session may stay without a connected namespace.
        origins: who may open sessions (None: anyone).
        resume_memory_seconds: how long a dropped connection's resume token is kept
            for the client's reconnect (0: not at all).
        max_sessions: Engine.IO sessions at once; past it, handshakes get 503 (0: no limit).
    """

    serve: Serve
    heartbeat_interval: float = 25.0
    heartbeat_timeout: float = 20.0
    max_message_bytes: int = 64 * 1024
    connect_timeout: float = 10.0
    close_timeout: float = 5.0
    origins: OriginPolicy | None = None
    resume_memory_seconds: float = 120.0
    max_sessions: int = 10000
    _sessions: dict[str, _Session] = field(default_factory=dict)
    # digest of an access token -> (resume token, last seq sent to the client, expiry)
    _resume: OrderedDict[str, tuple[str, int | None, float]] = field(default_factory=OrderedDict)
    _nursery: trio.Nursery | None = None

    @property
    def heartbeat(self) -> Heartbeat:
        if self.heartbeat_interval > 0 and self.heartbeat_timeout > 0:
            return Heartbeat(self.heartbeat_interval, self.heartbeat_timeout)
        return DEFAULT_HEARTBEAT

    @property
    def max_payload(self) -> int:
        return self.max_message_bytes + FRAMING_SLACK

    @property
    def outbox_bytes(self) -> int:
        return max(self.max_payload, 256 * 1024)

    @property
    def session_count(self) -> int:
        return len(self._sessions)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own every session until cancelled (then they end with their tasks)."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            try:
                await trio.sleep_forever()
            finally:
                self._nursery = None
                for session in list(self._sessions.values()):
                    session.terminate("server stopping")

    # -- resume memory ----------------------------------------------------------------

    def remember(self, key: str, resume_token: str, last_seq: int | None = None) -> None:
        if self.resume_memory_seconds <= 0:
            return
        expiry = trio.current_time() + self.resume_memory_seconds
        self._resume[key] = (resume_token, last_seq, expiry)
        self._resume.move_to_end(key)
        while len(self._resume) > RESUME_MEMORY:
            self._resume.popitem(last=False)

    def recall(self, key: str) -> tuple[str, int | None] | None:
        """The resume token and last seq remembered for an access token (once)."""
        entry = self._resume.pop(key, None)
        if entry is None or entry[2] < trio.current_time():
            return None
        return entry[0], entry[1]

    def forget(self, key: str) -> None:
        self._resume.pop(key, None)

    # -- requests ---------------------------------------------------------------------

    def _cors(self, headers: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
        origin = headers.get("origin")
        if origin is None:
            return ()
        return (
            ("Access-Control-Allow-Origin", origin),
            ("Access-Control-Allow-Credentials", "true"),
            ("Vary", "Origin"),
        )

    def check(
        self,
        method: str,
        query: Mapping[str, list[str]],
        headers: Mapping[str, str],
        *,
        websocket: bool,
    ) -> HttpResponse | None:
        """Engine.IO's request checks (engine.io ``Server.verify``); None if it may go on."""
        if self.origins is not None and not self.origins.allows(headers.get("origin")):
            return _error(403, ErrorCode.FORBIDDEN)
        if _arg(query, "EIO") != str(engineio.PROTOCOL_VERSION):
            return _error(400, ErrorCode.UNSUPPORTED_PROTOCOL_VERSION)
        transport = _arg(query, "transport")
        if transport not in ("polling", "websocket"):
            return _error(400, ErrorCode.UNKNOWN_TRANSPORT)
        if (transport == "websocket") != websocket:
            return _error(400, ErrorCode.BAD_REQUEST)
        sid = _arg(query, "sid")
        if sid is None:
            if method != "GET":
                return _error(400, ErrorCode.BAD_HANDSHAKE_METHOD)
            if self._nursery is None:
                return HttpResponse(503, b"socket.io endpoint not running\n")
            if 0 < self.max_sessions <= len(self._sessions):
                return HttpResponse(
                    503, b"too many sessions; try again shortly\n", headers=(("Retry-After", "5"),)
                )
            return None
        session = self._sessions.get(sid)
        if session is None or session.state.closed:
            return _error(400, ErrorCode.UNKNOWN_SID)
        if websocket and not session.state.can_upgrade():
            return _error(400, ErrorCode.BAD_REQUEST)
        return None

    async def handle_polling(
        self,
        method: str,
        query: Mapping[str, list[str]],
        headers: Mapping[str, str],
        read_body: BodyReader,
        *,
        remote: str,
    ) -> HttpResponse:
        """One polling request (GET or POST, or a CORS preflight)."""
        cors = self._cors(headers)
        if method == "OPTIONS":
            return HttpResponse(
                204,
                headers=(
                    *cors,
                    ("Access-Control-Allow-Methods", "GET, POST, OPTIONS"),
                    ("Access-Control-Allow-Headers", "content-type"),
                ),
            )
        refusal = self.check(method, query, headers, websocket=False)
        if refusal is None and method not in ("GET", "POST"):
            refusal = _error(400, ErrorCode.BAD_REQUEST)
        if refusal is not None:
            with_cors = (*cors, *refusal.headers)  # Retry-After of a 503 included
            return HttpResponse(refusal.status, refusal.body, refusal.content_type, with_cors, True)
        sid = _arg(query, "sid")
        if sid is None:
            session = await self._open(Transport.POLLING, remote)
            body = engineio.encode_payload([session.state.open_packet()]).encode()
            return HttpResponse(200, body, headers=cors)
        session = self._sessions[sid]
        if session.state.transport is not Transport.POLLING and not session.state.upgrading:
            # A stray poll on an upgraded session: refused, the session is unharmed.
            return HttpResponse(
                400, engineio.error_body(ErrorCode.BAD_REQUEST), "application/json", cors
            )
        answer = await (session.poll() if method == "GET" else session.post(read_body))
        return HttpResponse(answer.status, answer.body, answer.content_type, cors, answer.close)

    async def handle_websocket(
        self, query: Mapping[str, list[str]], ws: Connection, *, remote: str
    ) -> None:
        """Serve an accepted WebSocket (checked with :meth:`check` before accepting it)."""
        sid = _arg(query, "sid")
        if sid is None:
            if self._nursery is None:
                await ws.close(1001, "server stopping")
                return
            session = await self._open(Transport.WEBSOCKET, remote)
            try:
                opening = engineio.encode_packet(session.state.open_packet(), polling=False)
                assert isinstance(opening, str)
                await ws.send([opening.encode()])
            except ConnectionClosed:
                session.terminate("WebSocket closed")
                return
            await session.run_websocket(ws, probing=False)
            return
        found = self._sessions.get(sid)
        if found is None or not found.state.can_upgrade():
            await ws.close(1008, "Session ID unknown")
            return
        await found.run_websocket(ws, probing=True)

    async def _open(self, transport: Transport, remote: str) -> _Session:
        assert self._nursery is not None
        sid = secrets.token_urlsafe(15)
        state = EngineSession(
            sid,
            transport,
            heartbeat=self.heartbeat,
            max_payload=self.max_payload,
            now=trio.current_time(),
        )
        session = _Session(self, state, remote)
        self._sessions[sid] = session
        await self._nursery.start(self._run_session, session)
        return session

    async def _run_session(
        self, session: _Session, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        try:
            async with trio.open_nursery() as nursery:
                session.nursery = nursery
                task_status.started()
                await session.heartbeat()
                # Ended: the namespace's connection sees the drop and its serve returns.
                session.terminate(session.state.close_reason or "ended")
        finally:
            self._sessions.pop(session.sid, None)

    # -- the standalone listener's hook ----------------------------------------------

    async def serve_stream(self, stream: trio.abc.Stream, received: bytes, remote: str) -> None:
        """Serve HTTP/1.1 requests under ``/socket.io/`` on a raw stream (keep-alive included).

        ``received``: bytes the listener already read off the stream (the request's start).
        """
        http = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST_HEAD)
        http.receive_data(received)
        try:
            while True:
                with trio.move_on_after(KEEPALIVE_IDLE_SECONDS) as idle:
                    event = await _next_event(http, stream)
                if idle.cancelled_caught or not isinstance(event, h11.Request):
                    return
                if not await self._serve_request(http, stream, event, remote):
                    return
                if http.our_state is not h11.DONE or http.their_state is not h11.DONE:
                    return
                http.start_next_cycle()
        except (h11.RemoteProtocolError, trio.BrokenResourceError, trio.ClosedResourceError):
            return
        finally:
            await trio.aclose_forcefully(stream)

    async def _serve_request(
        self, http: h11.Connection, stream: trio.abc.Stream, request: h11.Request, remote: str
    ) -> bool:
        target = urlsplit(request.target.decode("latin-1"))
        query = parse_qs(target.query)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in request.headers}
        method = request.method.decode("latin-1")
        if not target.path.startswith(SOCKETIO_PATH.rstrip("/")):
            await _respond(http, stream, HttpResponse(404, b"not found\n", close=True))
            return False
        if headers.get("upgrade", "").lower() == "websocket":
            refusal = self.check(method, query, headers, websocket=True)
            key = headers.get("sec-websocket-key")
            if refusal is None and key is None:
                refusal = _error(400, ErrorCode.BAD_REQUEST)
            if refusal is not None:
                await _respond(
                    http,
                    stream,
                    HttpResponse(
                        refusal.status, refusal.body, refusal.content_type, refusal.headers, True
                    ),
                )
                return False
            await self._accept_websocket(http, stream, query, key or "", remote)
            return False

        async def read_body(limit: int) -> bytes:
            return await _read_body(http, stream, limit)

        # While a GET waits for packets, watch the socket: a client that hangs up must
        # release its GET slot, or its next GET (on a new connection) would overlap.
        answers: list[HttpResponse] = []
        async with trio.open_nursery() as nursery:
            if method == "GET":
                nursery.start_soon(_watch_hangup, stream, http, nursery.cancel_scope)
            answers.append(
                await self.handle_polling(method, query, headers, read_body, remote=remote)
            )
            nursery.cancel_scope.cancel()
        if not answers:  # the client hung up while its GET waited
            return False
        answer = answers[0]
        if method != "GET" and http.their_state is h11.SEND_BODY and not answer.close:
            answer = HttpResponse(
                answer.status, answer.body, answer.content_type, answer.headers, close=True
            )
        await _respond(http, stream, answer)
        return not answer.close

    async def _accept_websocket(
        self,
        http: h11.Connection,
        stream: trio.abc.Stream,
        query: Mapping[str, list[str]],
        key: str,
        remote: str,
    ) -> None:
        accept = generate_accept_token(key.encode()).decode()
        await stream.send_all(
            (
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
            ).encode()
        )
        initial, _closed = http.trailing_data
        ws = WebSocketConnection(
            stream, remote=remote, max_message_bytes=self.max_payload, initial=bytes(initial)
        )
        try:
            await self.handle_websocket(query, ws, remote=remote)
        finally:
            await ws._abort()


def _arg(query: Mapping[str, list[str]], name: str) -> str | None:
    values = query.get(name)
    return values[0] if values else None


async def _next_event(http: h11.Connection, stream: trio.abc.Stream) -> Any:
    while True:
        event = http.next_event()
        if event is not h11.NEED_DATA:
            return event
        data = await stream.receive_some(RECEIVE_SIZE)
        http.receive_data(bytes(data))  # b"" tells h11 the client closed


async def _read_body(http: h11.Connection, stream: trio.abc.Stream, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        event = await _next_event(http, stream)
        if isinstance(event, h11.Data):
            size += len(event.data)
            if size > limit:
                raise BodyTooLarge
            chunks.append(bytes(event.data))
        elif isinstance(event, h11.EndOfMessage):
            return b"".join(chunks)
        else:
            raise trio.BrokenResourceError(f"unexpected {event!r} in a body")


async def _watch_hangup(
    stream: trio.abc.Stream, http: h11.Connection, scope: trio.CancelScope
) -> None:
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        data = await stream.receive_some(RECEIVE_SIZE)
        if data:
            http.receive_data(bytes(data))  # pipelined: h11 keeps it for the next cycle
            return
    scope.cancel()


async def _respond(http: h11.Connection, stream: trio.abc.Stream, answer: HttpResponse) -> None:
    headers = [
        ("Content-Type", answer.content_type),
        ("Content-Length", str(len(answer.body))),
        *answer.headers,
    ]
    if answer.close:
        headers.append(("Connection", "close"))
    data = http.send(h11.Response(status_code=answer.status, headers=headers))
    data = (data or b"") + (http.send(h11.Data(data=answer.body)) or b"") if answer.body else data
    data = (data or b"") + (http.send(h11.EndOfMessage()) or b"")
    await stream.send_all(data)


def endpoint_for(settings: Any, serve: Serve) -> SocketIOEndpoint:
    """The endpoint configured from :class:`meshroom.config.Settings` (heartbeats,
    message size, the auth and close timeouts, allowed origins, the session cap and
    the resume memory)."""
    return SocketIOEndpoint(
        serve,
        heartbeat_interval=settings.heartbeat_interval,
        heartbeat_timeout=settings.heartbeat_timeout,
        max_message_bytes=settings.max_message_bytes,
        connect_timeout=settings.auth_timeout,
        close_timeout=settings.close_timeout,
        origins=settings.origin_policy(),
        resume_memory_seconds=settings.socketio_resume_memory,
        max_sessions=settings.socketio_max_sessions,
    )
