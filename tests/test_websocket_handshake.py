"""The listener writes its own 101 answer; it must be wsproto's, byte for byte.

accept_websocket still parses and checks the request with wsproto (h11 underneath); only
the answer is filled in from a template, because h11's serializer cost more per join than
anything else in the handshake. These tests hold the template to what wsproto would send
for the same request, over the requests a client can make: any key, any extensions and
subprotocols offered (meshroom takes none, as before), and a client that sends its first
frames right behind the request.
"""

from __future__ import annotations

import base64

import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, Request

from meshroom.transports.websocket import accept_websocket

_TOKEN_CHARS = st.text(
    alphabet=st.sampled_from("abcdefghijklmnopqrstuvwxyz0123456789-_."), min_size=1, max_size=12
)


async def _served_answer(request: bytes) -> tuple[bytes, bytes]:
    """What accept_websocket writes back for ``request``, and the bytes it kept as frames."""
    server_stream, client_stream = trio.testing.memory_stream_pair()
    accepted = None

    async def accept() -> None:
        nonlocal accepted
        accepted = await accept_websocket(
            server_stream, path="/meetings", remote="test", received=request
        )

    async with trio.open_nursery() as nursery:
        nursery.start_soon(accept)
        answer = b""
        while b"\r\n\r\n" not in answer:
            answer += await client_stream.receive_some(65536)
    assert accepted is not None
    conn = accepted[0]
    return answer, conn._initial


def _wsproto_answer(request: bytes) -> bytes:
    server = WSConnection(ConnectionType.SERVER)
    server.receive_data(request)
    event = next(server.events())
    assert isinstance(event, Request)
    return server.send(AcceptConnection())


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    key=st.binary(min_size=16, max_size=16).map(lambda b: base64.b64encode(b).decode()),
    extensions=st.lists(_TOKEN_CHARS, max_size=3),
    subprotocols=st.lists(_TOKEN_CHARS, max_size=3),
    trailing=st.binary(max_size=40),
)
def test_the_101_is_wsprotos_for_every_key_and_offer(
    key: str, extensions: list[str], subprotocols: list[str], trailing: bytes
) -> None:
    head = (
        "GET /meetings?meetingAccessToken=t HTTP/1.1\r\nHost: test\r\n"
        "Upgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        + (f"Sec-WebSocket-Extensions: {', '.join(extensions)}\r\n" if extensions else "")
        + (f"Sec-WebSocket-Protocol: {', '.join(subprotocols)}\r\n" if subprotocols else "")
        + "\r\n"
    ).encode()
    answer, initial = trio.run(_served_answer, head + trailing)
    assert answer == _wsproto_answer(head)
    assert initial == trailing  # what came behind the request goes to the frame reader


def test_the_101_answers_the_rfc_sample_key() -> None:
    # RFC 6455 section 1.3: this key must be answered with this accept value.
    head = (
        b"GET /meetings HTTP/1.1\r\nHost: server.example.com\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        b"Sec-WebSocket-Version: 13\r\n\r\n"
    )
    answer, _ = trio.run(_served_answer, head)
    assert answer == (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
    )
