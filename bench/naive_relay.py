"""The naive reference relay: what a first Trio signaling server looks like.

trio-websocket, and per message one ``json.loads``, one ``json.dumps`` and one
``send_message``. No authentication, no database, no validation, no
``peer:joined`` broadcasts. It speaks just enough of meshroom's protocol for the
bench loader to drive it:

* the first frame must be ``auth``; its "token" is ``ROOM|EMP_ID`` (not a JWT),
  answered with ``room:joined`` carrying ``self`` and the ``peers`` present;
* ``signal:*`` frames go to ``data.targetEmpId`` in the same room, with
  ``fromEmpId`` stamped in and ``targetEmpId`` dropped;
* ``ping`` with an id is answered with an ``ack``;
* ``host:end`` is not implemented (the teardown scenario does not use this relay).

Run: ``python -m bench.naive_relay --port 9000``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, WebSocketRequest, serve_websocket

PAYLOAD_KEYS = {"signal:offer": "offer", "signal:answer": "answer", "signal:ice": "candidate"}

rooms: dict[str, dict[str, WebSocketConnection]] = {}


async def handler(request: WebSocketRequest) -> None:
    ws = await request.accept()
    try:
        first = json.loads(await ws.get_message())
        room_id, _, emp = first["data"]["meetingAccessToken"].partition("|")
    except (ConnectionClosed, ValueError, KeyError, TypeError):
        await ws.aclose(4001)
        return
    room = rooms.setdefault(room_id, {})
    present = [{"empId": other} for other in room]
    room[emp] = ws  # snapshot and membership in one synchronous step
    try:
        await ws.send_message(
            json.dumps(
                {
                    "event": "room:joined",
                    "id": first.get("id"),
                    "data": {"self": {"empId": emp}, "peers": present},
                }
            )
        )
        while True:
            message = json.loads(await ws.get_message())
            event = message["event"]
            key = PAYLOAD_KEYS.get(event)
            if key is not None:
                data = message["data"]
                target = room.get(data["targetEmpId"])
                if target is not None:
                    frame = json.dumps({"event": event, "data": {"fromEmpId": emp, key: data[key]}})
                    with contextlib.suppress(ConnectionClosed):
                        await target.send_message(frame)
            elif event == "ping":
                await ws.send_message(
                    json.dumps({"event": "ack", "id": message.get("id"), "data": {}})
                )
    except ConnectionClosed:
        pass
    finally:
        if room.get(emp) is ws:
            del room[emp]
        if not room:
            rooms.pop(room_id, None)


async def main(host: str, port: int) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            lambda: serve_websocket(handler, host, port, ssl_context=None, max_message_size=1 << 20)
        )
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                nursery.cancel_scope.cancel()
                return


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    trio.run(main, args.host, args.port)
