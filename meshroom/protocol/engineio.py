"""Engine.IO protocol v4: packets, payloads and error bodies (sans-I/O).

Engine.IO is the transport layer under Socket.IO: it carries opaque text (or
binary) messages over HTTP long-polling or a WebSocket, with its own heartbeat
and an upgrade from one transport to the other. Reference:
https://github.com/socketio/engine.io-protocol (v4, ``EIO=4``).

A packet is a one-digit type followed by its data::

    0{"sid":"…","upgrades":["websocket"],…}   open (server → client, first)
    1                                           close
    2 / 3                                       ping / pong (v4: the server pings)
    4hello                                      message
    5                                           upgrade (client → server, over the new transport)
    6                                           noop

Over a WebSocket each frame is one packet; a binary frame is a binary message
(no type digit). Over polling, a body is a *payload*: packets joined by the
record separator ``\\x1e``, binary messages written as ``b`` + base64.

This module does no I/O and knows nothing about Socket.IO or meshroom.
"""

from __future__ import annotations

import base64
import binascii
import enum
import json
from dataclasses import dataclass
from typing import Final

PROTOCOL_VERSION: Final = 4
SEPARATOR: Final = "\x1e"


class PacketType(enum.IntEnum):
    OPEN = 0
    CLOSE = 1
    PING = 2
    PONG = 3
    MESSAGE = 4
    UPGRADE = 5
    NOOP = 6


class ErrorCode(enum.IntEnum):
    """The ``code`` of an Engine.IO HTTP error body (engine.io's ``Server.errors``)."""

    UNKNOWN_TRANSPORT = 0
    UNKNOWN_SID = 1
    BAD_HANDSHAKE_METHOD = 2
    BAD_REQUEST = 3
    FORBIDDEN = 4
    UNSUPPORTED_PROTOCOL_VERSION = 5


ERROR_MESSAGES: Final = {
    ErrorCode.UNKNOWN_TRANSPORT: "Transport unknown",
    ErrorCode.UNKNOWN_SID: "Session ID unknown",
    ErrorCode.BAD_HANDSHAKE_METHOD: "Bad handshake method",
    ErrorCode.BAD_REQUEST: "Bad request",
    ErrorCode.FORBIDDEN: "Forbidden",
    ErrorCode.UNSUPPORTED_PROTOCOL_VERSION: "Unsupported protocol version",
}


class EngineIOProtocolError(ValueError):
    """Input that is not a valid Engine.IO packet or payload."""


@dataclass(slots=True)  # not frozen: a frozen dataclass's __init__ costs ~1 µs per packet
class Packet:
    type: PacketType
    data: str | bytes = ""


_TYPES: Final = {str(int(t)): t for t in PacketType}


def encode_packet(packet: Packet, *, polling: bool) -> str | bytes:
    """One packet as it goes on the wire.

    Binary message data becomes ``b`` + base64 on polling, a raw binary frame on a
    WebSocket (v4 has no type digit in front of binary data).
    """
    if isinstance(packet.data, bytes):
        if packet.type is not PacketType.MESSAGE:
            raise EngineIOProtocolError("only message packets may carry binary data")
        if polling:
            return "b" + base64.b64encode(packet.data).decode("ascii")
        return packet.data
    return f"{int(packet.type)}{packet.data}"


def decode_packet(raw: str | bytes) -> Packet:
    """One packet from a WebSocket frame or a payload record.

    Raises:
        EngineIOProtocolError: empty, an unknown type, or bad base64.
    """
    if isinstance(raw, bytes):
        return Packet(PacketType.MESSAGE, raw)
    if not raw:
        raise EngineIOProtocolError("empty packet")
    head = raw[0]
    if head == "b":
        try:
            return Packet(PacketType.MESSAGE, base64.b64decode(raw[1:], validate=True))
        except (binascii.Error, ValueError):
            raise EngineIOProtocolError("bad base64 in a binary packet") from None
    kind = _TYPES.get(head)
    if kind is None:
        raise EngineIOProtocolError(f"unknown packet type {head!r}")
    return Packet(kind, raw[1:])


def encode_payload(packets: list[Packet]) -> str:
    """A polling body: packets joined by ``\\x1e`` (binary data in base64)."""
    parts = []
    for packet in packets:
        encoded = encode_packet(packet, polling=True)
        assert isinstance(encoded, str)
        parts.append(encoded)
    return SEPARATOR.join(parts)


def decode_payload(body: str) -> list[Packet]:
    """The packets of a polling body.

    Raises:
        EngineIOProtocolError: an empty body or any bad packet in it.
    """
    if not body:
        raise EngineIOProtocolError("empty payload")
    return [decode_packet(part) for part in body.split(SEPARATOR)]


def open_packet(
    sid: str,
    *,
    upgrades: list[str],
    ping_interval_ms: int,
    ping_timeout_ms: int,
    max_payload: int,
) -> Packet:
    """The handshake packet the server sends first on every session."""
    body = {
        "sid": sid,
        "upgrades": upgrades,
        "pingInterval": ping_interval_ms,
        "pingTimeout": ping_timeout_ms,
        "maxPayload": max_payload,
    }
    return Packet(PacketType.OPEN, json.dumps(body, separators=(",", ":")))


def error_body(code: ErrorCode) -> bytes:
    """The JSON body of an Engine.IO HTTP 400/403 answer, as engine.io writes it."""
    return json.dumps({"code": int(code), "message": ERROR_MESSAGES[code]}).encode()
