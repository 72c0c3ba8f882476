"""Webhooks from a real meshroom server: real meetings, real peers, a real receiver.

Every event type is produced by what users do (start, join, promote, kick, ban,
unban, leave, end), signed, delivered in order, and visible in the API, the CLI
and /metrics.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from _servers import API_KEY, RunningServer, server_settings, start_server

from meshroom import Role
from meshroom.cli import main
from meshroom.client import Peer, connect
from meshroom.store.base import DeliveryStatus
from meshroom.webhooks import payloads

from .helpers import SECRET, receiving
from .receiver import Receiver

TIMEOUT = 30


def webhook_settings(tmp_path: Path, receiver: Receiver, **overrides: Any) -> dict[str, Any]:
    endpoints = [{"url": receiver.url, "secret": SECRET, "id": "receiver"}]
    return {
        "http_port": 0,
        "webhooks": json.dumps(endpoints),
        "webhook_retry_initial": 0.02,
        "webhook_retry_max": 0.1,
        "webhook_poll_interval": 0.2,
        **overrides,
    }


@asynccontextmanager
async def serving(
    tmp_path: Path, receiver: Receiver, **overrides: Any
) -> AsyncIterator[RunningServer]:
    settings = server_settings(tmp_path, **webhook_settings(tmp_path, receiver, **overrides))
    async with trio.open_nursery() as nursery:
        running = await start_server(nursery, settings)
        yield running
        running.server.request_shutdown()


def api_client(server: RunningServer) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=server.http_url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=TIMEOUT
    )


async def join(
    stack: AsyncExitStack,
    server: RunningServer,
    meeting_id: str,
    emp_id: str,
    role: Role = Role.PARTICIPANT,
) -> Peer:
    return await stack.enter_async_context(
        connect(server.url, server.token(meeting_id, emp_id, role))
    )


def delivered(receiver: Receiver, event_type: str, count: int = 1):  # type: ignore[no-untyped-def]
    return lambda r: sum(x.ok and x.type == event_type for x in r.first_deliveries()) >= count


async def test_every_event_type_from_a_real_meeting_in_order_and_signed(tmp_path):
    with trio.fail_after(TIMEOUT):
        async with receiving() as receiver, serving(tmp_path, receiver) as server:
            async with api_client(server) as api:
                created = await api.post(
                    "/api/meetings", json={"title": "Standup", "hostEmpId": "alice", "start": True}
                )
                meeting_id = created.json()["id"]
            async with AsyncExitStack() as stack:
                alice = await join(stack, server, meeting_id, "alice", Role.HOST)
                bob = await join(stack, server, meeting_id, "bob")
                await join(stack, server, meeting_id, "carol")
                await alice.promote("bob")
                await alice.kick("carol")
                await join(stack, server, meeting_id, "dave")
                await alice.ban("dave", reason="spam")
                await alice.unban("dave")
                member = server.hub.rooms[meeting_id].peers["bob"]
                await bob.leave()
                await member.finished.wait()
                await alice.end_meeting()
            await receiver.until(delivered(receiver, "meeting.ended"))
    events = receiver.first_deliveries()
    assert [(e.type, e.data.get("empId")) for e in events] == [
        ("meeting.started", None),
        ("participant.joined", "alice"),
        ("participant.joined", "bob"),
        ("participant.joined", "carol"),
        ("participant.role_changed", "bob"),
        ("participant.left", "carol"),
        ("attendance.closed", "carol"),
        ("participant.joined", "dave"),
        ("participant.banned", "dave"),
        ("participant.left", "dave"),
        ("attendance.closed", "dave"),
        ("participant.unbanned", "dave"),
        ("participant.left", "bob"),
        ("attendance.closed", "bob"),
        ("participant.left", "alice"),
        ("attendance.closed", "alice"),
        ("meeting.ended", None),
    ]
    assert len(receiver.requests) == len(events)  # each once: the receiver always said 200
    for event in events:
        assert event.verify(SECRET) == event.json
        payloads.parse(event.body)  # the published model of its type
        assert event.data["meetingId"] == meeting_id
    by = {(e.type, e.data.get("empId")): e.data for e in events}
    assert by[("participant.joined", "alice")]["role"] == "HOST"
    role = by[("participant.role_changed", "bob")]
    assert (role["role"], role["previousRole"], role["reason"], role["by"]) == (
        "COHOST",
        "PARTICIPANT",
        "promote",
        "alice",
    )
    assert by[("participant.left", "carol")]["reason"] == "kicked"
    assert by[("participant.banned", "dave")] | {"bannedAt": None} == {
        "meetingId": meeting_id,
        "empId": "dave",
        "bannedAt": None,
        "by": "alice",
        "reason": "spam",
    }
    assert by[("participant.left", "dave")]["reason"] == "banned"
    assert by[("participant.unbanned", "dave")]["by"] == "alice"
    assert by[("participant.left", "bob")]["reason"] == "left"
    assert by[("participant.left", "alice")]["reason"] == "meeting-ended"
    ended = by[("meeting.ended", None)]
    assert ended["by"] == "alice" and ended["status"] == "ENDED"
    for emp in ("alice", "bob", "carol", "dave"):
        left, closed = by[("participant.left", emp)], by[("attendance.closed", emp)]
        assert left["durationSeconds"] == closed["durationSeconds"] >= 0
        assert left["attendanceId"] == closed["attendanceId"]
        assert closed["closedByRecovery"] is False
    rows = {r.id: r for r in await server.store.attendance_for_meeting(meeting_id)}
    for emp in ("alice", "bob", "carol", "dave"):
        closed = by[("attendance.closed", emp)]
        assert closed["durationSeconds"] == rows[closed["attendanceId"]].duration_seconds


async def test_the_api_manages_endpoints_and_deliveries_and_metrics_count_them(tmp_path):
    answers = iter([500])
    receiver = Receiver(lambda _request: next(answers, 200))
    with trio.fail_after(TIMEOUT):
        async with (
            receiving(receiver),
            serving(tmp_path, receiver) as server,
            api_client(server) as api,
        ):
            listed = (await api.get("/api/webhooks/endpoints")).json()["items"]
            assert [(e["id"], e["source"], e["url"]) for e in listed] == [
                ("receiver", "settings", receiver.url)
            ]
            assert "secret" not in listed[0]
            refused = await api.delete("/api/webhooks/endpoints/receiver")
            assert refused.status_code == 409
            assert refused.json()["error"]["code"] == "ENDPOINT_MANAGED_BY_SETTINGS"

            # A second endpoint, created here, for meeting ends only.
            other = Receiver(path="/other")
            async with receiving(other):
                created = await api.post(
                    "/api/webhooks/endpoints",
                    json={"url": other.url, "eventTypes": ["meeting.ended"]},
                )
                assert created.status_code == 201, created.text
                endpoint = created.json()
                assert endpoint["secret"].startswith("whsec_")
                assert endpoint["source"] == "api" and endpoint["eventTypes"] == ["meeting.ended"]

                meeting = (
                    await api.post(
                        "/api/meetings", json={"title": "T", "hostEmpId": "a", "start": True}
                    )
                ).json()
                await api.post(f"/api/meetings/{meeting['roomCode']}/end")
                await other.until(lambda r: bool(r.delivered()))
                await receiver.until(delivered(receiver, "meeting.ended"))
            (ended,) = other.requests
            assert ended.type == "meeting.ended" and ended.data["by"] == "api"
            assert ended.verify(endpoint["secret"]) == ended.json

            # Deliveries: filtered by meeting (room code) and endpoint, with their bodies.
            page = (
                await api.get(
                    "/api/webhooks/deliveries",
                    params={"meeting": meeting["roomCode"], "endpointId": "receiver"},
                )
            ).json()
            assert page["total"] == 2
            started, end = reversed(page["items"])
            assert (started["eventType"], started["attempts"], started["status"]) == (
                "meeting.started",
                2,
                "delivered",
            )
            sent = [r.json for r in receiver.requests if r.id == started["eventId"]]
            assert sent == [started["payload"]] * 2  # the body, byte for byte the same
            assert started["lastStatusCode"] == 200 and started["eventId"].startswith("msg_")
            assert end["payload"]["data"]["by"] == "api"

            # Retry a delivered one: it is sent again, with the same webhook-id.
            again = await api.post(f"/api/webhooks/deliveries/{started['id']}/retry")
            assert again.status_code == 200 and again.json()["attempts"] == 0
            await receiver.until(lambda r: len(r.requests) == 4)
            assert receiver.requests[-1].id == started["eventId"]
            missing = await api.post("/api/webhooks/deliveries/999999/retry")
            assert missing.status_code == 404
            assert missing.json()["error"]["code"] == "DELIVERY_NOT_FOUND"
            bulk = await api.post("/api/webhooks/deliveries/retry", json={})
            assert bulk.json() == {"retried": 0}  # nothing is dead

            # Disable, then delete, the API endpoint.
            patched = await api.patch(
                f"/api/webhooks/endpoints/{endpoint['id']}", json={"enabled": False}
            )
            assert patched.json()["enabled"] is False
            assert patched.json()["eventTypes"] == ["meeting.ended"]  # untouched
            bad = await api.patch(
                f"/api/webhooks/endpoints/{endpoint['id']}", json={"secret": "nope"}
            )
            assert bad.status_code == 400
            deleted = await api.delete(f"/api/webhooks/endpoints/{endpoint['id']}")
            assert deleted.status_code == 204
            gone = await api.get(f"/api/webhooks/endpoints/{endpoint['id']}")
            assert gone.status_code == 404

            # The last attempt's count lands just after its result is recorded.
            await scraped(
                api,
                'meshroom_webhook_deliveries_total{endpoint="receiver",'
                'event_type="meeting.started",outcome="delivered"} 2.0',
            )
            metrics = (await api.get("/metrics")).text
    assert (
        'meshroom_webhook_deliveries_total{endpoint="receiver",event_type="meeting.started",'
        'outcome="failed"} 1.0' in metrics
    )
    assert (
        'meshroom_webhook_deliveries_total{endpoint="receiver",event_type="meeting.ended",'
        'outcome="delivered"} 1.0' in metrics
    )
    assert 'meshroom_webhook_delivery_seconds_count{endpoint="receiver"} 4.0' in metrics
    assert f'meshroom_webhook_delivery_seconds_count{{endpoint="{endpoint["id"]}"}} 1.0' in metrics


async def scraped(api: httpx.AsyncClient, line: str) -> None:
    """Wait until /metrics shows ``line`` (counted by the worker once an attempt ends)."""
    while line not in (await api.get("/metrics")).text:  # noqa: ASYNC110  (another task counts)
        await trio.sleep(0.02)


@pytest.mark.parametrize(
    "body",
    [
        {"url": "ftp://example.com/x"},
        {"url": "http://example.com/x", "secret": "whsec_c2hvcnQ="},
        {"url": "http://example.com/x", "eventTypes": ["meeting.exploded"]},
        {"url": "http://example.com/x", "surprise": 1},
    ],
)
async def test_the_api_refuses_an_unusable_endpoint(tmp_path, body):
    with trio.fail_after(TIMEOUT):
        async with (
            receiving() as receiver,
            serving(tmp_path, receiver) as server,
            api_client(server) as api,
        ):
            response = await api.post("/api/webhooks/endpoints", json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "INVALID_INPUT"


async def test_the_cli_lists_dead_deliveries_and_retries_them_into_the_running_server(
    tmp_path, capsys
):
    receiver = Receiver(lambda _request: 500)
    with trio.fail_after(TIMEOUT):
        async with (
            receiving(receiver),
            serving(tmp_path, receiver, webhook_max_attempts=2) as server,
        ):
            meeting = await server.meeting()
            await receiver.until(lambda r: len(r.requests) == 2)
            database = ["--database-url", server.settings.database_url]

            def cli(*args: str) -> int:
                return main(["webhooks", *args, *database])

            # The second answer was a 500: the delivery is dead once the server records it.
            dead = DeliveryStatus.DEAD
            while not (await server.store.list_webhook_deliveries(status=dead))[1]:  # noqa: ASYNC110
                await trio.sleep(0.02)
            assert await trio.to_thread.run_sync(cli, "list", "--status", "dead", "--json") == 0
            (line,) = capsys.readouterr().out.splitlines()
            listed = json.loads(line)
            assert (listed["status"], listed["attempts"], listed["eventType"]) == (
                "dead",
                2,
                "meeting.started",
            )
            assert listed["lastError"] == "HTTP 500: receiver says no"
            assert listed["payload"]["data"]["meetingId"] == meeting.id

            receiver.respond = lambda _request: 200
            assert await trio.to_thread.run_sync(cli, "retry", "--dead") == 0
            assert capsys.readouterr().out == "retried 1 dead delivery(ies)\n"
            # The server finds it on its next poll (the CLI is another process's store).
            await receiver.until(lambda r: bool(r.delivered()))
            assert receiver.delivered()[0].id == listed["eventId"]

            assert await trio.to_thread.run_sync(cli, "retry", "424242") == 1
            assert capsys.readouterr().err == "meshroom: error: no webhook delivery 424242\n"
            assert await trio.to_thread.run_sync(cli, "endpoints") == 0
            out = capsys.readouterr().out
            assert out.startswith(
                f"receiver  settings  enabled   {receiver.url}  (every event type)"
            )
            assert SECRET not in out


async def test_settings_endpoints_are_synced_at_start(tmp_path):
    """Removed from the settings: disabled, its pending deliveries kept; back: resumed."""
    receiver = Receiver(lambda _request: 500)
    with trio.fail_after(TIMEOUT):
        async with receiving(receiver):
            async with serving(
                tmp_path, receiver, webhook_retry_initial=60, webhook_retry_max=60
            ) as server:
                await server.meeting()
                await receiver.until(lambda r: len(r.requests) == 1)
            async with serving(tmp_path, receiver, webhooks="[]") as server:
                (endpoint,) = await server.store.list_webhook_endpoints()
                assert endpoint.id == "receiver" and endpoint.enabled is False
                (pending,), _ = await server.store.list_webhook_deliveries()
                assert pending.status.value == "pending"
            receiver.respond = lambda _request: 200
            async with serving(tmp_path, receiver) as server:
                (endpoint,) = await server.store.list_webhook_endpoints()
                assert endpoint.enabled is True
                # Its retry was due in a minute (the first server's backoff): make it due now.
                await server.store.retry_webhook_deliveries(
                    delivery_ids=[pending.id], now=dt.datetime.now(dt.UTC)
                )
                await receiver.until(lambda r: bool(r.delivered()))
    assert receiver.delivered()[0].id == pending.event_id
