"""Real joins under a slowloris flood (issue 11 #3): the dribblers run in a process of
their own, as an attacker's would.

The issue measured p50 322 ms, p95 2.4 s and 11/30 joins over 1 s under 5,000
dribblers; on this code base before the handshake gate (meshroom/transports/gate.py),
every join of this test waited for 3,000 dribblers ahead of it in the kernel's accept
queue and none completed within 10 s. The gate reads request heads in a thread of its
own, so real joins go through in ~0.1 s.
"""

from __future__ import annotations

import sys
from pathlib import Path

import trio
import trio.lowlevel
from _signaling import server_settings, start_server

from meshroom.client import connect

DRIBBLERS = 5000
JOINS = 30


async def _until(condition: object) -> None:
    assert callable(condition)
    while not condition():  # noqa: ASYNC110 - the gate's thread announces nothing to trio
        await trio.sleep(0.05)


async def test_real_joins_complete_within_a_second_under_five_thousand_dribbling_handshakes(
    tmp_path: Path,
) -> None:
    settings = server_settings(tmp_path, auth_timeout=30.0, max_connections=10000)
    script = Path(__file__).with_name("_dribble.py")
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            server = await start_server(nursery, settings)
            meeting = await server.meeting()
            tokens = [server.token(meeting, f"p{n}") for n in range(JOINS)]
            slots = server.hub.slots
            port = str(server.server.port)
            flood = await trio.lowlevel.open_process(
                [sys.executable, str(script), "127.0.0.1", port, str(DRIBBLERS)]
            )
            try:
                # Every dribbler accepted and held, sending its head a byte every 0.1 s
                # (some may be reconnecting at any moment). Held by the gate now; by a
                # trio task each (slots.open) before it.
                await _until(lambda: slots.handshaking + slots.open >= DRIBBLERS * 0.95)
                took = []
                for token in tokens:
                    start = trio.current_time()
                    async with connect(server.url, token) as peer:
                        took.append(trio.current_time() - start)
                        await peer.leave()
                assert slots.handshaking + slots.open >= DRIBBLERS * 0.9  # flood on throughout
            finally:
                flood.kill()
                await flood.wait()
            took.sort()
            print(
                f"joins under {DRIBBLERS} dribblers: median {took[JOINS // 2]:.3f} s, "
                f"worst {took[-1]:.3f} s"
            )
            assert took[-1] < 1.0  # p99 of 30 joins is the worst one
            # The dribblers' sockets closed: the gate lets go of every one.
            await _until(lambda: slots.handshaking == 0)
            server.server.request_shutdown()
