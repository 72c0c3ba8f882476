"""Socket.IO protocol v5 packets, and their translation to meshroom's native frames (sans-I/O).

Socket.IO rides on Engine.IO messages (:mod:`.engineio`). A packet is written::

    <type>[<attachments>-][<namespace>,][<ack id>][<JSON payload>]

    0/meetings,{"meetingAccessToken":"…"}     CONNECT (client → server, with auth)
    0/meetings,{"sid":"…"}                    CONNECT (server → client, accepted)
    4/meetings,{"message":"…","data":{…}}     CONNECT_ERROR
    1/meetings,                               DISCONNECT (either way)
    2/meetings,12["signal:offer",{…}]         EVENT, with ack id 12
    3/meetings,12[{…}]                        ACK of the event with id 12
    5 / 6                                     BINARY_EVENT / BINARY_ACK (refused here)

Reference: https://github.com/socketio/socket-io-protocol (v5) and socket.io-parser,
whose decoder this one follows in what it accepts and rejects.

:class:`NamespaceBridge` is the translation between one Socket.IO namespace
connection and one native meshroom connection: Socket.IO events become native
request frames (ack ids become request ids) and native frames become Socket.IO
events, acks, CONNECT / CONNECT_ERROR and DISCONNECT. It is pure data in, data
out, so the trio adapter (:mod:`meshroom.transports.socketio`) stays a thin
shell and the whole mapping can be fuzzed without sockets.
"""

from __future__ import annotations

import enum
import json
import re
from dataclasses import dataclass
from typing import Any, Final

import orjson

from .codes import CloseCode, ErrorCode
from .messages import ParsedFrame

DEFAULT_NAMESPACE: Final = "/"
# Ack ids must fit a native request id (an integer strictly inside ±2**53).
MAX_ACK_ID: Final = 2**53 - 1
# Event names the Socket.IO client reserves for itself; a server may not emit them
# (socket.io-parser refuses such EVENT packets).
RESERVED_EVENTS: Final = frozenset(
    {"connect", "connect_error", "disconnect", "disconnecting", "newListener", "removeListener"}
)


class PacketType(enum.IntEnum):
    CONNECT = 0
    DISCONNECT = 1
    EVENT = 2
    ACK = 3
    CONNECT_ERROR = 4
    BINARY_EVENT = 5
    BINARY_ACK = 6


class SocketIOProtocolError(ValueError):
    """Text that is not a valid Socket.IO v5 packet."""


@dataclass(slots=True)  # not frozen: a frozen dataclass's __init__ costs ~1 µs per packet
class Packet:
    type: PacketType
    namespace: str = DEFAULT_NAMESPACE
    data: Any = None  # None: no payload
    id: int | None = None
    attachments: int = 0  # binary packets only


# The pieces of a native server frame that _splice_event cuts at.
_FRAME_HEAD: Final = b'{"event":"'
_FRAME_HEAD_LEN: Final = len(_FRAME_HEAD)
_FRAME_DATA: Final = b'","data":'
_FRAME_DATA_LEN: Final = len(_FRAME_DATA)
_FRAME_SEQ: Final = b',"seq":'
_FRAME_SEQ_LEN: Final = len(_FRAME_SEQ)
_NO_PAYLOAD: Final = object()
# An event name that JSON writes between quotes as it is (no escapes needed).
_PLAIN_NAME: Final = re.compile(r'[^"\\\x00-\x1f]*')
_KINDS: Final = tuple(PacketType)  # by value: 0..6
_BINARY: Final = frozenset({PacketType.BINARY_EVENT, PacketType.BINARY_ACK})


def encode(packet: Packet) -> str:
    """A packet as the text of one Engine.IO message."""
    parts = [str(int(packet.type))]
    if packet.type in (PacketType.BINARY_EVENT, PacketType.BINARY_ACK):
        parts.append(f"{packet.attachments}-")
    if packet.namespace != DEFAULT_NAMESPACE:
        parts.append(packet.namespace + ",")
    if packet.id is not None:
        parts.append(str(packet.id))
    if packet.data is not None:
        parts.append(_dumps(packet.data).decode())
    return "".join(parts)


_fallback_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True).encode


def _dumps(value: Any) -> bytes:
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError:
        # A lone surrogate is not valid UTF-8; the standard encoder writes it as \u escape.
        return _fallback_dumps(value).encode()


def decode(text: str) -> Packet:
    """One packet from the text of an Engine.IO message.

    Raises:
        SocketIOProtocolError: anything socket.io-parser would refuse, and ack ids
            too large to be a native request id.
    """
    return decode_at(text)[0]


def decode_at(text: str, at: int = 0) -> tuple[Packet, int]:
    """:func:`decode` of ``text[at:]``, and where the JSON payload starts in ``text``
    (``len(text)``: none). ``at`` saves the caller a copy (an Engine.IO message's
    Socket.IO packet starts at 1).

    Raises:
        SocketIOProtocolError: as :func:`decode`.
    """
    if len(text) <= at:
        raise SocketIOProtocolError("empty packet")
    head = text[at]
    if not ("0" <= head <= "6"):
        raise SocketIOProtocolError(f"unknown packet type {head!r}")
    kind = _KINDS[ord(head) - 48]
    i = at + 1
    n = len(text)
    attachments = 0
    if kind in _BINARY:
        dash = text.find("-", i)
        count = text[i:dash] if dash >= 0 else ""
        if not (count.isascii() and count.isdigit()):
            raise SocketIOProtocolError("illegal attachments")
        attachments = int(count)
        i = dash + 1
    namespace = DEFAULT_NAMESPACE
    if i < n and text[i] == "/":
        comma = text.find(",", i)
        end = n if comma < 0 else comma
        namespace = text[i:end]
        i = end + 1 if comma >= 0 else n
    start = i
    while i < n and "0" <= text[i] <= "9":
        i += 1
    ack_id: int | None = None
    if i > start:
        if i - start > 16 or int(text[start:i]) > MAX_ACK_ID:
            raise SocketIOProtocolError("ack id too large")
        ack_id = int(text[start:i])
    payload: Any = _NO_PAYLOAD
    if i < n:
        try:
            payload = orjson.loads(text[i:])
        except orjson.JSONDecodeError:
            raise SocketIOProtocolError("invalid payload") from None
    if not _payload_valid(kind, payload):
        raise SocketIOProtocolError(f"invalid payload for a {kind.name} packet")
    packet = Packet(
        kind,
        namespace,
        None if payload is _NO_PAYLOAD else payload,
        ack_id,
        attachments,
    )
    return packet, i


def _payload_valid(kind: PacketType, payload: Any) -> bool:
    # As socket.io-parser's isPayloadValid.
    if kind is PacketType.EVENT or kind is PacketType.BINARY_EVENT:
        if type(payload) is not list or not payload:
            return False
        first = payload[0]
        if type(first) is str:
            return first not in RESERVED_EVENTS
        return type(first) is int or type(first) is float
    if kind is PacketType.CONNECT:
        return payload is _NO_PAYLOAD or isinstance(payload, dict)
    if kind is PacketType.DISCONNECT:
        return payload is _NO_PAYLOAD
    if kind is PacketType.CONNECT_ERROR:
        return isinstance(payload, str | dict)
    return isinstance(payload, list)  # ACK, BINARY_ACK


def connect_error(namespace: str, message: str, data: dict[str, Any] | None = None) -> Packet:
    body: dict[str, Any] = {"message": message}
    if data is not None:
        body["data"] = data
    return Packet(PacketType.CONNECT_ERROR, namespace, body)


def invalid_namespace(namespace: str) -> Packet:
    """What a Socket.IO server answers a CONNECT to a namespace it does not serve."""
    return connect_error(namespace, "Invalid namespace")


# Native close codes that mean "the server removed you": the client must not come back
# on its own, so the namespace gets a Socket.IO DISCONNECT ("io server disconnect").
# Every other close (shutdown 1001, heartbeat 4010, resumed elsewhere 4013, internal
# errors) ends only the transport, and socket.io-client reconnects by itself.
SERVER_DECIDED: Final = frozenset(
    {
        CloseCode.NORMAL,  # peer:leave was acked: the client asked to go
        CloseCode.AUTH_REQUIRED,
        CloseCode.AUTH_FAILED,
        CloseCode.AUTH_TIMEOUT,
        CloseCode.MEETING_UNAVAILABLE,
        CloseCode.BANNED,
        CloseCode.KICKED,
        CloseCode.MEETING_ENDED,
        CloseCode.REPLACED,
        CloseCode.DUPLICATE_SESSION,
        CloseCode.SLOW_CONSUMER,
        CloseCode.ROOM_FULL,
        CloseCode.RATE_LIMITED,
    }
)


class Ending(enum.Enum):
    """What the transport must do after :meth:`NamespaceBridge.closing`."""

    KEEP_TRANSPORT = "keep"  # packets sent (CONNECT_ERROR / DISCONNECT); the client closes
    CLOSE_TRANSPORT = "close"  # end the Engine.IO session: the client reconnects


@dataclass(slots=True)
class NamespaceBridge:
    """One Socket.IO namespace connection translated to one native connection.

    Before the native ``room:joined`` / ``room:resumed`` arrives the namespace is
    *connecting*: nothing is sent to the client (a refusal must become
    CONNECT_ERROR, and socket.io-client drops events before CONNECT anyway). The
    join snapshot is answered with CONNECT ``{sid}`` followed by the snapshot as an
    event, so ``socket.on('room:joined')`` works as on the native protocol.
    """

    namespace: str
    sid: str
    joined: bool = False
    resume_token: str | None = None  # from the last room:joined / room:resumed
    frame_seq: int | None = None  # the ``seq`` of the frame :meth:`outbound` last read
    client_disconnected: bool = False  # the client sent DISCONNECT (or it is gone)
    _refusal: dict[str, Any] | None = None  # an error frame received before the join
    _early: list[Packet] | None = None  # other frames before the join (none expected)
    _head: bytes = b""  # an EVENT message's start on a WebSocket: 42/meetings,["
    _event_prefix: str = ""  # an EVENT's Engine.IO message text up to its ack id: 42/meetings,

    def __post_init__(self) -> None:
        namespace = self.namespace
        prefix = "" if namespace == DEFAULT_NAMESPACE else namespace + ","
        self._event_prefix = "42" + prefix
        self._head = (self._event_prefix + '["').encode()

    # -- client → server ------------------------------------------------------------

    def event_frame(self, message: str) -> str | None:
        """The native request frame for an Engine.IO message carrying a plain EVENT on
        this namespace, or None: then the message takes the general way
        (:func:`decode_at`, :meth:`inbound`), which also refuses what is invalid.

        Plain: ``42<namespace>,[<ack id>]["<name>",<argument>]`` with one argument and a
        name written without escapes, no space around them (what socket.io-client
        sends for ``emit(name, data[, callback])``). The frame is what :meth:`inbound`
        returns for it, a :class:`~.messages.ParsedFrame`, from one parse of the
        payload (which refuses invalid JSON as the general way does) and no
        :class:`Packet`.
        """
        prefix = self._event_prefix
        if not message.startswith(prefix):
            return None
        i = j = len(prefix)
        n = len(message)
        while j < n and "0" <= message[j] <= "9":
            j += 1
        ack_id: int | None = None
        if j > i:
            if j - i > 16:
                return None
            ack_id = int(message[i:j])
            if ack_id > MAX_ACK_ID:
                return None
        try:
            payload = orjson.loads(message[j:])
        except orjson.JSONDecodeError:
            return None
        if type(payload) is not list or len(payload) != 2:
            return None
        name = payload[0]
        if type(name) is not str or name in RESERVED_EVENTS:
            return None
        lead = '["' + name + '",'
        # The payload parsed, and its text starts with the name as it is: so the name
        # has nothing JSON escapes (a quote, a backslash, a control character), and
        # the argument's JSON text is what lies between the comma and the last ].
        if not message.startswith(lead, j) or message[-1] != "]":
            return None
        raw = message[j + len(lead) : -1]
        if ack_id is None:
            frame = ParsedFrame(f'{{"event":"{name}","data":{raw}}}')
            frame.value = {"event": name, "data": payload[1]}
        else:
            frame = ParsedFrame(f'{{"event":"{name}","id":{ack_id},"data":{raw}}}')
            frame.value = {"event": name, "id": ack_id, "data": payload[1]}
        return frame

    def inbound(self, packet: Packet, text: str = "", start: int = 0) -> str | None:
        """The native request frame for a packet on this namespace; None if it has none.

        ``text`` / ``start``: the packet's text and where its payload starts there
        (:func:`decode_at`), if known. An event with one argument and a plain name
        then has that argument's JSON text copied into the native frame as it is,
        not decoded and encoded again, and the frame is a
        :class:`~.messages.ParsedFrame` carrying the native request built from the
        payload this packet's decoding parsed already: the core does not parse it again.

        Raises:
            SocketIOProtocolError: a packet type a client may not send here.
        """
        kind = packet.type
        if kind is PacketType.EVENT:
            payload = packet.data
            if text and len(payload) == 2:
                name = payload[0]
                if type(name) is str and _PLAIN_NAME.fullmatch(name) is not None:
                    head = '["' + name + '",'
                    if text.startswith(head, start) and text[-1] == "]":
                        raw = text[start + len(head) : -1]
                        return _native_event(name, packet.id, raw, payload[1])
            name, *args = packet.data
            request: dict[str, Any] = {"event": name if isinstance(name, str) else str(name)}
            if packet.id is not None:
                request["id"] = packet.id
            if args:
                # Native events take one object; extra arguments have no meaning there.
                request["data"] = args[0]
            return _dumps(request).decode()
        if kind is PacketType.DISCONNECT:
            # socket.disconnect(): leaving on purpose, the native peer:leave (no resume).
            self.client_disconnected = True
            return '{"event":"peer:leave"}'
        if kind is PacketType.ACK:
            return None  # the server never asks for acks; a stray one is harmless
        raise SocketIOProtocolError(f"a client may not send {kind.name} on a connected namespace")

    def binary_refusal(self, packet: Packet | None) -> list[Packet]:
        """The answer to a binary packet (or a stray binary attachment): an error, as native."""
        error = {
            "code": ErrorCode.BINARY_NOT_SUPPORTED.value,
            "message": "binary Socket.IO packets are not supported: meshroom signaling is JSON",
        }
        if packet is not None and packet.id is not None:
            return [Packet(PacketType.ACK, self.namespace, [error], packet.id)]
        return [Packet(PacketType.EVENT, self.namespace, ["error", error])]

    # -- server → client ------------------------------------------------------------

    def outbound_text(self, frame: bytes) -> list[str]:
        """:meth:`outbound`, encoded as Engine.IO message texts.

        The hot path (a joined namespace, an event without a request id to answer,
        such as a relayed signal) writes the EVENT text directly, without the
        intermediate :class:`Packet`; the text is what :func:`encode` would write.
        """
        if self.joined:
            spliced = self._splice_event(frame)
            if spliced is not None:
                return [spliced]
            message = orjson.loads(frame)
            seq = message.get("seq")
            self.frame_seq = seq if type(seq) is int else None
            event = message["event"]
            if event != "room:resumed" and (
                (event != "ack" and event != "error") or not _is_ack_id(message.get("id"))
            ):
                body = _dumps([event, message.get("data", {})]).decode()
                namespace = self.namespace
                if namespace == DEFAULT_NAMESPACE:
                    return ["2" + body]
                return [f"2{namespace},{body}"]
            return [encode(packet) for packet in self._outbound_message(message)]
        return [encode(packet) for packet in self.outbound(frame)]

    def outbound_messages(self, frame: bytes) -> list[bytes]:
        """:meth:`outbound_text` as the Engine.IO message bytes for a WebSocket (``4…``).

        The hot path (see :meth:`_splice`) joins the frame's bytes into the message
        in one go, with no round trip through ``str``.
        """
        if self.joined:
            parts = self._splice(frame)
            if parts is not None:
                name, data = parts
                return [b"".join((self._head, name, b'",', data, b"]"))]
        return [b"4" + text.encode() for text in self.outbound_text(frame)]

    def _splice_event(self, frame: bytes) -> str | None:
        """The EVENT text for a plain native event frame, its JSON copied, not re-encoded.

        Native server frames are compact JSON written by ``encode_event``:
        ``{"event":"<name>","data":<data>}`` or, with a request id,
        ``{"event":…,"id":…,"data":…}``; the core stamps ``,"seq":<n>`` before the
        last brace of each frame it writes. A frame of the first form with a name
        that needs no escapes becomes ``2<namespace>,["<name>",<data>]`` by cutting
        and joining text. Anything else (a request id: an ack; ``room:resumed``,
        which carries the resume token) returns None and is decoded.
        """
        parts = self._splice(frame)
        if parts is None:
            return None
        name, data = parts
        namespace = self.namespace
        text = b'["' + name + b'",' + data + b"]"
        if namespace == DEFAULT_NAMESPACE:
            return "2" + text.decode()
        return f"2{namespace},{text.decode()}"

    def _splice(self, frame: bytes) -> tuple[bytes, bytes] | None:
        """A plain native event frame's name and data (JSON text), cut out of it, and
        its ``seq`` noted in :attr:`frame_seq`; None for any other frame (see
        :meth:`_splice_event`)."""
        if not frame.startswith(_FRAME_HEAD):
            return None
        end = frame.find(b'"', _FRAME_HEAD_LEN)
        if end < 0 or not frame.startswith(_FRAME_DATA, end):
            return None
        name = frame[_FRAME_HEAD_LEN:end]
        if b"\\" in name or name == b"room:resumed":
            return None
        seq_at = frame.rfind(_FRAME_SEQ)
        digits = frame[seq_at + _FRAME_SEQ_LEN : -1] if seq_at > 0 else b""
        if digits.isdigit():
            self.frame_seq = int(digits)
            data_end = seq_at
        else:
            self.frame_seq = None
            data_end = len(frame) - 1
        return name, frame[end + _FRAME_DATA_LEN : data_end]

    def outbound(self, frame: bytes) -> list[Packet]:
        """The Socket.IO packets for one native frame (JSON text from the core)."""
        message = orjson.loads(frame)
        seq = message.get("seq")
        self.frame_seq = seq if type(seq) is int else None
        return self._outbound_message(message)

    def _outbound_message(self, message: dict[str, Any]) -> list[Packet]:
        event: str = message["event"]
        data = message.get("data", {})
        request_id = message.get("id")
        if not self.joined:
            if event in ("room:joined", "room:resumed"):
                self.joined = True
                self.resume_token = data.get("resumeToken") or None
                early, self._early = self._early or [], None
                return [
                    Packet(PacketType.CONNECT, self.namespace, {"sid": self.sid}),
                    Packet(PacketType.EVENT, self.namespace, [event, data]),
                    *early,
                ]
            if event == "error":
                self._refusal = data
                return []
            early_packets = self._early if self._early is not None else []
            early_packets.extend(self._as_event(event, data, request_id))
            self._early = early_packets
            return []
        if event == "room:resumed":
            self.resume_token = data.get("resumeToken") or None
        return self._as_event(event, data, request_id)

    def _as_event(self, event: str, data: Any, request_id: Any) -> list[Packet]:
        if event in ("ack", "error") and _is_ack_id(request_id):
            # The reply to an emit with a callback: the callback gets the ack's data,
            # or the error object (which, unlike any ack payload, has a "code").
            return [Packet(PacketType.ACK, self.namespace, [data], request_id)]
        return [Packet(PacketType.EVENT, self.namespace, [event, data])]

    def closing(self, code: int, reason: str) -> tuple[list[Packet], Ending]:
        """What to send when the core closes the native connection with ``code``."""
        if not self.joined:
            refusal = self._refusal or {}
            data = {
                "code": refusal.get("code", _code_for_close(code)),
                "closeCode": code,
            }
            message = str(refusal.get("message") or reason or "connection refused")
            if code in SERVER_DECIDED or refusal:
                return [connect_error(self.namespace, message, data)], Ending.KEEP_TRANSPORT
            return [], Ending.CLOSE_TRANSPORT
        if code in SERVER_DECIDED:
            if self.client_disconnected:
                return [], Ending.KEEP_TRANSPORT
            return [Packet(PacketType.DISCONNECT, self.namespace)], Ending.KEEP_TRANSPORT
        return [], Ending.CLOSE_TRANSPORT


def _native_event(name: str, ack_id: int | None, raw: str, data: Any) -> ParsedFrame:
    """The native request for an event named ``name`` (nothing to escape) whose
    argument is ``data``, parsed from the JSON text ``raw``."""
    if ack_id is None:
        frame = ParsedFrame(f'{{"event":"{name}","data":{raw}}}')
        frame.value = {"event": name, "data": data}
    else:
        frame = ParsedFrame(f'{{"event":"{name}","id":{ack_id},"data":{raw}}}')
        frame.value = {"event": name, "id": ack_id, "data": data}
    return frame


def _is_ack_id(request_id: Any) -> bool:
    return isinstance(request_id, int) and request_id >= 0


def _code_for_close(code: int) -> str:
    """An error code for a refusal that came without an error frame (not expected)."""
    codes: dict[int, ErrorCode] = {
        CloseCode.AUTH_REQUIRED: ErrorCode.AUTH_REQUIRED,
        CloseCode.AUTH_FAILED: ErrorCode.AUTH_FAILED,
        CloseCode.AUTH_TIMEOUT: ErrorCode.AUTH_TIMEOUT,
        CloseCode.BANNED: ErrorCode.BANNED,
        CloseCode.MEETING_ENDED: ErrorCode.MEETING_ENDED,
        CloseCode.DUPLICATE_SESSION: ErrorCode.DUPLICATE_SESSION,
        CloseCode.ROOM_FULL: ErrorCode.ROOM_FULL,
        CloseCode.GOING_AWAY: ErrorCode.SHUTTING_DOWN,
    }
    return codes.get(code, ErrorCode.INTERNAL_ERROR).value
