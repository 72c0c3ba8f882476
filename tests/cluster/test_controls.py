"""Host controls reach the node that runs the room, from anywhere: another node's host,
another node's HTTP API, the CLI through Redis. Each has taken effect when it returns."""

from __future__ import annotations

from contextlib import AsyncExitStack

import httpx
import pytest
import trio
from _servers import API_KEY
from _signaling import events_until_closed

from meshroom import Role
from meshroom.cli import main
from meshroom.client import JoinRefused, connect
from meshroom.store import MeetingStatus

from .harness import DEADLINE, cluster, node_of


async def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run `meshroom ARGV` (exit code, stdout, stderr). The CLI does a trio.run of its
    own, so it runs in a thread."""

    def run() -> tuple[int, str, str]:
        capsys.readouterr()
        code = main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    return await trio.to_thread.run_sync(run)


def api(base: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=base, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=DEADLINE
    )


async def test_a_host_on_another_node_kicks_bans_and_ends(tmp_path, redis):
    with trio.fail_after(DEADLINE):
        async with cluster(tmp_path, redis, 2) as (a, b), AsyncExitStack() as stack:
            meeting = await a.meeting()
            alice = await stack.enter_async_context(connect(a.url, a.token(meeting, "alice")))
            # The host is relayed: its commands run on node a, where the room is.
            host = await stack.enter_async_context(
                connect(b.url, b.token(meeting, "host", Role.HOST))
            )
            bob = await stack.enter_async_context(connect(b.url, b.token(meeting, "bob")))
            await alice.wait_for("peer:joined", empId="bob")

            await host.request("host:kick", {"targetEmpId": "alice"})
            events = await events_until_closed(alice)
            assert events[-1].name == "session:closed"
            assert events[-1].data["reason"] == "kicked"
            assert alice.close_code == 4005

            await host.request("host:ban", {"targetEmpId": "bob"})
            events = await events_until_closed(bob)
            assert events[-1].data["reason"] == "banned"
            assert bob.close_code == 4004
            # Banned on every node: a fresh token at either is refused.
            for node in (a, b):
                with pytest.raises(JoinRefused) as refused:
                    async with connect(node.url, node.token(meeting, "bob")):
                        pass
                assert refused.value.code == "BANNED"

            await host.request("host:end")
            events = await events_until_closed(host)
            assert events[-1].name == "meeting:ended"
            assert host.close_code == 4006
            assert (await a.store.get_meeting(meeting.id)).status is MeetingStatus.ENDED


async def test_the_api_of_a_node_without_the_room_reaches_it(tmp_path, redis):
    with trio.fail_after(DEADLINE):
        async with (
            cluster(tmp_path, redis, 2, http_port=0) as (a, b),
            AsyncExitStack() as stack,
            api(b.http_url) as http,
        ):
            meeting = await a.meeting()
            alice = await stack.enter_async_context(
                connect(a.url, a.token(meeting, "alice", Role.HOST))
            )
            bob = await stack.enter_async_context(connect(a.url, a.token(meeting, "bob")))
            carol = await stack.enter_async_context(connect(b.url, b.token(meeting, "carol")))
            await alice.wait_for("peer:joined", empId="carol")
            assert meeting.id not in b.hub.rooms

            listed = (await http.get(f"/api/meetings/{meeting.id}/participants")).json()
            assert {p["empId"] for p in listed["participants"]} == {"alice", "bob", "carol"}

            kicked = await http.post(f"/api/meetings/{meeting.id}/participants/bob/kick")
            assert kicked.status_code == 200
            # Done when the call returned: bob is no longer in the room.
            assert "bob" not in {p["empId"] for p in a.hub.live_peers(meeting.id)}
            assert (await events_until_closed(bob))[-1].data["reason"] == "kicked"

            ended = await http.post(f"/api/meetings/{meeting.id}/end")
            assert ended.status_code == 200 and ended.json()["status"] == "ENDED"
            assert meeting.id not in a.hub.rooms or a.hub.rooms[meeting.id].ending
            for peer in (alice, carol):
                assert (await events_until_closed(peer))[-1].name == "meeting:ended"
                assert peer.close_code == 4006


async def test_the_cli_with_redis_ends_and_kicks_at_once(tmp_path, redis, capsys, monkeypatch):
    with trio.fail_after(DEADLINE):
        async with cluster(tmp_path, redis, 2) as (a, b), AsyncExitStack() as stack:
            meeting = await a.meeting()
            alice = await stack.enter_async_context(
                connect(a.url, a.token(meeting, "alice", Role.HOST))
            )
            bob = await stack.enter_async_context(connect(b.url, b.token(meeting, "bob")))
            await alice.wait_for("peer:joined", empId="bob")
            shared = [
                f"--database-url={a.settings.database_url}",
                f"--redis-url={redis.url}",
                f"--secret={a.settings.secret}",
            ]

            code, out, err = await cli(capsys, "meeting", "kick", meeting.id, "bob", *shared)
            assert (code, out.strip(), err) == (0, "kicked bob", "")
            assert (await events_until_closed(bob))[-1].data["reason"] == "kicked"

            code, out, err = await cli(capsys, "meeting", "end", meeting.id, *shared)
            assert code == 0 and "ENDED" in out and err == ""
            # Ended before the command returned, not within the 5 s the watcher takes.
            assert (await events_until_closed(alice))[-1].name == "meeting:ended"


async def test_node_list_and_drain_from_the_cli(tmp_path, redis, capsys):
    with trio.fail_after(DEADLINE):
        async with cluster(tmp_path, redis, 2) as (a, b), AsyncExitStack() as stack:
            meeting = await a.meeting()
            alice = await stack.enter_async_context(
                connect(a.url, a.token(meeting, "alice", Role.HOST))
            )
            bob = await stack.enter_async_context(connect(b.url, b.token(meeting, "bob")))
            await alice.wait_for("peer:joined", empId="bob")

            shared = [f"--redis-url={redis.url}"]
            code, out, err = await cli(capsys, "node", "list", *shared)
            assert code == 0 and err == ""
            assert [line.split()[:2] for line in out.splitlines()] == [
                ["node0", "serving"],
                ["node1", "serving"],
            ]

            code, out, err = await cli(capsys, "node", "drain", "node0", *shared)
            assert (code, out.strip(), err) == (
                0,
                "node node0 handed over 1 room(s); it takes no new ones",
                "",
            )
            for peer in (alice, bob):
                assert (await events_until_closed(peer))[-2].name == "server:shutdown"
            assert meeting.id not in node_of(a).leases
            # Node 0 still serves its clients, relaying them to the room's new node.
            async with (
                connect(b.url, b.token(meeting, "bob")) as bob,
                connect(a.url, a.token(meeting, "alice", Role.HOST)) as alice,
            ):
                await bob.wait_for("peer:joined", empId="alice")
                assert node_of(b).holds(meeting.id) and meeting.id not in a.hub.rooms

            code, out, err = await cli(capsys, "node", "list", *shared)
            assert out.splitlines()[0].split()[:2] == ["node0", "draining"]
            code, out, err = await cli(capsys, "node", "drain", "nobody", *shared)
            assert code == 1 and out == ""
            assert err.strip().endswith("no node 'nobody' is registered (see `meshroom node list`)")
