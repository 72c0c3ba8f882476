"""WebSocket framing for the server side of an open connection (RFC 6455 §5), sans I/O.

wsproto does the opening handshake; after it, this module reads client frames
and writes server frames. It exists for speed: in a relay benchmark, wsproto's
general-purpose frame parser was the largest single cost of the server. This
reader parses every complete frame in its buffer in one pass, unmasks a
payload with one big-integer XOR, and never copies a payload it will drop.

No extension is ever negotiated, so any RSV bit is a protocol error.

Limits are enforced at the header, before any payload is read: a control frame
announcing more than 125 bytes (or not final) and an unknown opcode are closed
with 1002 at once, and a data message whose announced size passes
:func:`hard_message_limit` is closed with 1009 instead of being read and dropped
byte by byte for as long as the client cares to trickle it.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

OP_CONTINUATION: Final = 0x0
OP_TEXT: Final = 0x1
OP_BINARY: Final = 0x2
OP_CLOSE: Final = 0x8
OP_PING: Final = 0x9
OP_PONG: Final = 0xA

_U16: Final = struct.Struct("!H")
_U64: Final = struct.Struct("!Q")
_HEADER_16: Final = struct.Struct("!BBH")
_HEADER_64: Final = struct.Struct("!BBQ")
_MAX_CONTROL_PAYLOAD: Final = 125
_MAX_CLOSE_REASON: Final = 123  # a close frame's payload is a 2-byte code and the reason
_OPCODES: Final = frozenset({OP_CONTINUATION, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG})
# Past the hard limit, a message is not worth reading even to drop it.
HARD_LIMIT_FACTOR: Final = 4
HARD_LIMIT_FLOOR: Final = 1 << 20


def hard_message_limit(max_message_bytes: int) -> int:
    """The size past which a message closes the connection (1009) rather than being dropped.

    ``max(4 * max_message_bytes, 1 MiB)``: the bound Hypercorn applies on the Quart route
    (see ``meshroom.server``), so both routes give up on the same messages.
    """
    return max(HARD_LIMIT_FACTOR * max_message_bytes, HARD_LIMIT_FLOOR)


@dataclass(slots=True)  # not frozen: one is made per message, and frozen init is slower
class Message:
    """A complete data message. ``text`` messages are valid UTF-8."""

    data: bytes
    text: bool


@dataclass(frozen=True, slots=True)
class Oversized:
    """A data message over the limit, read and dropped."""

    size: int


@dataclass(frozen=True, slots=True)
class Ping:
    payload: bytes


@dataclass(frozen=True, slots=True)
class Pong:
    payload: bytes


@dataclass(frozen=True, slots=True)
class Close:
    code: int | None
    reason: str


class ProtocolViolation(Exception):
    """The client broke RFC 6455 or the hard size limit; close with ``code``.

    1002 for a framing error, 1007 for invalid UTF-8, 1009 for a message announced
    past :func:`hard_message_limit`.
    """

    def __init__(self, reason: str, code: int = 1002) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


Event = Message | Oversized | Ping | Pong | Close


def unmask(payload: bytes | bytearray | memoryview, mask: bytes) -> bytes:
    """XOR a payload with its 4-byte masking key, all at once."""
    size = len(payload)
    if not size:
        return b""
    key = (mask * ((size >> 2) + 1))[:size]
    value = int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")
    return value.to_bytes(size, "little")


class FrameReader:
    """Turns bytes from a client into :data:`Event` objects.

    Args:
        max_message_bytes: a data message larger than this is dropped (its
            frames are still parsed) and reported as :class:`Oversized`; one
            announced past :func:`hard_message_limit` of it is a 1009
            :class:`ProtocolViolation`.
    """

    def __init__(self, max_message_bytes: int) -> None:
        self._buffer = bytearray()
        self._max = max_message_bytes
        self._hard = hard_message_limit(max_message_bytes)
        self._parts: list[bytes] = []
        self._size = 0
        self._opcode: int | None = None  # of the message being assembled
        self._dropping = False
        self._skip = 0  # bytes of an oversized frame still to come, to be dropped

    def feed(self, data: bytes) -> list[Event]:
        """Add bytes; return every event they complete.

        Raises:
            ProtocolViolation: the stream is not valid client framing; stop reading.
        """
        if self._skip:
            # The rest of an oversized frame streaming past: count it, keep none of it.
            if len(data) <= self._skip:
                self._skip -= len(data)
                return []
            data = data[self._skip :]
            self._skip = 0
        buffer = self._buffer
        buffer += data
        events: list[Event] = []
        offset = 0
        end = len(buffer)
        while end - offset >= 2:
            first, second = buffer[offset], buffer[offset + 1]
            if first & 0x70:
                raise ProtocolViolation("reserved bits set without a negotiated extension")
            if not second & 0x80:
                raise ProtocolViolation("client frames must be masked")
            opcode = first & 0x0F
            length = second & 0x7F
            # Judged on the first two bytes, before any payload is waited for: a peer
            # announcing a 1 TiB ping must not get to stream it.
            if opcode not in _OPCODES:
                raise ProtocolViolation(f"unknown opcode {opcode:#x}")
            if opcode >= OP_CLOSE and (not first & 0x80 or length > _MAX_CONTROL_PAYLOAD):
                raise ProtocolViolation("control frames must be whole and at most 125 bytes")
            header = 6
            if length == 126:
                header = 8
                if end - offset < 4:
                    break
                length = _U16.unpack_from(buffer, offset + 2)[0]
            elif length == 127:
                header = 14
                if end - offset < 10:
                    break
                length = _U64.unpack_from(buffer, offset + 2)[0]
                if length >> 63:
                    raise ProtocolViolation("frame length has its top bit set")
            if end - offset < header:
                break
            if opcode < OP_CLOSE and self._size + length > self._hard:
                raise ProtocolViolation(
                    f"message of {self._size + length} bytes is far over the limit", 1009
                )
            start = offset + header
            oversized = opcode < OP_CLOSE and self._size + length > self._max
            if end - start < length:
                if oversized:
                    # Never buffer an oversized frame: drop it as it streams in.
                    events.extend(self._drop_frame(first, opcode, length))
                    self._skip = length - (end - start)
                    offset = end
                break
            offset = start + length
            if oversized:
                events.extend(self._drop_frame(first, opcode, length))
                continue
            mask = bytes(buffer[start - 4 : start])
            if opcode >= OP_CLOSE:
                events.append(self._control(opcode, unmask(buffer[start:offset], mask)))
            else:
                event = self._data(first, opcode, length, buffer[start:offset], mask)
                if event is not None:
                    events.append(event)
        del buffer[:offset]
        return events

    def _drop_frame(self, first: int, opcode: int, length: int) -> list[Event]:
        self._check_sequence(opcode)
        self._dropping = True
        self._size += length
        self._parts.clear()
        if first & 0x80:
            return [self._finish_dropped()]
        return []

    def _check_sequence(self, opcode: int) -> None:
        if opcode == OP_CONTINUATION:
            if self._opcode is None:
                raise ProtocolViolation("continuation frame without a message to continue")
        elif opcode in (OP_TEXT, OP_BINARY):
            if self._opcode is not None:
                raise ProtocolViolation("new message before the previous one finished")
            self._opcode = opcode
        else:
            raise ProtocolViolation(f"unknown opcode {opcode:#x}")

    def _finish_dropped(self) -> Oversized:
        size = self._size
        self._opcode, self._size, self._dropping = None, 0, False
        return Oversized(size)

    def _data(
        self, first: int, opcode: int, length: int, payload: bytearray, mask: bytes
    ) -> Event | None:
        self._check_sequence(opcode)
        self._size += length
        if not self._dropping:
            self._parts.append(unmask(payload, mask))
        if not first & 0x80:
            return None
        if self._dropping:
            return self._finish_dropped()
        parts, self._parts = self._parts, []
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        text = self._opcode == OP_TEXT
        self._opcode, self._size = None, 0
        if text:
            try:
                data.decode("utf-8")
            except UnicodeDecodeError:
                raise ProtocolViolation("text message is not valid UTF-8", 1007) from None
        return Message(data, text)

    def _control(self, opcode: int, payload: bytes) -> Event:
        # FIN, size and opcode were checked at the header.
        if opcode == OP_PING:
            return Ping(payload)
        if opcode == OP_PONG:
            return Pong(payload)
        if not payload:
            return Close(None, "")
        if len(payload) == 1:
            raise ProtocolViolation("close frame with a one-byte payload")
        code = _U16.unpack_from(payload)[0]
        if code < 1000 or code in (1004, 1005, 1006, 1015) or 1016 <= code < 3000 or code > 4999:
            raise ProtocolViolation(f"invalid close code {code}")
        try:
            reason = payload[2:].decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolViolation("close reason is not valid UTF-8", 1007) from None
        return Close(code, reason)


def frame(opcode: int, payload: bytes) -> bytes:
    """One unmasked, final server frame."""
    size = len(payload)
    if size < 126:
        return bytes((0x80 | opcode, size)) + payload
    if size < 65536:
        return _HEADER_16.pack(0x80 | opcode, 126, size) + payload
    return _HEADER_64.pack(0x80 | opcode, 127, size) + payload


def text_frames(messages: Sequence[bytes]) -> bytes:
    """Several UTF-8 messages as consecutive text frames, ready for one write."""
    parts: list[bytes] = []
    for message in messages:
        size = len(message)
        if size < 126:
            parts.append(bytes((0x81, size)))
        elif size < 65536:
            parts.append(_HEADER_16.pack(0x81, 126, size))
        else:
            parts.append(_HEADER_64.pack(0x81, 127, size))
        parts.append(message)
    return b"".join(parts)


def close_reason(reason: str) -> bytes:
    """``reason`` as UTF-8, cut to the 123 bytes a close frame has room for.

    Cut on a character boundary: a close reason that is not valid UTF-8 makes a
    standard client fail the connection (1007/1006) instead of reporting our code.
    A lone surrogate (a str can hold one; UTF-8 cannot) becomes ``?``.
    """
    data = reason.encode("utf-8", "replace")
    if len(data) <= _MAX_CLOSE_REASON:
        return data
    cut = _MAX_CLOSE_REASON
    while data[cut] & 0xC0 == 0x80:  # data[cut] continues the character cut in two
        cut -= 1
    return data[:cut]


def close_frame(code: int, reason: str = "") -> bytes:
    return frame(OP_CLOSE, _U16.pack(code) + close_reason(reason))
