"""max_message_bytes counts UTF-8 bytes, on both signaling transports."""

from __future__ import annotations

import json
import socket

import pytest
import trio
from _signaling import raw_socket, receive_json, server_settings, start_server

from meshroom import Role


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("transport", ["standalone", "quart"])
async def test_a_message_over_the_limit_in_bytes_but_not_in_characters_is_refused(
    tmp_path, transport
) -> None:
    with trio.fail_after(15):
        async with trio.open_nursery() as nursery:
            settings = server_settings(tmp_path, max_message_bytes=1024, http_port=free_port())
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
