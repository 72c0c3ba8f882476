"""One Engine.IO v4 session as a state machine (sans-I/O).

It lives in :mod:`meshroom.protocol` rather than next to the trio adapter because
everything that decides *what* happens on a session is here, and none of it needs
a socket or a clock of its own: time comes in as ``now`` arguments, packets come
in as decoded :class:`~.engineio.Packet` s, and what must go out is read back
(:meth:`EngineSession.take_poll`, :meth:`EngineSession.take_websocket`). The trio
shell (:mod:`meshroom.transports.socketio`) only waits and wakes. That keeps the
rules testable with hypothesis, without sockets or sleeps:

* one GET and one POST in flight at a time (a second one is a protocol error
  that ends the session, as in engine.io);
* the upgrade: ``2probe`` over the new WebSocket is answered ``3probe``; from then
  until ``5``, *every* GET is answered at once (with ``6`` noop if nothing else is
  queued), not only the one pending at the probe, so the client can pause polling
  whichever GET it has in flight when ``3probe`` reaches it (engine.io writes a noop
  to each such GET, on a 100 ms timer); ``5`` over the WebSocket switches the
  transport, and whatever was still queued goes out there, in order;
* heartbeats in v4's direction: the server sends ``2`` every ``ping_interval``;
  if nothing at all comes back within ``ping_timeout`` of a ping the session is
  dead. A polling client that vanished never fetches the ping, so it is cleaned
  up on the same deadline.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass

from .engineio import (
    SEPARATOR,
    EngineIOProtocolError,
    ErrorCode,
    Packet,
    PacketType,
    encode_packet,
    open_packet,
)


class Transport(enum.StrEnum):
    POLLING = "polling"
    WEBSOCKET = "websocket"


class SessionError(Exception):
    """The client broke the Engine.IO rules; the session is over (HTTP 400 on polling)."""

    def __init__(self, code: ErrorCode, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class Timer(enum.Enum):
    PING = "ping"  # a ping was queued: wake the writer
    TIMEOUT = "timeout"  # no answer within ping_timeout: the session is dead


@dataclass(frozen=True, slots=True)
class Heartbeat:
    interval: float  # seconds between server pings
    timeout: float  # seconds a ping may go unanswered


class EngineSession:
    """The state of one Engine.IO session (``sid``), whichever transport carries it."""

    def __init__(
        self,
        sid: str,
        transport: Transport,
        *,
        heartbeat: Heartbeat,
        max_payload: int,
        now: float,
    ) -> None:
        self.sid = sid
        self.transport = transport
        self.heartbeat = heartbeat
        self.max_payload = max_payload
        self.upgrading = False  # a probe was answered; waiting for "5"
        self.closed = False
        self.close_reason = ""
        self._outbox: deque[Packet] = deque()
        self._tags: deque[int | None] = deque()  # beside each queued packet: see push()
        self.outbox_bytes = 0
        # The largest tag of a packet handed to the transport (a GET's body, a WebSocket
        # write): the layer above tags messages with the native frame's seq, so this is
        # how far the client has been sent its frames (docs/socketio.md, resume).
        self.taken_tag: int | None = None
        self.get_in_flight = False
        self.post_in_flight = False
        self.next_ping = now + heartbeat.interval
        self.pong_deadline: float | None = None

    def open_packet(self) -> Packet:
        upgrades = ["websocket"] if self.transport is Transport.POLLING else []
        return open_packet(
            self.sid,
            upgrades=upgrades,
            ping_interval_ms=round(self.heartbeat.interval * 1000),
            ping_timeout_ms=round(self.heartbeat.timeout * 1000),
            max_payload=self.max_payload,
        )

    # -- outbound --------------------------------------------------------------------

    def push(self, packet: Packet, tag: int | None = None) -> None:
        """Queue a packet for the client (dropped once the session is closed).

        ``tag``: a number that :attr:`taken_tag` reports once the packet is taken.
        """
        if self.closed:
            return
        self._outbox.append(packet)
        self._tags.append(tag)
        self.outbox_bytes += len(packet.data) + 1

    def took(self, tag: int | None) -> None:
        """Messages tagged up to ``tag`` went to the transport without the outbox."""
        self._taken(tag)

    def _taken(self, tag: int | None) -> None:
        if tag is not None and (self.taken_tag is None or tag > self.taken_tag):
            self.taken_tag = tag

    @property
    def has_output(self) -> bool:
        return bool(self._outbox)

    @property
    def upgrade_noop_due(self) -> bool:
        """Upgrading, nothing queued, not closed: a GET now gets a bare noop."""
        return self.upgrading and not self._outbox and not self.closed

    def poll_ready(self) -> bool:
        """A pending GET can be answered now.

        While upgrading (and after), always: the client pauses polling once the GET it
        has in flight when ``3probe`` reaches it comes back, and that GET is not
        necessarily the one that was pending when the probe arrived. The one pending
        then may have been answered with queued packets, which the client may have
        received before ``3probe`` (the WebSocket and the GET are separate
        connections) and polled again; that next GET must not wait for traffic.
        """
        return (
            bool(self._outbox)
            or self.transport is not Transport.POLLING
            or self.upgrading
            or self.closed
        )

    def take_poll(self) -> str | None:
        """The body for a GET: queued packets (up to ``max_payload`` bytes, at least one).

        None once the session is closed and drained: the GET is answered with an error,
        so the client sees a transport error and reconnects. (A ``1`` close packet
        would make python-socketio give up; socket.io-client reconnects either way.)
        """
        if self.transport is not Transport.POLLING:
            # Upgraded (or upgrading and the probe already released the last GET):
            # a late GET gets a noop so the client's polling loop ends quietly.
            return "6"
        parts: list[str] = []
        size = 0
        while self._outbox:
            encoded = encode_packet(self._outbox[0], polling=True)
            assert isinstance(encoded, str)
            if parts and size + len(encoded) + 1 > self.max_payload:
                break
            packet = self._outbox.popleft()
            self._taken(self._tags.popleft())
            self.outbox_bytes -= len(packet.data) + 1  # as push() counted it
            parts.append(encoded)
            size += len(encoded) + 1
        if not parts:
            return None if self.closed else "6"
        return SEPARATOR.join(parts)

    def take_websocket(self) -> list[str | bytes]:
        """Everything queued, one WebSocket frame per packet (only once upgraded)."""
        if self.transport is not Transport.WEBSOCKET:
            return []
        frames = [encode_packet(packet, polling=False) for packet in self._outbox]
        self._outbox.clear()
        for tag in self._tags:
            self._taken(tag)
        self._tags.clear()
        self.outbox_bytes = 0
        return frames

    # -- HTTP requests ------------------------------------------------------------

    def begin_get(self) -> None:
        if self.get_in_flight:
            raise SessionError(ErrorCode.BAD_REQUEST, "overlapping GET requests")
        if self.transport is not Transport.POLLING and not self.upgrading:
            raise SessionError(ErrorCode.BAD_REQUEST, "polling on a WebSocket session")
        self.get_in_flight = True

    def end_get(self) -> None:
        self.get_in_flight = False

    def begin_post(self) -> None:
        if self.post_in_flight:
            raise SessionError(ErrorCode.BAD_REQUEST, "overlapping POST requests")
        if self.transport is not Transport.POLLING and not self.upgrading:
            raise SessionError(ErrorCode.BAD_REQUEST, "polling on a WebSocket session")
        self.post_in_flight = True

    def end_post(self) -> None:
        self.post_in_flight = False

    # -- inbound -------------------------------------------------------------------

    def receive(self, packet: Packet, now: float) -> str | bytes | None:
        """Handle a packet from the client; a message's data is returned for the layer above.

        Raises:
            SessionError: a packet the client may not send (``open``, ``upgrade`` on
                polling, …); the caller closes the session.
        """
        self.heard(now)
        kind = packet.type
        if kind is PacketType.MESSAGE:
            return packet.data
        if kind is PacketType.PONG or kind is PacketType.NOOP:
            return None
        if kind is PacketType.PING:
            # v4 clients do not ping, but answering costs nothing (and v3 habits exist).
            self.push(Packet(PacketType.PONG, packet.data))
            return None
        if kind is PacketType.CLOSE:
            self.close("client closed the session")
            return None
        raise SessionError(ErrorCode.BAD_REQUEST, f"unexpected {kind.name.lower()} packet")

    def heard(self, now: float) -> None:
        """Anything from the client proves it alive: it answers the pending ping."""
        self.pong_deadline = None

    # -- upgrade ---------------------------------------------------------------------

    def can_upgrade(self) -> bool:
        return self.transport is Transport.POLLING and not self.upgrading and not self.closed

    def probe(self, packet: Packet) -> Packet:
        """``2probe`` arrived over the new WebSocket: the answer to send there.

        Raises:
            SessionError: anything but a probe ping, or no upgrade possible.
        """
        if packet.type is not PacketType.PING or packet.data != "probe":
            raise SessionError(ErrorCode.BAD_REQUEST, "expected 2probe on the upgrading WebSocket")
        if not self.can_upgrade():
            raise SessionError(ErrorCode.BAD_REQUEST, "this session cannot be upgraded")
        self.upgrading = True  # GETs are answered at once until "5": see poll_ready()
        return Packet(PacketType.PONG, "probe")

    def upgrade(self, packet: Packet) -> None:
        """The packet after the probe: ``5`` completes the upgrade.

        Raises:
            SessionError: anything else.
        """
        if not self.upgrading or packet.type is not PacketType.UPGRADE:
            raise SessionError(ErrorCode.BAD_REQUEST, "expected 5 (upgrade) after the probe")
        self.upgrading = False
        self.transport = Transport.WEBSOCKET

    def upgrade_failed(self) -> None:
        """The probing WebSocket went away: polling carries on."""
        self.upgrading = False

    # -- heartbeat and end -----------------------------------------------------------

    def deadline(self) -> float:
        """When :meth:`on_timer` must next run."""
        if self.pong_deadline is not None:
            return min(self.pong_deadline, self.next_ping)
        return self.next_ping

    def on_timer(self, now: float) -> Timer | None:
        if self.closed:
            return None
        if self.pong_deadline is not None and now >= self.pong_deadline:
            self.close("ping timeout")
            return Timer.TIMEOUT
        if now >= self.next_ping:
            self.push(Packet(PacketType.PING))
            if self.pong_deadline is None:
                self.pong_deadline = now + self.heartbeat.timeout
            self.next_ping = now + self.heartbeat.interval
            return Timer.PING
        return None

    def close(self, reason: str) -> None:
        """End the session: what is queued still goes out, then the transport ends."""
        if self.closed:
            return
        self.closed = True
        self.close_reason = reason


def parse_probe_reply(data: str | bytes) -> Packet:
    """Decode a frame on an upgrading WebSocket (text only there).

    Raises:
        SessionError: binary or undecodable.
    """
    from .engineio import decode_packet

    if isinstance(data, bytes):
        raise SessionError(ErrorCode.BAD_REQUEST, "binary frame during the upgrade")
    try:
        return decode_packet(data)
    except EngineIOProtocolError as exc:
        raise SessionError(ErrorCode.BAD_REQUEST, str(exc)) from None
