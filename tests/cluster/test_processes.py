"""Real node processes: kill -9 of a room's node, and a drain on SIGTERM."""

from __future__ import annotations

import re
from contextlib import AsyncExitStack

import httpx
import trio
from _servers import API_KEY
from _signaling import events_until_closed

from meshroom import Role
from meshroom.store import SqlStore

from .harness import DEADLINE
from .processes import NodeProcess, node_processes, rejoin, token

OFFER = {"type": "offer", "sdp": "v=0"}


async def _ready(nodes: list[NodeProcess]) -> None:
    async with httpx.AsyncClient(timeout=5) as http:
        for node in nodes:
            while (await http.get(f"{node.http_url}/readyz")).status_code != 200:  # noqa: ASYNC110
                await trio.sleep(0.05)


async def _meeting(node: NodeProcess) -> str:
    async with httpx.AsyncClient(
        base_url=node.http_url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=5
    ) as http:
        created = await http.post(
            "/api/meetings", json={"title": "Cluster", "hostEmpId": "alice", "start": True}
        )
        assert created.status_code == 201, created.text
        return str(created.json()["id"])


def _epochs(node: NodeProcess, meeting_id: str) -> list[int]:
    found = re.findall(rf"room {meeting_id} epoch (\d+) acquired", node.text())
    return [int(e) for e in found]


async def test_kill_9_of_the_rooms_node_the_meeting_goes_on_on_another(tmp_path, redis):
    with trio.fail_after(3 * DEADLINE):
        async with node_processes(
            tmp_path, redis.url, 3, MESHROOM_ATTENDANCE_HEARTBEAT="1"
        ) as nodes:
            n0, n1, n2 = nodes
            await _ready(nodes)
            meeting_id = await _meeting(n0)
            async with AsyncExitStack() as stack:
                alice = await rejoin(stack, n0.url, token(meeting_id, "alice", Role.HOST))
                bob = await rejoin(stack, n1.url, token(meeting_id, "bob"))
                carol = await rejoin(stack, n2.url, token(meeting_id, "carol"))
                await alice.wait_for("peer:joined", empId="carol")
                assert _epochs(n0, meeting_id) and not _epochs(n1, meeting_id)

                killed_at = trio.current_time()
                n0.kill()
                await events_until_closed(alice)
                assert alice.close_code == 1006  # its node is gone: no close frame
                for peer in (bob, carol):
                    events = await events_until_closed(peer)
                    assert events[-2].name == "server:shutdown"  # told to reconnect
                    assert peer.close_code == 1001

            async with AsyncExitStack() as stack:
                bob = await rejoin(stack, n1.url, token(meeting_id, "bob"))
                carol = await rejoin(stack, n2.url, token(meeting_id, "carol"))
                alice = await rejoin(stack, n2.url, token(meeting_id, "alice", Role.HOST))
                await bob.wait_for("peer:joined", empId="alice")
                await alice.request("signal:offer", {"targetEmpId": "bob", "offer": OFFER})
                await bob.wait_for("signal:offer")
                relaying_again = trio.current_time() - killed_at
                # Node 1 took the room over with a larger epoch; nobody else ran it.
                assert _epochs(n1, meeting_id)[0] > _epochs(n0, meeting_id)[0]
                assert not _epochs(n2, meeting_id)
                print(f"kill -9 to relaying again: {relaying_again:.2f} s")

                # The dead node's rows are closed by recovery (any live node runs it).
                store = SqlStore(f"sqlite:///{tmp_path / 'meshroom.db'}")
                await store.open()
                try:
                    with trio.fail_after(DEADLINE):
                        while True:
                            rows = await store.attendance_for_meeting(meeting_id)
                            if sum(r.closed_by_recovery for r in rows) == 3:
                                break
                            await trio.sleep(0.2)
                    assert sorted(r.emp_id for r in rows if r.closed_by_recovery) == [
                        "alice",
                        "bob",
                        "carol",
                    ]
                    live = [r for r in rows if r.left_at is None]
                    assert sorted(r.emp_id for r in live) == ["alice", "bob", "carol"]
                finally:
                    await store.close()


async def test_sigterm_drains_a_node_its_peers_continue_on_another(tmp_path, redis):
    with trio.fail_after(3 * DEADLINE):
        async with node_processes(tmp_path, redis.url, 2) as nodes:
            n0, n1 = nodes
            await _ready(nodes)
            meeting_id = await _meeting(n0)
            async with AsyncExitStack() as stack:
                alice = await rejoin(stack, n0.url, token(meeting_id, "alice", Role.HOST))
                bob = await rejoin(stack, n1.url, token(meeting_id, "bob"))
                await alice.wait_for("peer:joined", empId="bob")

                n0.terminate()
                for peer in (alice, bob):
                    events = await events_until_closed(peer)
                    assert [e.name for e in events[-2:]] == ["server:shutdown", "session:closed"]
                    assert peer.close_code == 1001
                assert await n0.process.wait() == 0
                assert "released by node0" in n0.text()

            # Without waiting for node 0's registration to expire: it gave the room back.
            async with AsyncExitStack() as stack:
                bob = await rejoin(stack, n1.url, token(meeting_id, "bob"))
                alice = await rejoin(stack, n1.url, token(meeting_id, "alice", Role.HOST))
                await bob.wait_for("peer:joined", empId="alice")
            store = SqlStore(f"sqlite:///{tmp_path / 'meshroom.db'}")
            await store.open()
            try:
                rows = await store.attendance_for_meeting(meeting_id)
                # The drained node's rows were closed by the drain, never by recovery.
                drained = [(r.emp_id, r.leave_reason) for r in rows[:2]]
                assert sorted(drained) == [("alice", "server-shutdown"), ("bob", "server-shutdown")]
                assert not any(r.closed_by_recovery for r in rows)
            finally:
                await store.close()
