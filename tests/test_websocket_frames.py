"""The standalone listener frames outgoing messages itself; a real WebSocket client parses them."""

import pytest
import trio
import trio.testing
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, Request, TextMessage

from meshroom.transports.websocket import WebSocketConnection


async def _server_and_client() -> tuple[WebSocketConnection, WSConnection, trio.abc.Stream]:
    server_stream, client_stream = trio.testing.memory_stream_pair()
    client = WSConnection(ConnectionType.CLIENT)
    server = WSConnection(ConnectionType.SERVER)
    server.receive_data(client.send(Request(host="localhost", target="/meetings")))
    assert isinstance(next(server.events()), Request)
    client.receive_data(server.send(AcceptConnection()))
    assert isinstance(next(client.events()), AcceptConnection)
    conn = WebSocketConnection(server_stream, server, remote="test")
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
