"""Message and frame size limits: max_message_bytes counts UTF-8 bytes on both signaling
transports; control frames and hopelessly oversized messages are refused at the header."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import trio
from _rawws import raw_client
from _signaling import raw_socket, receive_json, server_settings, start_server

from meshroom import Role
from meshroom.client import connect
from meshroom.transports import frames
from meshroom.transports.frames import (
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    FrameReader,
    ProtocolViolation,
    hard_message_limit,
)
from meshroom.transports.websocket import TIMED_OUT_CLOSE_SECONDS


@pytest.mark.parametrize("transport", ["standalone", "quart"])
async def test_a_message_over_the_limit_in_bytes_but_not_in_characters_is_refused(
    tmp_path, transport
) -> None:
    with trio.fail_after(15):
        async with trio.open_nursery() as nursery:
            settings = server_settings(tmp_path, max_message_bytes=1024, http_port=0)
            server = await start_server(nursery, settings)
            url = (
                server.url
                if transport == "standalone"
                else server.http_url.replace("http://", "ws://") + "/meetings"
            )
            meeting = await server.meeting()
            token = server.token(meeting, "alice", Role.HOST)
            async with raw_socket(url, token=token) as ws:
                assert (await receive_json(ws))["event"] == "room:joined"
                # 600 characters, 1200 bytes: over a 1024-byte limit.
                presence = {"event": "ping", "id": 1, "data": {}, "pad": "é" * 600}
                await ws.send_message(json.dumps(presence, ensure_ascii=False))
                error = await receive_json(ws)
                assert error["event"] == "error"
                assert error["data"]["code"] == "FRAME_TOO_LARGE"
                # 400 characters, 800 bytes: within it.
                await ws.send_message(
                    json.dumps({"event": "ping", "id": 2, "pad": "é" * 400}, ensure_ascii=False)
                )
                ack = await receive_json(ws)
                assert (ack["event"], ack["id"]) == ("ack", 2)
            server.server.request_shutdown()


# Limits judged at the header (issue 11 #4): nothing of a payload is waited for.


def _header(first: int, length: int) -> bytes:
    """A masked client frame header announcing ``length`` bytes, with no payload."""
    mask = b"\x01\x02\x03\x04"
    if length < 126:
        return bytes((first, 0x80 | length)) + mask
    if length < 65536:
        return struct.pack("!BBH", first, 0x80 | 126, length) + mask
    return struct.pack("!BBQ", first, 0x80 | 127, length) + mask


@pytest.mark.parametrize("opcode", [OP_CLOSE, OP_PING, OP_PONG])
@pytest.mark.parametrize("length", [126, 65535, 2**40, 2**63 - 1])
def test_a_control_frame_announcing_over_125_bytes_is_refused_at_its_first_two_bytes(
    opcode: int, length: int
) -> None:
    header = _header(0x80 | opcode, length)
    for size in (2, len(header)):  # the length code alone says "more than 125"
        with pytest.raises(ProtocolViolation) as info:
            FrameReader(1000).feed(header[:size])
        assert info.value.code == 1002


@pytest.mark.parametrize("first", [OP_PING, OP_CLOSE, 0x83, 0x8B, 0x0F])
def test_a_fragmented_control_frame_or_unknown_opcode_is_refused_at_the_header(first: int) -> None:
    with pytest.raises(ProtocolViolation) as info:
        FrameReader(1000).feed(_header(first, 5)[:2])
    assert info.value.code == 1002


@pytest.mark.parametrize("limit", [1, 1000, 64 * 1024, 10 * 2**20])
def test_a_message_announced_past_the_hard_limit_closes_with_1009_at_once(limit: int) -> None:
    hard = hard_message_limit(limit)
    assert hard == max(4 * limit, 2**20)
    # One frame announcing one byte more than the hard limit: refused on its header.
    with pytest.raises(ProtocolViolation) as info:
        FrameReader(limit).feed(_header(0x81, hard + 1))
    assert info.value.code == 1009
    # Fragments are counted together: the one that passes it is refused on its header.
    reader = FrameReader(limit)
    assert reader.feed(_header(0x01, hard // 2) + b"x" * (hard // 2)) == []
    with pytest.raises(ProtocolViolation) as info:
        reader.feed(_header(0x80, hard - hard // 2 + 1))
    assert info.value.code == 1009


def test_a_message_up_to_the_hard_limit_is_still_dropped_and_the_connection_kept() -> None:
    limit = 1000
    hard = hard_message_limit(limit)
    reader = FrameReader(limit)
    wire = _header(0x81, hard) + b"x" * hard + _header(0x81, 2) + b"ok"
    events = [e for i in range(0, len(wire), 65536) for e in reader.feed(wire[i : i + 65536])]
    ok = frames.unmask(b"ok", b"\x01\x02\x03\x04")
    assert events == [frames.Oversized(hard), frames.Message(ok, True)]


@pytest.mark.parametrize(
    ("after_auth", "header", "code"),
    [
        (False, _header(0x89, 2**40), 1002),  # a ping announcing 1 TiB, unauthenticated
        (False, _header(0x88, 126), 1002),  # an oversized close frame
        (True, _header(0x81, 2**40), 1009),  # a text frame announcing 1 TiB, joined
        (True, _header(0x82, hard_message_limit(1024) + 1), 1009),
    ],
    ids=["ping-1TiB-unauthenticated", "close-126", "text-1TiB-joined", "binary-hard-plus-1"],
)
async def test_the_listener_closes_at_the_header_without_waiting_for_the_payload(
    tmp_path: Path, after_auth: bool, header: bytes, code: int
) -> None:
    with trio.fail_after(15):
        async with trio.open_nursery() as nursery:
            server = await start_server(nursery, server_settings(tmp_path, max_message_bytes=1024))
            meeting = await server.meeting()
            async with raw_client(server.url) as client:
                if after_auth:
                    joined = await client.authenticate(server.token(meeting, "alice"))
                    assert joined["event"] == "room:joined"
                # The header alone, and then nothing: the server must answer anyway.
                await client.stream.send_all(header)
                assert await client.frames_until_closed() == []
                assert client.close_code == code
            server.server.request_shutdown()


@pytest.mark.parametrize(
    "header",
    [_header(0x89, 2**40), _header(0x81, 2**40), _header(0x01, 5)[:2].replace(b"\x01", b"\x03")],
    ids=["ping-1TiB", "text-1TiB", "reserved-opcode"],
)
async def test_a_client_that_breaks_the_protocol_and_then_stays_silent_is_cut_off(
    tmp_path: Path, header: bytes
) -> None:
    """It gets its close frame, and TIMED_OUT_CLOSE_SECONDS to answer it; not forever."""
    with trio.fail_after(15):
        async with trio.open_nursery() as nursery:
            server = await start_server(nursery, server_settings(tmp_path))
            meeting = await server.meeting()
            async with (
                connect(server.url, server.token(meeting, "bob")) as bob,
                raw_client(server.url) as client,
            ):
                joined = await client.authenticate(server.token(meeting, "alice"))
                assert joined["event"] == "room:joined"
                await client.stream.send_all(header)
                start = trio.current_time()
                # Read the close frame, never answer it: the server must hang up anyway.
                while await client.stream.receive_some(65536):
                    pass
                assert trio.current_time() - start < TIMED_OUT_CLOSE_SECONDS + 2
                left = await bob.wait_for("peer:left", empId="alice")
                assert left.data["reason"] == "disconnected"
            server.server.request_shutdown()
