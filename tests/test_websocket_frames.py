"""The standalone listener frames outgoing messages itself; a real WebSocket client parses them."""

import json
import os
import struct
from urllib.parse import urlsplit

import pytest
import trio
import trio.testing
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, Request, TextMessage

from meshroom.transports.frames import unmask
from meshroom.transports.websocket import WebSocketConnection


async def _server_and_client() -> tuple[WebSocketConnection, WSConnection, trio.abc.Stream]:
    server_stream, client_stream = trio.testing.memory_stream_pair()
    client = WSConnection(ConnectionType.CLIENT)
    server = WSConnection(ConnectionType.SERVER)
    server.receive_data(client.send(Request(host="localhost", target="/meetings")))
    assert isinstance(next(server.events()), Request)
    client.receive_data(server.send(AcceptConnection()))
    assert isinstance(next(client.events()), AcceptConnection)
    conn = WebSocketConnection(server_stream, remote="test")
    return conn, client, client_stream


async def _read_messages(client: WSConnection, stream: trio.abc.Stream, count: int) -> list[str]:
    messages: list[str] = []
    parts: list[str] = []
    while len(messages) < count:
        client.receive_data(await stream.receive_some(1 << 20))
        for event in client.events():
            assert isinstance(event, TextMessage)
            parts.append(event.data)
            if event.message_finished:
                messages.append("".join(parts))
                parts.clear()
    return messages


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 70000, 300_000])
async def test_text_frames_of_every_length_class_parse(size: int) -> None:
    conn, client, stream = await _server_and_client()
    payload = "é" * (size // 2) + "x" * (size % 2)  # multi-byte UTF-8 on purpose
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(conn.send, [payload.encode(), b'{"a":1}'])
            received = await _read_messages(client, stream, 2)
    assert received == [payload, '{"a":1}']


def _masked_text(payload: bytes) -> bytes:
    """A client text frame, masked as RFC 6455 requires."""
    mask = os.urandom(4)
    size = len(payload)
    header = bytes((0x81, 0x80 | size)) if size < 126 else struct.pack("!BBH", 0x81, 0xFE, size)
    return header + mask + unmask(payload, mask)


async def test_a_frame_sent_right_behind_the_upgrade_request_is_read(server) -> None:
    """Clients may pipeline their first frame with the handshake; it must not be lost."""
    meeting = await server.meeting()
    auth = {"event": "auth", "id": 7, "data": {"meetingAccessToken": server.token(meeting, "al")}}
    url = urlsplit(server.url)
    client = WSConnection(ConnectionType.CLIENT)
    request = client.send(Request(host=url.netloc, target=url.path))
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream(url.hostname, url.port)
        await stream.send_all(request + _masked_text(json.dumps(auth).encode()))
        messages: list[str] = []
        while not messages:
            client.receive_data(await stream.receive_some(65536))
            messages.extend(e.data for e in client.events() if isinstance(e, TextMessage))
        first = json.loads(messages[0])
        assert (first["event"], first["id"]) == ("room:joined", 7)
        await stream.aclose()
