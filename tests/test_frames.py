"""meshroom's own client-frame reader against frames a real WebSocket client (wsproto) writes."""

from __future__ import annotations

import itertools
import os
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from wsproto.connection import Connection, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Ping, TextMessage

from meshroom.transports import frames
from meshroom.transports.frames import FrameReader, ProtocolViolation


def client() -> Connection:
    return Connection(ConnectionType.CLIENT)


def feed_in_chunks(reader: FrameReader, data: bytes, cuts: list[int]) -> list[frames.Event]:
    events: list[frames.Event] = []
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    for start, stop in itertools.pairwise(points):
        events.extend(reader.feed(data[start:stop]))
    return events


messages = st.lists(
    st.one_of(st.text(max_size=300), st.binary(max_size=300)), min_size=1, max_size=8
)


@settings(max_examples=200, deadline=None)
@given(messages, st.lists(st.integers(min_value=0, max_value=5000), max_size=12), st.booleans())
def test_reads_what_a_client_wrote_however_it_is_split(payloads, cuts, fragment):
    sender = client()
    wire = b""
    for payload in payloads:
        kind = TextMessage if isinstance(payload, str) else BytesMessage
        if fragment and len(payload) > 1:
            half = len(payload) // 2
            wire += sender.send(kind(data=payload[:half], message_finished=False))
            wire += sender.send(kind(data=payload[half:], message_finished=True))
        else:
            wire += sender.send(kind(data=payload))
    events = feed_in_chunks(FrameReader(10_000), wire, cuts)
    assert events == [
        frames.Message(p.encode() if isinstance(p, str) else p, isinstance(p, str))
        for p in payloads
    ]


def test_control_frames_between_fragments() -> None:
    sender = client()
    wire = (
        sender.send(TextMessage(data="hello ", message_finished=False))
        + sender.send(Ping(payload=b"are you there"))
        + sender.send(TextMessage(data="world", message_finished=True))
        + sender.send(CloseConnection(code=4000, reason="bye"))
    )
    assert FrameReader(100).feed(wire) == [
        frames.Ping(b"are you there"),
        frames.Message(b"hello world", True),
        frames.Close(4000, "bye"),
    ]


@pytest.mark.parametrize("chunk", [1, 7, 4096, 1 << 20])
def test_an_oversized_message_is_dropped_and_the_next_one_read(chunk: int) -> None:
    sender = client()
    wire = sender.send(TextMessage(data="x" * 100_000)) + sender.send(TextMessage(data="ok"))
    reader = FrameReader(1000)
    events = [e for i in range(0, len(wire), chunk) for e in reader.feed(wire[i : i + chunk])]
    assert events == [frames.Oversized(100_000), frames.Message(b"ok", True)]
    assert len(reader._buffer) == 0


def test_an_oversized_fragmented_message_is_dropped_whole() -> None:
    sender = client()
    wire = b"".join(
        sender.send(TextMessage(data="y" * 600, message_finished=last))
        for last in (False, False, True)
    ) + sender.send(TextMessage(data="next"))
    assert FrameReader(1000).feed(wire) == [frames.Oversized(1800), frames.Message(b"next", True)]


def _raw(first: int, payload: bytes, *, masked: bool = True) -> bytes:
    mask = os.urandom(4)
    header = bytes((first, (0x80 if masked else 0) | len(payload)))
    return header + (mask + frames.unmask(payload, mask) if masked else payload)


@pytest.mark.parametrize(
    ("wire", "code"),
    [
        (_raw(0x81, b"hi", masked=False), 1002),  # unmasked client frame
        (_raw(0xC1, b"hi"), 1002),  # RSV1 without an extension
        (_raw(0x80, b"hi"), 1002),  # continuation of nothing
        (_raw(0x83, b"hi"), 1002),  # reserved opcode
        (_raw(0x09, b"ping"), 1002),  # fragmented control frame
        (_raw(0x81, b"\xff\xfe"), 1007),  # invalid UTF-8 text
        (_raw(0x88, b"\x03"), 1002),  # one-byte close payload
        (_raw(0x88, struct.pack("!H", 1005)), 1002),  # reserved close code
        (_raw(0x01, b"a") + _raw(0x81, b"b"), 1002),  # new message inside a fragmented one
    ],
)
def test_protocol_violations(wire: bytes, code: int) -> None:
    with pytest.raises(ProtocolViolation) as info:
        FrameReader(1000).feed(wire)
    assert info.value.code == code


def test_server_frames_parse_in_a_real_client() -> None:
    receiver = client()
    big = b"z" * 70_000
    receiver.receive_data(
        frames.text_frames([b"a", b"b" * 200, big]) + frames.close_frame(4005, "kicked")
    )
    events = list(receiver.events())
    assert [e.data for e in events[:3]] == ["a", "b" * 200, big.decode()]
    assert isinstance(events[3], CloseConnection)
    assert (events[3].code, events[3].reason) == (4005, "kicked")
