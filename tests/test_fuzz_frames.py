"""Fuzzing the client-frame reader: hypothesis-built byte streams, with a model of what
each must produce, fed to FrameReader directly and sent over the real listener.

A stream is a list of items: data messages (text or binary, cut into fragments at any
byte, so UTF-8 characters are split at every boundary), with ping and pong frames
interleaved between the fragments, every frame with its own mask; then optionally one
hostile item (a violation the reader must refuse with its close code), or a frame whose
header announces a payload that never comes. The stream is cut into arbitrary chunks.
"""

from __future__ import annotations

import itertools
import json
import os
import struct
from dataclasses import dataclass, field
from typing import Any

import trio
import trio.testing
from _rawws import handshake
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from wsproto.events import CloseConnection, Pong, TextMessage

from meshroom.core.connection import ConnectionClosed, MessageTooLarge
from meshroom.transports import frames
from meshroom.transports.frames import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONTINUATION,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    FrameReader,
    ProtocolViolation,
    hard_message_limit,
)
from meshroom.transports.websocket import Upgrade, WebSocketConnection, serve_websocket

LIMIT = 200  # small, so that oversized messages are common


def wire_frame(
    opcode: int,
    payload: bytes,
    *,
    fin: bool = True,
    mask: bytes | None = None,
    rsv: int = 0,
    announce: int | None = None,
) -> bytes:
    """One client frame. ``mask=b""`` leaves it unmasked; ``announce`` lies about its length."""
    length = len(payload) if announce is None else announce
    first = (0x80 if fin else 0) | rsv | opcode
    masked = mask != b""
    bit = 0x80 if masked else 0
    if length < 126:
        header = bytes((first, bit | length))
    elif length < 65536:
        header = struct.pack("!BBH", first, bit | 126, length)
    else:
        header = struct.pack("!BBQ", first, bit | 127, length)
    if not masked:
        return header + payload
    key = mask if mask is not None else os.urandom(4)
    return header + key + frames.unmask(payload, key)


# Streams and what they must produce


@dataclass
class Stream:
    wire: bytes = b""
    expected: list[frames.Event] = field(default_factory=list)  # in order
    violation: int | None = None  # the close code the stream must end in, if hostile
    # What the listener's echo handler receives: bytes, str, or ("oversized", size).
    messages: list[Any] = field(default_factory=list)


controls = st.tuples(st.sampled_from([OP_PING, OP_PONG]), st.binary(max_size=125))
masks = st.binary(min_size=4, max_size=4)


@st.composite
def message_items(draw: st.DrawFn) -> tuple[bytes, bool, bytes, list[int], list[Any]]:
    text = draw(st.booleans())
    payload = draw(st.text(max_size=120)).encode() if text else draw(st.binary(max_size=LIMIT + 60))
    if text and draw(st.booleans()):
        payload = payload * 3  # sometimes over the limit, in characters of any width
    cuts = sorted(set(draw(st.lists(st.integers(0, max(len(payload), 1)), max_size=4))))
    between = draw(st.lists(st.one_of(st.none(), controls), min_size=len(cuts), max_size=len(cuts)))
    return payload, text, draw(masks), cuts, between


def build(items: list[tuple[bytes, bool, bytes, list[int], list[Any]]]) -> Stream:
    stream = Stream()
    for payload, text, mask, cuts, between in items:
        points = [0, *(c for c in cuts if 0 < c < len(payload)), len(payload)]
        pieces = [payload[a:b] for a, b in itertools.pairwise(points)] or [b""]
        for n, piece in enumerate(pieces):
            opcode = (OP_TEXT if text else OP_BINARY) if n == 0 else OP_CONTINUATION
            stream.wire += wire_frame(opcode, piece, fin=n == len(pieces) - 1, mask=mask)
            control = between[n] if n < len(between) else None
            if control is not None and n < len(pieces) - 1:  # between fragments
                op, data = control
                stream.wire += wire_frame(op, data)
                stream.expected.append(frames.Ping(data) if op == OP_PING else frames.Pong(data))
        if len(payload) > LIMIT:
            stream.expected.append(frames.Oversized(len(payload)))
            stream.messages.append(("oversized", len(payload)))
        else:
            stream.expected.append(frames.Message(payload, text))
            stream.messages.append(payload.decode() if text else payload)
    return stream


# One violation each, with the close code it must get.
HOSTILE = {
    "unmasked": (lambda: wire_frame(OP_TEXT, b"hi", mask=b""), 1002),
    "rsv1": (lambda: wire_frame(OP_TEXT, b"hi", rsv=0x40), 1002),
    "rsv3": (lambda: wire_frame(OP_BINARY, b"hi", rsv=0x10), 1002),
    "reserved-data-opcode": (lambda: wire_frame(0x3, b"hi"), 1002),
    "reserved-control-opcode": (lambda: wire_frame(0xB, b"hi"), 1002),
    "continuation-of-nothing": (lambda: wire_frame(OP_CONTINUATION, b"hi"), 1002),
    "message-inside-a-message": (
        lambda: wire_frame(OP_TEXT, b"a", fin=False) + wire_frame(OP_TEXT, b"b"),
        1002,
    ),
    "fragmented-ping": (lambda: wire_frame(OP_PING, b"p", fin=False), 1002),
    "ping-announcing-126": (lambda: wire_frame(OP_PING, b"", announce=126)[:4], 1002),
    "pong-announcing-1TiB": (lambda: wire_frame(OP_PONG, b"", announce=2**40)[:10], 1002),
    "close-one-byte": (lambda: wire_frame(OP_CLOSE, b"\x03"), 1002),
    "close-reserved-code": (lambda: wire_frame(OP_CLOSE, struct.pack("!H", 1005)), 1002),
    "close-code-5000": (lambda: wire_frame(OP_CLOSE, struct.pack("!H", 5000)), 1002),
    "invalid-utf8-text": (lambda: wire_frame(OP_TEXT, "é".encode()[:1] + b"x"), 1007),
    "utf8-cut-at-the-end": (lambda: wire_frame(OP_TEXT, "会".encode()[:2]), 1007),
    "invalid-utf8-close-reason": (
        lambda: wire_frame(OP_CLOSE, struct.pack("!H", 1000) + b"\xff"),
        1007,
    ),
    "past-the-hard-limit": (
        lambda: wire_frame(OP_BINARY, b"", announce=hard_message_limit(LIMIT) + 1)[:14],
        1009,
    ),
    "fragments-past-the-hard-limit": (
        lambda: (
            wire_frame(OP_TEXT, b"", fin=False, announce=hard_message_limit(LIMIT))
            + b"x" * hard_message_limit(LIMIT)
            + wire_frame(OP_CONTINUATION, b"", announce=1)[:6]
        ),
        1009,
    ),
}


@st.composite
def streams(draw: st.DrawFn, *, hostile: bool) -> Stream:
    stream = build(draw(st.lists(message_items(), max_size=6)))
    if hostile:
        make, code = HOSTILE[draw(st.sampled_from(sorted(HOSTILE)))]
        stream.wire += make()
        stream.violation = code
    return stream


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


cut_lists = st.lists(st.integers(0, 10_000), max_size=20)


def fuzz(examples: int) -> settings:
    return settings(
        max_examples=examples,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


# Against FrameReader


def _feed_all(reader: FrameReader, chunks: list[bytes]) -> tuple[list[frames.Event], int | None]:
    events: list[frames.Event] = []
    for chunk in chunks:
        try:
            events.extend(reader.feed(chunk))
        except ProtocolViolation as exc:
            return events, exc.code
        # What it holds is bounded whatever the stream: a message within the limit
        # (buffered, or assembled in parts) and what one chunk added.
        held = len(reader._buffer) + sum(map(len, reader._parts))
        assert held <= 2 * LIMIT + 14 + len(chunk)
    return events, None


@fuzz(300)
@given(streams(hostile=False), cut_lists)
def test_fuzz_reader_produces_exactly_the_modelled_events(stream: Stream, cuts: list[int]) -> None:
    events, code = _feed_all(FrameReader(LIMIT), chunked(stream.wire, cuts))
    assert code is None
    assert events == stream.expected


@fuzz(300)
@given(streams(hostile=True), cut_lists)
def test_fuzz_reader_refuses_each_violation_with_its_code(stream: Stream, cuts: list[int]) -> None:
    events, code = _feed_all(FrameReader(LIMIT), chunked(stream.wire, cuts))
    assert code == stream.violation
    # Events of the same chunk as the violation are lost with the connection; the
    # ones before it are exactly the model's.
    assert events == stream.expected[: len(events)]


@fuzz(200)
@given(streams(hostile=False), st.integers(1, 2**63 - 1), st.sampled_from([OP_TEXT, OP_BINARY]))
def test_fuzz_a_length_announced_but_never_sent_is_just_waited_for(
    stream: Stream, length: int, opcode: int
) -> None:
    # Within the hard limit it is waited for (or dropped as it comes, if over the limit);
    # past it, refused at once with 1009. Nothing else, and nothing before it is lost.
    reader = FrameReader(LIMIT)
    assert reader.feed(stream.wire) == stream.expected
    header = wire_frame(opcode, b"", announce=length)
    if length > hard_message_limit(LIMIT):
        try:
            reader.feed(header)
        except ProtocolViolation as exc:
            assert exc.code == 1009
        else:
            raise AssertionError("a frame past the hard limit was accepted")
    else:
        # (An oversized final frame is reported on its header: it will be dropped anyway.)
        assert reader.feed(header) == ([frames.Oversized(length)] if length > LIMIT else [])
        assert reader.feed(b"x" * min(length - 1, 1000)) == []


EVENT_TYPES = (frames.Message, frames.Oversized, frames.Ping, frames.Pong, frames.Close)


def _masked(data: bytes) -> bytes:
    # Random bytes, but with the mask bit set in the second, so that they get past it.
    return data[:1] + bytes((data[1] | 0x80,)) + data[2:] if len(data) > 1 else data


@fuzz(500)
@given(st.lists(st.binary(max_size=300).map(_masked), max_size=8))
def test_fuzz_reader_raises_only_protocol_violations_on_arbitrary_bytes(
    chunks: list[bytes],
) -> None:
    reader = FrameReader(LIMIT)
    try:
        for chunk in chunks:
            for event in reader.feed(chunk):
                assert isinstance(
                    event,
                    frames.Message | frames.Oversized | frames.Ping | frames.Pong | frames.Close,
                )
    except ProtocolViolation as exc:
        assert exc.code in (1002, 1007, 1009)


# Over the real listener on loopback: serve_websocket with an echo handler


async def _echo(conn: WebSocketConnection, upgrade: Upgrade) -> None:
    while True:
        try:
            message = await conn.receive()
        except MessageTooLarge as exc:
            await conn.send([json.dumps({"oversized": exc.size}).encode()])
            continue
        except ConnectionClosed:
            return
        reply = {"binary": message.hex()} if isinstance(message, bytes) else {"text": message}
        await conn.send([json.dumps(reply).encode()])


def _echoed(message: Any) -> dict[str, Any]:
    if isinstance(message, tuple):
        return {"oversized": message[1]}
    if isinstance(message, bytes):
        return {"binary": message.hex()}
    return {"text": message}


async def _over_the_listener(stream: Stream, cuts: list[int]) -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
            port = listeners[0].socket.getsockname()[1]
            await nursery.start(
                lambda task_status: serve_websocket(
                    _echo, listeners, max_message_bytes=LIMIT, task_status=task_status
                )
            )
            tcp = await trio.open_tcp_stream("127.0.0.1", port)
            client = await handshake(tcp, f"ws://127.0.0.1:{port}/meetings")
            closing = b"" if stream.violation else wire_frame(OP_CLOSE, struct.pack("!H", 1000))
            for chunk in chunked(stream.wire + closing, cuts):
                try:
                    await tcp.send_all(chunk)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    break  # refused before the rest was sent
            echoes, pongs = [], []
            while True:
                event = await client.next_event()
                if event is None or isinstance(event, CloseConnection):
                    break
                if isinstance(event, TextMessage):
                    echoes.append(json.loads(event.data))
                elif isinstance(event, Pong):
                    pongs.append(bytes(event.payload))
            await tcp.aclose()
            nursery.cancel_scope.cancel()
    expected = [_echoed(m) for m in stream.messages]
    pings = [e.payload for e in stream.expected if isinstance(e, frames.Ping)]
    if stream.violation is None:
        assert client.close_code == 1000  # our close, echoed
        assert echoes == expected
        assert pongs == pings
    else:
        assert client.close_code == stream.violation
        assert echoes == expected[: len(echoes)]
        assert pongs == pings[: len(pongs)]


@fuzz(100)
@given(st.data(), cut_lists)
def test_fuzz_the_listener_answers_every_stream_as_modelled(data: Any, cuts: list[int]) -> None:
    stream = data.draw(streams(hostile=data.draw(st.booleans())))
    trio.run(_over_the_listener, stream, cuts)
