"""The standalone listener hands a joined connection to its room and keeps no task for it.

Each joined peer used to hold a listener task that did nothing but wait for the
room to finish with its connection (~3 KB of coroutine frames per peer). Now the
room owns the connection once it has joined, and gives the listener's connection
slot back (``WebSocketConnection.release``) when it is done with it.
"""

from __future__ import annotations

import trio
import trio.testing
from _rawws import raw_client
from _servers import server_settings, start_server

from meshroom import Role
from meshroom.client import connect


def _listener_tasks() -> int:
    """Tasks running the listener's per-connection handler (on_stream), anywhere."""
    count = 0
    stack = [trio.lowlevel.current_root_task()]
    while stack:
        task = stack.pop()
        if task.coro.cr_code.co_name == "on_stream":
            count += 1
        for nursery in task.child_nurseries:
            stack.extend(nursery.child_tasks)
    return count


async def test_joined_connections_hold_no_listener_task_and_give_their_slot_back(tmp_path):
    with trio.fail_after(15):
        async with trio.open_nursery() as nursery:
            server = await start_server(nursery, server_settings(tmp_path))
            meeting = await server.meeting()
            slots = server.hub.slots
            async with (
                connect(server.url, server.token(meeting, "alice", Role.HOST)) as alice,
                raw_client(server.url) as bob,
            ):
                joined = await bob.authenticate(server.token(meeting, "bob"))
                assert joined["event"] == "room:joined"
                assert slots.open == 2
                assert _listener_tasks() == 0  # both handed over to the room
                room = server.hub.room(meeting.id)
                assert room is not None
                bob_peer, alice_peer = room.member("bob"), room.member("alice")
                assert bob_peer is not None and alice_peer is not None
                await bob.send_json("peer:leave", id=1)
                await alice.wait_for("peer:left", empId="bob")
                await bob.frames_until_closed()
                # Bob's slot is back once the room is done with his connection
                # (it gives it back just before the peer is finished).
                await bob_peer.finished.wait()
                assert slots.open == 1
            await alice_peer.finished.wait()
            assert slots.open == 0
            server.server.request_shutdown()


async def test_a_refused_connection_is_closed_by_the_listener_and_frees_its_slot(tmp_path):
    with trio.fail_after(15):
        async with trio.open_nursery() as nursery:
            server = await start_server(nursery, server_settings(tmp_path))
            async with raw_client(server.url) as stranger:
                await stranger.send_json("auth", id=1, data={"meetingAccessToken": "not a token"})
                await stranger.frames_until_closed()
                assert stranger.close_code == 4001
            await trio.testing.wait_all_tasks_blocked()  # the handler's last step
            assert server.hub.slots.open == 0
            assert _listener_tasks() == 0
            server.server.request_shutdown()
