"""Hostile input at the Engine.IO / Socket.IO layer: each a clear error; the server stays up.

These speak raw HTTP to the endpoint (httpx) so that they can send what no client
library would. After each, a fresh session still works.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import trio
import trio.testing
from trio_websocket import ConnectionClosed, open_websocket_url

from meshroom import Role

from .harness import SioServer, socketio_server

BASE = "/socket.io/"


async def _handshake(client: httpx.AsyncClient) -> tuple[str, dict[str, object]]:
    reply = await client.get(BASE, params={"EIO": "4", "transport": "polling"})
    assert reply.status_code == 200, reply.text
    assert reply.text.startswith("0")
    opened = json.loads(reply.text[1:])
    return str(opened["sid"]), opened


def _params(sid: str) -> dict[str, str]:
    return {"EIO": "4", "transport": "polling", "sid": sid}


async def _still_serves(sio: SioServer, client: httpx.AsyncClient) -> None:
    """A new session joins a meeting: the endpoint survived."""
    meeting = await sio.native.meeting(host="h")
    sid, _ = await _handshake(client)
    auth = json.dumps({"meetingAccessToken": sio.native.token(meeting, "h", Role.HOST)})
    reply = await client.post(BASE, params=_params(sid), content=f"40/meetings,{auth}")
    assert reply.text == "ok"
    reply = await client.get(BASE, params=_params(sid))
    assert reply.text.startswith('40/meetings,{"sid":'), reply.text
    assert '42/meetings,["room:joined"' in reply.text


async def test_handshake_refusals_carry_engineio_error_bodies(tmp_path: Path) -> None:
    async with socketio_server(tmp_path) as sio, httpx.AsyncClient(base_url=sio.url) as client:
        cases = [
            ({"EIO": "3", "transport": "polling"}, 400, 5, "Unsupported protocol version"),
            ({"EIO": "4", "transport": "carrier-pigeon"}, 400, 0, "Transport unknown"),
            ({"EIO": "4", "transport": "polling", "sid": "nope"}, 400, 1, "Session ID unknown"),
        ]
        for params, status, code, message in cases:
            reply = await client.get(BASE, params=params)
            assert reply.status_code == status
            assert reply.json() == {"code": code, "message": message}
        reply = await client.post(BASE, params={"EIO": "4", "transport": "polling"}, content="4x")
        assert reply.status_code == 400 and reply.json()["code"] == 2  # bad handshake method
        await _still_serves(sio, client)


async def test_opening_packet_follows_the_heartbeat_settings(tmp_path: Path) -> None:
    async with socketio_server(tmp_path, heartbeat_interval=7, heartbeat_timeout=3) as sio:
        async with httpx.AsyncClient(base_url=sio.url) as client:
            _, opened = await _handshake(client)
        assert opened["pingInterval"] == 7000 and opened["pingTimeout"] == 3000
        assert opened["upgrades"] == ["websocket"]
        assert opened["maxPayload"] == sio.native.settings.max_message_bytes + 1024


async def test_malformed_packets_end_the_session_with_400(tmp_path: Path) -> None:
    async with socketio_server(tmp_path) as sio, httpx.AsyncClient(base_url=sio.url) as client:
        for body in [
            "",
            "9",
            "4",
            '40/meetings,["not an object"]',
            "4{",
            "b!!!notbase64",
            "\x1e\x1e",
        ]:
            sid, _ = await _handshake(client)
            reply = await client.post(BASE, params=_params(sid), content=body.encode())
            assert reply.status_code == 400, body
            assert reply.json()["code"] == 3  # Bad request
            reply = await client.get(BASE, params=_params(sid))
            assert reply.status_code == 400 and reply.json()["code"] == 1, body  # session gone
        await _still_serves(sio, client)


async def test_packets_before_connect_and_wrong_namespace(tmp_path: Path) -> None:
    async with socketio_server(tmp_path) as sio, httpx.AsyncClient(base_url=sio.url) as client:
        # An EVENT before any CONNECT: the session ends, as socket.io does.
        sid, _ = await _handshake(client)
        reply = await client.post(BASE, params=_params(sid), content='42/meetings,["ping",{}]')
        assert reply.status_code == 400
        # CONNECT to a namespace meshroom does not serve: the standard answer.
        for namespace in ("/", "/admin"):
            sid, _ = await _handshake(client)
            packet = "40" if namespace == "/" else f"40{namespace},"
            assert (await client.post(BASE, params=_params(sid), content=packet)).text == "ok"
            reply = await client.get(BASE, params=_params(sid))
            prefix = "44" if namespace == "/" else f"44{namespace},"
            assert reply.text == prefix + '{"message":"Invalid namespace"}'
        await _still_serves(sio, client)


async def test_huge_polling_body_is_413(tmp_path: Path) -> None:
    async with socketio_server(tmp_path) as sio, httpx.AsyncClient(base_url=sio.url) as client:
        sid, opened = await _handshake(client)
        body = "4" + "x" * (int(str(opened["maxPayload"])) + 1)
        reply = await client.post(BASE, params=_params(sid), content=body.encode())
        assert reply.status_code == 413
        reply = await client.get(BASE, params=_params(sid))
        assert reply.status_code == 400 and reply.json()["code"] == 1
        await _still_serves(sio, client)


async def test_a_second_concurrent_get_is_400(tmp_path: Path) -> None:
    async with (
        socketio_server(tmp_path) as sio,
        httpx.AsyncClient(base_url=sio.url) as first,
        httpx.AsyncClient(base_url=sio.url) as second,
    ):
        sid, _ = await _handshake(first)
        answers: list[httpx.Response] = []

        async def pending_get() -> None:
            answers.append(await first.get(BASE, params=_params(sid)))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(pending_get)
            # Wait until the first GET is parked on the server (observable: its flag).
            await trio.testing.wait_all_tasks_blocked(cushion=0.02)
            assert sio.endpoint._sessions[sid].state.get_in_flight
            overlap = await second.get(BASE, params=_params(sid))
            assert overlap.status_code == 400 and overlap.json()["code"] == 3
        # The session is over: the parked GET was released with an error too.
        assert answers[0].status_code == 400
        await _still_serves(sio, second)


async def test_binary_packets_are_refused_clearly(tmp_path: Path) -> None:
    async with socketio_server(tmp_path) as sio, httpx.AsyncClient(base_url=sio.url) as client:
        meeting = await sio.native.meeting(host="h")
        sid, _ = await _handshake(client)
        auth = json.dumps({"meetingAccessToken": sio.native.token(meeting, "h", Role.HOST)})
        await client.post(BASE, params=_params(sid), content=f"40/meetings,{auth}")
        reply = await client.get(BASE, params=_params(sid))
        assert "room:joined" in reply.text
        # A BINARY_EVENT with one attachment and an ack id, then the attachment (base64).
        body = '451-/meetings,7["signal:offer",{"_placeholder":true,"num":0}]\x1ebAQID'
        assert (await client.post(BASE, params=_params(sid), content=body)).text == "ok"
        reply = await client.get(BASE, params=_params(sid))
        assert reply.text.startswith("43/meetings,7[")
        error = json.loads(reply.text[len("43/meetings,7") :])[0]
        assert error["code"] == "BINARY_NOT_SUPPORTED"
        # A stray binary message: an "error" event; the session carries on.
        assert (await client.post(BASE, params=_params(sid), content="bAQID")).text == "ok"
        reply = await client.get(BASE, params=_params(sid))
        assert reply.text.startswith('42/meetings,["error",{"code":"BINARY_NOT_SUPPORTED"')
        assert (
            await client.post(BASE, params=_params(sid), content='42/meetings,3["ping",{}]')
        ).text == "ok"
        reply = await client.get(BASE, params=_params(sid))
        assert reply.text.startswith("43/meetings,3[{")


async def test_websocket_with_unknown_sid_and_garbage(tmp_path: Path) -> None:
    async with socketio_server(tmp_path) as sio, httpx.AsyncClient(base_url=sio.url) as client:
        ws_base = f"ws://127.0.0.1:{sio.port}{BASE}?EIO=4&transport=websocket"
        try:
            async with open_websocket_url(ws_base + "&sid=unknown"):
                raise AssertionError("the upgrade was accepted")
        except Exception as exc:  # trio_websocket: HandshakeError with the 400 body
            assert "400" in repr(exc) or "Session ID unknown" in repr(exc), repr(exc)
        async with open_websocket_url(ws_base) as ws:
            opened = await ws.get_message()
            assert str(opened).startswith("0{")
            await ws.send_message("garbage")
            try:
                while True:
                    await ws.get_message()
            except ConnectionClosed as closed:
                assert closed.reason.code == 1002
        await _still_serves(sio, client)


async def test_vanished_polling_session_is_cleaned_up_on_the_heartbeat_deadline(
    tmp_path: Path,
) -> None:
    settings = {"heartbeat_interval": 0.2, "heartbeat_timeout": 0.2}
    async with (
        socketio_server(tmp_path, **settings) as sio,
        httpx.AsyncClient(base_url=sio.url) as client,
    ):
        meeting = await sio.native.meeting(host="h")
        sid, _ = await _handshake(client)
        auth = json.dumps({"meetingAccessToken": sio.native.token(meeting, "h", Role.HOST)})
        await client.post(BASE, params=_params(sid), content=f"40/meetings,{auth}")
        assert "room:joined" in (await client.get(BASE, params=_params(sid))).text
        # The client stops polling: nobody fetches the ping, nobody answers it.
        with trio.fail_after(5):
            await sio.endpoint._sessions[sid].done.wait()
        reply = await client.get(BASE, params=_params(sid))
        assert reply.status_code == 400 and reply.json()["code"] == 1


async def test_an_event_over_the_message_limit_is_frame_too_large(tmp_path: Path) -> None:
    async with socketio_server(tmp_path) as sio, httpx.AsyncClient(base_url=sio.url) as client:
        meeting = await sio.native.meeting(host="h")
        sid, _ = await _handshake(client)
        auth = json.dumps({"meetingAccessToken": sio.native.token(meeting, "h", Role.HOST)})
        await client.post(BASE, params=_params(sid), content=f"40/meetings,{auth}")
        assert "room:joined" in (await client.get(BASE, params=_params(sid))).text
        # Within maxPayload (the Engine.IO limit), over max_message_bytes (meshroom's).
        big = "x" * (sio.native.settings.max_message_bytes + 100)
        body = '42/meetings,["presence:update",{"pad":"' + big + '"}]'
        assert (await client.post(BASE, params=_params(sid), content=body)).text == "ok"
        reply = await client.get(BASE, params=_params(sid))
        assert reply.text.startswith('42/meetings,["error",{"code":"FRAME_TOO_LARGE"')
        # As on the native protocol, the connection stays usable.
        assert (
            await client.post(BASE, params=_params(sid), content='42/meetings,1["ping",{}]')
        ).text == "ok"
        assert (await client.get(BASE, params=_params(sid))).text.startswith("43/meetings,1[{")
