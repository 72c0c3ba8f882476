"""socket.io-client's own reconnection resumes the peer's place (docs/protocol.md §9.5).

The endpoint remembers the resume token of a connection whose transport dropped and
offers it on the next CONNECT with the same access token: the client code is the
seed's, unchanged, and others in the room see no leave/join churn.
"""

from __future__ import annotations

import json
from contextlib import AsyncExitStack
from pathlib import Path

import httpx
import pytest
import trio
import trio.testing

from meshroom import Role
from meshroom.client import connect

from .harness import TRANSPORT_ENDED, driver, socketio_server

BASE = "/socket.io/"

NODE_CLIENTS = [
    pytest.param(None, id="node-default"),
    pytest.param(["websocket"], id="node-websocket"),
]


@pytest.mark.parametrize("transports", NODE_CLIENTS)
async def test_transport_drop_reconnects_and_resumes(
    tmp_path: Path, transports: list[str] | None
) -> None:
    async with socketio_server(tmp_path, resume_grace=30.0) as sio, AsyncExitStack() as stack:
        meeting = await sio.native.meeting(host="alice")
        alice = await stack.enter_async_context(driver("node"))
        bob = await stack.enter_async_context(driver("node"))
        await alice.join(
            sio.url, sio.native.token(meeting, "alice", Role.HOST), transports=transports
        )
        # A reconnection delay long enough that the server has handled the drop
        # before the new CONNECT arrives (the client closes first, then waits).
        await bob.connect(
            sio.url,
            sio.native.token(meeting, "bob"),
            transports=transports,
            reconnectionDelay=300,
        )
        await bob.expect("connect")
        joined = await bob.event("room:joined")
        assert joined["resumeToken"]
        assert (await alice.event("peer:joined"))["empId"] == "bob"

        await bob.send("drop")
        assert (await bob.expect("disconnect"))["reason"] in TRANSPORT_ENDED | {"forced close"}
        await bob.expect("reconnect_attempt")
        await bob.expect("connect")
        resumed = await bob.event("room:resumed")
        assert resumed["self"]["empId"] == "bob"
        assert resumed["resumeToken"] != joined["resumeToken"]
        assert [p["empId"] for p in resumed["peers"]] == ["alice"]
        # Signaling works on the resumed connection, and alice saw no churn.
        offer = {"type": "offer", "sdp": "v=0 again"}
        assert await alice.call("signal:offer", {"targetEmpId": "bob", "offer": offer}) == [{}]
        assert await bob.event("signal:offer") == {"fromEmpId": "alice", "offer": offer}
        assert [e["event"] for e in alice.unread("event")] == []
        rows = await sio.native.store.attendance_for_meeting(meeting.id)
        assert [(r.emp_id, r.left_at is None) for r in rows if r.emp_id == "bob"] == [("bob", True)]


async def test_auth_resume_token_takes_back_a_native_peers_place(tmp_path: Path) -> None:
    """A client may present ``auth.resumeToken`` itself, even one a native connection got."""
    async with socketio_server(tmp_path, resume_grace=30.0) as sio, AsyncExitStack() as stack:
        meeting = await sio.native.meeting(host="alice")
        alice = await stack.enter_async_context(driver("python"))
        await alice.join(sio.url, sio.native.token(meeting, "alice", Role.HOST))
        token = sio.native.token(meeting, "bob")
        async with connect(sio.ws_url, token) as native_bob:
            resume_token = native_bob.resume_token
            assert resume_token
            await alice.event("peer:joined")
            await native_bob.close()  # a close without peer:leave is a drop
        bob = await stack.enter_async_context(driver("node"))
        await bob.connect(sio.url, auth={"meetingAccessToken": token, "resumeToken": resume_token})
        await bob.expect("connect")
        resumed = await bob.event("room:resumed")
        assert resumed["self"]["empId"] == "bob"
        await alice.call("ping", {})  # a round trip: alice saw no leave/join churn
        assert [e["event"] for e in alice.unread("event")] == []


async def test_frames_a_dropped_polling_client_never_fetched_come_on_resume(
    tmp_path: Path,
) -> None:
    """Frames still queued in a polling session when it dropped are replayed, once.

    The endpoint remembers how far the client was sent its frames (the last ``seq``
    handed to a GET) and resumes with that ``lastSeq``, so the core replays the rest.
    """
    async with (
        socketio_server(tmp_path, resume_grace=30.0) as sio,
        httpx.AsyncClient(base_url=sio.url) as http,
    ):
        meeting = await sio.native.meeting(host="alice")
        auth = json.dumps({"meetingAccessToken": sio.native.token(meeting, "bob")})

        async def session() -> str:
            reply = await http.get(BASE, params={"EIO": "4", "transport": "polling"})
            sid = str(json.loads(reply.text[1:])["sid"])
            params = {"EIO": "4", "transport": "polling", "sid": sid}
            assert (
                await http.post(BASE, params=params, content=f"40/meetings,{auth}")
            ).text == "ok"
            return sid

        async def events(sid: str, until: str) -> list[list[object]]:
            params = {"EIO": "4", "transport": "polling", "sid": sid}
            seen: list[list[object]] = []
            with trio.fail_after(10):
                while not any(e[0] == until for e in seen):
                    body = (await http.get(BASE, params=params)).text
                    for packet in body.split("\x1e"):
                        if packet.startswith("42/meetings,"):
                            seen.append(json.loads(packet[len("42/meetings,") :]))
            return seen

        async with connect(sio.ws_url, sio.native.token(meeting, "alice", Role.HOST)) as alice:
            first = await session()
            await events(first, "room:joined")
            await alice.wait_for("peer:joined", empId="bob")
            offer = {"type": "offer", "sdp": "v=0 queued"}
            await alice.offer("bob", offer)
            # The offer is in bob's session, which he does not poll any more; he drops.
            await trio.testing.wait_all_tasks_blocked(cushion=0.02)
            assert sio.endpoint._sessions[first].state.has_output
            params = {"EIO": "4", "transport": "polling", "sid": first}
            assert (await http.post(BASE, params=params, content="1")).text == "ok"

            second = await session()
            seen = await events(second, "signal:offer")
            assert seen[0][0] == "room:resumed"
            assert [e for e in seen if e[0] == "signal:offer"] == [
                ["signal:offer", {"fromEmpId": "alice", "offer": offer}]
            ]
