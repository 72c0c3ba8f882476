"""The REST API under /api, over a real HTTP client on loopback, acting on live rooms."""

from __future__ import annotations

import csv
import datetime as dt
import io
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from _servers import API_KEY, RunningServer, server_settings, start_server

from meshroom import Role
from meshroom.auth import verify_token
from meshroom.client import JoinRefused, Peer, connect
from meshroom.service import RECORD_COLUMNS, TOTAL_COLUMNS

TIMEOUT = 10


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[RunningServer]:
    """conftest's server, with its HTTP app on (conftest turns it off)."""
    settings = server_settings(tmp_path, http_port=0)
    async with trio.open_nursery() as nursery:
        running = await start_server(nursery, settings)
        yield running
        running.server.request_shutdown()


async def _never_500(response: httpx.Response) -> None:
    assert response.status_code != 500, f"{response.request.method} {response.request.url}"


def client(server: RunningServer, key: str | None = API_KEY, **options: Any) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
    return httpx.AsyncClient(
        base_url=server.http_url,
        headers=headers,
        event_hooks={"response": [_never_500]},
        timeout=TIMEOUT,
        **options,
    )


@pytest.fixture
async def api(server: RunningServer) -> AsyncIterator[httpx.AsyncClient]:
    async with client(server) as http:
        yield http


async def create(api: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    body = {"title": "Standup", "hostEmpId": "alice"} | body
    response = await api.post("/api/meetings", json=body)
    assert response.status_code == 201, response.text
    return response.json()  # type: ignore[no-any-return]


async def live_meeting(api: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    return await create(api, start=True, **body)


async def token_for(api: httpx.AsyncClient, ref: str, emp_id: str, **body: Any) -> str:
    response = await api.post(f"/api/meetings/{ref}/tokens", json={"empId": emp_id, **body})
    assert response.status_code == 201, response.text
    return str(response.json()["token"])


async def join(
    stack: AsyncExitStack,
    server: RunningServer,
    api: httpx.AsyncClient,
    ref: str,
    emp_id: str,
    **body: Any,
) -> Peer:
    token = await token_for(api, ref, emp_id, **body)
    return await stack.enter_async_context(connect(server.url, token))


async def leave(server: RunningServer, meeting_id: str, peer: Peer) -> None:
    """``peer:leave``, then wait until the server is done with the peer (its row written)."""
    member = server.hub.rooms[meeting_id].peers[peer.emp_id]
    await peer.leave()
    await member.finished.wait()


def error_of(response: httpx.Response) -> dict[str, Any]:
    assert response.headers["content-type"].startswith("application/json"), response.text
    body = response.json()
    assert set(body) == {"error"}, body
    assert body["error"]["code"] and body["error"]["message"], body
    return body["error"]  # type: ignore[no-any-return]


def bad_fields(response: httpx.Response) -> set[str]:
    assert response.status_code == 400, response.text
    error = error_of(response)
    return {f["field"] for f in error.get("fields") or []}


def when(value: str | None) -> dt.datetime | None:
    return None if value is None else dt.datetime.fromisoformat(value)


# Meetings


async def test_create_meeting_returns_its_id_and_room_code(server, api):
    created = await create(api, title="Quarterly review", hostEmpId="e-100")
    assert created["title"] == "Quarterly review"
    assert created["hostEmpId"] == "e-100"
    assert created["status"] == "SCHEDULED"
    assert created["liveParticipants"] == 0
    assert created["startedAt"] is None and created["endedAt"] is None
    assert created["scheduledAt"] is None
    assert when(created["createdAt"]).tzinfo is not None
    stored = await server.store.get_meeting(created["id"])
    assert stored is not None and stored.room_code == created["roomCode"]

    at = dt.datetime(2031, 5, 17, 9, 30, tzinfo=dt.UTC)
    scheduled = await create(api, scheduledAt=at.isoformat())
    assert when(scheduled["scheduledAt"]) == at
    assert scheduled["status"] == "SCHEDULED"

    started = await create(api, start=True)
    assert started["status"] == "LIVE"
    assert when(started["startedAt"]) is not None


async def test_read_a_meeting_by_id_and_by_room_code_as_typed(api):
    created = await create(api)
    code = created["roomCode"]
    for ref in (
        created["id"],
        code,
        code.upper(),
        code.replace("-", ""),
        code.replace("-", "").upper(),
        code.replace("-", " "),
    ):
        response = await api.get(f"/api/meetings/{ref}")
        assert response.status_code == 200, (ref, response.text)
        assert response.json() == created, ref


async def test_list_meetings_paginates_newest_first_with_a_total(api):
    ids = [(await create(api, title=f"M{i}"))["id"] for i in range(5)]
    pages = []
    for offset in (0, 2, 4):
        response = await api.get("/api/meetings", params={"limit": 2, "offset": offset})
        assert response.status_code == 200, response.text
        page = response.json()
        assert page["total"] == 5
        assert page["limit"] == 2 and page["offset"] == offset
        pages.append(page["items"])
    assert [len(p) for p in pages] == [2, 2, 1]
    listed = [m for page in pages for m in page]
    assert sorted(m["id"] for m in listed) == sorted(ids)
    created_at = [when(m["createdAt"]) for m in listed]
    assert created_at == sorted(created_at, reverse=True)

    beyond = (await api.get("/api/meetings", params={"offset": 10})).json()
    assert beyond["items"] == [] and beyond["total"] == 5

    default = (await api.get("/api/meetings")).json()
    assert default["limit"] == 50 and default["offset"] == 0 and len(default["items"]) == 5


async def test_list_meetings_by_status(api):
    scheduled = {(await create(api))["id"] for _ in range(3)}
    live = {(await create(api, start=True))["id"] for _ in range(2)}
    ended = (await create(api))["id"]
    assert (await api.post(f"/api/meetings/{ended}/end")).status_code == 200
    expected = {"SCHEDULED": scheduled, "LIVE": live, "ENDED": {ended}}
    for status, ids in expected.items():
        page = (await api.get("/api/meetings", params={"status": status})).json()
        assert page["total"] == len(ids), status
        assert {m["id"] for m in page["items"]} == ids, status
        assert {m["status"] for m in page["items"]} == {status}
    one = (await api.get("/api/meetings", params={"status": "SCHEDULED", "limit": 1})).json()
    assert len(one["items"]) == 1 and one["total"] == 3


async def test_start_then_end_a_meeting(api):
    meeting = await create(api)
    started = await api.post(f"/api/meetings/{meeting['id']}/start")
    assert started.status_code == 200, started.text
    assert started.json()["status"] == "LIVE"
    assert when(started.json()["startedAt"]) is not None

    again = await api.post(f"/api/meetings/{meeting['id']}/start")
    assert again.status_code == 409
    assert error_of(again)["code"] == "INVALID_TRANSITION"

    ended = await api.post(f"/api/meetings/{meeting['roomCode'].upper()}/end")
    assert ended.status_code == 200, ended.text
    assert ended.json()["status"] == "ENDED"
    assert when(ended.json()["endedAt"]) >= when(started.json()["startedAt"])

    for action in ("start", "end"):
        response = await api.post(f"/api/meetings/{meeting['id']}/{action}")
        assert response.status_code == 409, action
        assert error_of(response)["code"] == "INVALID_TRANSITION"
    assert (await api.get(f"/api/meetings/{meeting['id']}")).json()["status"] == "ENDED"


async def test_a_scheduled_meeting_can_be_ended_without_starting(api):
    meeting = await create(api)
    ended = await api.post(f"/api/meetings/{meeting['id']}/end")
    assert ended.status_code == 200 and ended.json()["status"] == "ENDED"
    assert ended.json()["startedAt"] is None


# Tokens


async def test_minted_token_verifies_and_joins_the_room(server, api):
    meeting = await live_meeting(api)
    before = dt.datetime.now(dt.UTC).replace(microsecond=0)
    response = await api.post(
        f"/api/meetings/{meeting['roomCode']}/tokens",
        json={"empId": "e-42", "displayName": "Ada L.", "role": "COHOST", "ttlSeconds": 600},
    )
    assert response.status_code == 201, response.text
    issued = response.json()
    assert issued["meetingId"] == meeting["id"]
    assert issued["empId"] == "e-42" and issued["role"] == "COHOST"
    assert issued["signalingPath"] == "/meetings"
    expires = when(issued["expiresAt"])
    assert before + dt.timedelta(seconds=600) <= expires
    assert expires <= dt.datetime.now(dt.UTC) + dt.timedelta(seconds=601)

    claims = verify_token(server.settings.token_keys(), issued["token"])
    assert claims.meeting_id == meeting["id"]
    assert claims.emp_id == "e-42"
    assert claims.display_name == "Ada L."
    assert claims.role is Role.COHOST

    with trio.fail_after(TIMEOUT):
        async with connect(server.url, issued["token"]) as peer:
            assert peer.emp_id == "e-42" and peer.role == "COHOST"
            assert peer.snapshot["meeting"]["id"] == meeting["id"]
            assert peer.snapshot["self"]["displayName"] == "Ada L."


async def test_token_defaults_participant_role_and_emp_id_as_name(server, api):
    meeting = await live_meeting(api)
    token = await token_for(api, meeting["id"], "e-9")
    claims = verify_token(server.settings.token_keys(), token)
    assert claims.role is Role.PARTICIPANT and claims.display_name == "e-9"
    assert claims.expires_at - claims.issued_at == dt.timedelta(seconds=7200)


# Live participants and moderation


async def test_participants_lists_live_peers_with_roles_and_presence(server, api):
    meeting = await live_meeting(api, hostEmpId="alice")
    ref = meeting["id"]
    assert (await api.get(f"/api/meetings/{ref}/participants")).json() == {
        "meetingId": ref,
        "participants": [],
    }
    with trio.fail_after(TIMEOUT):
        async with AsyncExitStack() as stack:
            alice = await join(stack, server, api, ref, "alice", role="HOST", displayName="Alice")
            bob = await join(stack, server, api, ref, "bob", displayName="Bob")
            await bob.set_presence(muted=True, handRaised=True)
            await alice.wait_for("presence:updated", empId="bob")

            response = await api.get(f"/api/meetings/{meeting['roomCode']}/participants")
            assert response.status_code == 200, response.text
            body = response.json()
            assert body["meetingId"] == ref
            people = {p["empId"]: p for p in body["participants"]}
            assert set(people) == {"alice", "bob"}
            assert people["alice"]["role"] == "HOST"
            assert people["alice"]["displayName"] == "Alice"
            assert people["alice"]["presence"] == {
                "muted": False,
                "cameraOff": False,
                "handRaised": False,
            }
            assert people["bob"]["role"] == "PARTICIPANT"
            assert people["bob"]["presence"] == {
                "muted": True,
                "cameraOff": False,
                "handRaised": True,
            }
            assert people["bob"]["secondsPresent"] >= 0
            assert when(people["bob"]["joinedAt"]) >= when(people["alice"]["joinedAt"])

            live = (await api.get(f"/api/meetings/{ref}")).json()
            assert live["liveParticipants"] == 2


async def test_kick_closes_the_peers_socket_with_4005(server, api):
    meeting = await live_meeting(api)
    ref = meeting["id"]
    with trio.fail_after(TIMEOUT):
        async with AsyncExitStack() as stack:
            alice = await join(stack, server, api, ref, "alice", role="HOST")
            bob = await join(stack, server, api, ref, "bob")
            await alice.wait_for("peer:joined", empId="bob")

            response = await api.post(f"/api/meetings/{ref}/participants/bob/kick")
            assert response.status_code == 200, response.text
            assert response.json() == {"meetingId": ref, "empId": "bob", "kicked": True}
            # Effective by the time the API answers: bob's leave is already written.
            rows = await server.store.attendance_for_meeting(ref)
            assert [(r.emp_id, r.leave_reason) for r in rows if r.left_at] == [("bob", "kicked")]

            notice = await bob.wait_for("session:closed")
            assert notice.data["reason"] == "kicked" and notice.data["by"] == "api"
            assert await bob.wait_closed() == 4005
            left = await alice.wait_for("peer:left", empId="bob")
            assert left.data["reason"] == "kicked"

            again = await api.post(f"/api/meetings/{ref}/participants/bob/kick")
            assert again.status_code == 404
            assert error_of(again)["code"] == "NOT_PRESENT"

            # A kick is not a ban: bob may come back.
            back = await join(stack, server, api, ref, "bob")
            assert back.emp_id == "bob"


async def test_kick_someone_absent_is_404(api):
    meeting = await live_meeting(api)
    for ref in (meeting["id"], meeting["roomCode"]):
        response = await api.post(f"/api/meetings/{ref}/participants/nobody/kick")
        assert response.status_code == 404
        assert error_of(response)["code"] == "NOT_PRESENT"
    unknown = await api.post("/api/meetings/no-such-meeting/participants/bob/kick")
    assert unknown.status_code == 404
    assert error_of(unknown)["code"] == "MEETING_NOT_FOUND"


async def test_ban_of_a_live_peer_closes_it_with_4004_and_keeps_it_out(server, api):
    meeting = await live_meeting(api)
    ref = meeting["id"]
    with trio.fail_after(TIMEOUT):
        async with AsyncExitStack() as stack:
            alice = await join(stack, server, api, ref, "alice", role="HOST")
            bob = await join(stack, server, api, ref, "bob")
            await alice.wait_for("peer:joined", empId="bob")

            response = await api.post(
                f"/api/meetings/{ref}/bans", json={"empId": "bob", "reason": "spam"}
            )
            assert response.status_code == 201, response.text
            ban = response.json()
            assert ban["meetingId"] == ref and ban["empId"] == "bob"
            assert ban["bannedBy"] == "api" and ban["reason"] == "spam"
            assert when(ban["bannedAt"]) is not None
            assert await bob.wait_closed() == 4004
            left = await alice.wait_for("peer:left", empId="bob")
            assert left.data["reason"] == "banned"

            fresh = await token_for(api, ref, "bob")
            with pytest.raises(JoinRefused) as refused:
                async with connect(server.url, fresh):
                    pass
            assert refused.value.code == "BANNED"
            assert refused.value.close_code == 4004

            bans = (await api.get(f"/api/meetings/{meeting['roomCode']}/bans")).json()
            assert bans["meetingId"] == ref
            assert [b["empId"] for b in bans["bans"]] == ["bob"]

            lifted = await api.delete(f"/api/meetings/{ref}/bans/bob")
            assert lifted.status_code == 204 and lifted.content == b""
            assert (await api.get(f"/api/meetings/{ref}/bans")).json()["bans"] == []
            back = await join(stack, server, api, ref, "bob")
            assert back.emp_id == "bob"

            twice = await api.delete(f"/api/meetings/{ref}/bans/bob")
            assert twice.status_code == 404
            assert error_of(twice)["code"] == "NOT_BANNED"


async def test_pre_emptive_ban_of_someone_never_seen(server, api):
    meeting = await live_meeting(api)
    ref = meeting["id"]
    response = await api.post(f"/api/meetings/{ref}/bans", json={"empId": "mallory"})
    assert response.status_code == 201, response.text
    assert response.json()["reason"] is None
    assert [b["empId"] for b in (await api.get(f"/api/meetings/{ref}/bans")).json()["bans"]] == [
        "mallory"
    ]
    with trio.fail_after(TIMEOUT):
        token = await token_for(api, ref, "mallory")
        with pytest.raises(JoinRefused) as refused:
            async with connect(server.url, token):
                pass
        assert refused.value.code == "BANNED" and refused.value.close_code == 4004
    # Nobody else is affected, and banning twice is harmless.
    assert (
        await api.post(f"/api/meetings/{ref}/bans", json={"empId": "mallory"})
    ).status_code == 201
    assert len((await api.get(f"/api/meetings/{ref}/bans")).json()["bans"]) == 1
    assert (await api.delete(f"/api/meetings/{ref}/bans/someone-else")).status_code == 404


# Ending a meeting with people in it


async def test_ending_over_http_closes_every_peer_with_4006_and_writes_attendance(server, api):
    meeting = await live_meeting(api)
    ref = meeting["id"]
    names = ["alice", "bob", "carol"]
    with trio.fail_after(TIMEOUT):
        async with AsyncExitStack() as stack:
            peers = {}
            for name in names:
                peers[name] = await join(
                    stack, server, api, ref, name, role="HOST" if name == "alice" else "PARTICIPANT"
                )
            await peers["alice"].wait_for("peer:joined", empId="carol")
            assert (await api.get(f"/api/meetings/{ref}")).json()["liveParticipants"] == 3

            response = await api.post(f"/api/meetings/{ref}/end")
            assert response.status_code == 200, response.text
            assert response.json()["status"] == "ENDED"
            assert response.json()["liveParticipants"] == 0

            # By the time the API answers, every row is closed, and by the meeting's end.
            rows = await server.store.attendance_for_meeting(ref)
            assert sorted(r.emp_id for r in rows) == names
            for row in rows:
                assert row.left_at is not None, row
                assert row.leave_reason == "meeting-ended", row
                assert row.duration_seconds is not None and row.duration_seconds >= 0
            assert server.hub.rooms.get(ref) is None

            for name, peer in peers.items():
                events = [event async for event in peer]
                assert events, name
                assert events[-1].name == "meeting:ended", (name, events)
                assert events[-1].data == {"by": "api"}
                assert await peer.wait_closed() == 4006, name

    attendance = (await api.get(f"/api/meetings/{ref}/attendance")).json()
    assert {r["leaveReason"] for r in attendance["records"]} == {"meeting-ended"}
    assert not any(t["present"] for t in attendance["totals"])
    assert (await api.get(f"/api/meetings/{ref}/participants")).json()["participants"] == []

    late = await token_for(api, ref, "dave")
    with trio.fail_after(TIMEOUT), pytest.raises(JoinRefused) as refused:
        async with connect(server.url, late):
            pass
    assert refused.value.code == "MEETING_ENDED" and refused.value.close_code == 4006


# Attendance


async def test_attendance_json_has_records_and_totals(server, api):
    meeting = await live_meeting(api)
    ref = meeting["id"]
    with trio.fail_after(TIMEOUT):
        async with AsyncExitStack() as stack:
            alice = await join(stack, server, api, ref, "alice", role="HOST", displayName="Alice")
            async with connect(server.url, await token_for(api, ref, "bob")) as bob:
                await alice.wait_for("peer:joined", empId="bob")
                await leave(server, ref, bob)
                await alice.wait_for("peer:left", empId="bob")
            bob = await join(stack, server, api, ref, "bob")
            await alice.wait_for("peer:joined", empId="bob")

            body = (await api.get(f"/api/meetings/{meeting['roomCode']}/attendance")).json()
            assert set(body) == {"records", "totals"}
            records = body["records"]
            assert [(r["empId"], r["leaveReason"]) for r in records] == [
                ("alice", None),
                ("bob", "left"),
                ("bob", None),
            ]
            assert all(r["meetingId"] == ref for r in records)
            assert records[0]["role"] == "HOST" and records[0]["displayName"] == "Alice"
            assert records[1]["durationSeconds"] >= 0
            assert when(records[1]["leftAt"]) >= when(records[1]["joinedAt"])
            assert records[2]["leftAt"] is None and records[2]["durationSeconds"] is None
            totals = {t["empId"]: t for t in body["totals"]}
            assert [t["empId"] for t in body["totals"]] == ["alice", "bob"]
            assert totals["bob"]["sessions"] == 2 and totals["bob"]["present"] is True
            assert totals["alice"]["sessions"] == 1 and totals["alice"]["present"] is True
            assert totals["bob"]["totalSeconds"] >= records[1]["durationSeconds"]
            assert when(totals["bob"]["lastLeftAt"]) == when(records[1]["leftAt"])
            assert totals["alice"]["lastLeftAt"] is None
            assert when(totals["bob"]["firstJoinedAt"]) == when(records[1]["joinedAt"])

            room = server.hub.rooms[ref]
            await bob.leave()
            await alice.leave()
            await room.done.wait()  # the room closes once every peer's row is written

    # Everybody gone: nobody present, every row closed.
    body = (await api.get(f"/api/meetings/{ref}/attendance")).json()
    assert all(r["leftAt"] is not None for r in body["records"])
    assert not any(t["present"] for t in body["totals"])

    empty = await live_meeting(api)
    assert (await api.get(f"/api/meetings/{empty['id']}/attendance")).json() == {
        "records": [],
        "totals": [],
    }


def parse_csv(response: httpx.Response) -> list[list[str]]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/csv"), response.headers
    disposition = response.headers["content-disposition"]
    assert disposition.startswith("attachment;") and ".csv" in disposition
    return list(csv.reader(io.StringIO(response.text)))


async def test_attendance_csv_records_and_totals(server, api):
    meeting = await live_meeting(api)
    ref = meeting["id"]
    with trio.fail_after(TIMEOUT):
        async with AsyncExitStack() as stack:
            alice = await join(stack, server, api, ref, "alice", role="HOST", displayName="Alice")
            async with connect(
                server.url, await token_for(api, ref, "bob", displayName="Smith, Bob")
            ) as bob:
                await alice.wait_for("peer:joined", empId="bob")
                await leave(server, ref, bob)
            as_json = (await api.get(f"/api/meetings/{ref}/attendance")).json()

            response = await api.get(f"/api/meetings/{ref}/attendance", params={"format": "csv"})
            assert (
                f"attendance-{meeting['roomCode']}-records.csv"
                in response.headers["content-disposition"]
            )
            rows = parse_csv(response)
            assert tuple(rows[0]) == RECORD_COLUMNS
            assert len(rows) == 3
            by_emp = {row[2]: dict(zip(RECORD_COLUMNS, row, strict=True)) for row in rows[1:]}
            assert by_emp["alice"]["display_name"] == "Alice"
            assert by_emp["alice"]["role"] == "HOST"
            assert by_emp["alice"]["left_at"] == "" and by_emp["alice"]["leave_reason"] == ""
            assert by_emp["bob"]["display_name"] == "Smith, Bob"
            assert by_emp["bob"]["meeting_id"] == ref
            assert by_emp["bob"]["leave_reason"] == "left"
            json_bob = next(r for r in as_json["records"] if r["empId"] == "bob")
            assert int(by_emp["bob"]["id"]) == json_bob["id"]
            assert float(by_emp["bob"]["duration_seconds"]) == pytest.approx(
                json_bob["durationSeconds"]
            )
            assert dt.datetime.fromisoformat(by_emp["bob"]["joined_at"]) == when(
                json_bob["joinedAt"]
            )
            assert dt.datetime.fromisoformat(by_emp["bob"]["left_at"]) == when(json_bob["leftAt"])

            totals = parse_csv(
                await api.get(
                    f"/api/meetings/{ref}/attendance", params={"format": "csv", "view": "totals"}
                )
            )
            assert tuple(totals[0]) == TOTAL_COLUMNS
            table = {row[0]: dict(zip(TOTAL_COLUMNS, row, strict=True)) for row in totals[1:]}
            assert set(table) == {"alice", "bob"}
            assert table["bob"]["sessions"] == "1"
            assert table["bob"]["present"] == "False" and table["alice"]["present"] == "True"
            assert float(table["bob"]["total_seconds"]) == pytest.approx(
                json_bob["durationSeconds"], abs=0.001
            )
            assert table["alice"]["last_left_at"] == ""

            records_view = await api.get(
                f"/api/meetings/{ref}/attendance", params={"format": "csv", "view": "records"}
            )
            assert parse_csv(records_view) == rows


async def test_csv_neutralises_a_display_name_that_looks_like_a_formula(server, api):
    meeting = await live_meeting(api)
    ref = meeting["id"]
    evil = '=HYPERLINK("http://evil.example","click")'
    with trio.fail_after(TIMEOUT):
        async with connect(server.url, await token_for(api, ref, "eve", displayName=evil)):
            pass
    for view, column in (("records", "display_name"), ("totals", "display_name")):
        rows = parse_csv(
            await api.get(f"/api/meetings/{ref}/attendance", params={"format": "csv", "view": view})
        )
        header = rows[0]
        (row,) = rows[1:]
        cell = row[header.index(column)]
        assert not cell.startswith(("=", "+", "-", "@")), cell
        assert cell.endswith(evil), cell
    # JSON keeps the name as it is.
    body = (await api.get(f"/api/meetings/{ref}/attendance")).json()
    assert body["records"][0]["displayName"] == evil


async def test_employee_attendance_across_meetings_in_a_date_range(server, api):
    first = await live_meeting(api, title="First")
    second = await live_meeting(api, title="Second")
    other = await live_meeting(api, title="Without bob")
    with trio.fail_after(TIMEOUT):
        for meeting in (first, second):
            async with connect(server.url, await token_for(api, meeting["id"], "bob")) as bob:
                await leave(server, meeting["id"], bob)
        async with connect(server.url, await token_for(api, other["id"], "alice")):
            pass

    everything = await api.get("/api/employees/bob/attendance")
    assert everything.status_code == 200, everything.text
    records = everything.json()["records"]
    assert [r["meetingId"] for r in records] == [first["id"], second["id"]]
    assert all(r["empId"] == "bob" for r in records)
    (total,) = everything.json()["totals"]
    assert total["empId"] == "bob" and total["sessions"] == 2 and total["present"] is False

    second_joined = when(records[1]["joinedAt"])

    async def meetings_in(**params: str) -> list[str]:
        response = await api.get("/api/employees/bob/attendance", params=params)
        assert response.status_code == 200, (params, response.text)
        return [r["meetingId"] for r in response.json()["records"]]

    # [from, to): from is inclusive, to exclusive.
    assert await meetings_in(**{"from": second_joined.isoformat()}) == [second["id"]]
    assert await meetings_in(to=second_joined.isoformat()) == [first["id"]]
    assert await meetings_in(
        **{"from": when(records[0]["joinedAt"]).isoformat(), "to": second_joined.isoformat()}
    ) == [first["id"]]
    later = second_joined + dt.timedelta(hours=1)
    assert await meetings_in(**{"from": later.isoformat()}) == []
    # The same instants written in another UTC offset select the same rows.
    plus_five = dt.timezone(dt.timedelta(hours=5))
    assert await meetings_in(**{"from": second_joined.astimezone(plus_five).isoformat()}) == [
        second["id"]
    ]
    assert await meetings_in(to=second_joined.astimezone(plus_five).isoformat()) == [first["id"]]
    # Whole days: the day of the joins is in [day, day + 1).
    day = second_joined.date()
    next_day = day + dt.timedelta(days=1)
    assert await meetings_in(**{"from": day.isoformat(), "to": next_day.isoformat()}) == [
        first["id"],
        second["id"],
    ]
    assert await meetings_in(**{"from": next_day.isoformat()}) == []

    rows = parse_csv(
        await api.get(
            "/api/employees/bob/attendance",
            params={"format": "csv", "view": "totals", "from": day.isoformat()},
        )
    )
    assert tuple(rows[0]) == TOTAL_COLUMNS
    assert rows[1][:3] == ["bob", "bob", "2"]

    nobody = (await api.get("/api/employees/nobody/attendance")).json()
    assert nobody == {"records": [], "totals": []}


# Errors


async def test_missing_or_wrong_api_key_is_401_json(server):
    cases: list[dict[str, str]] = [
        {},
        {"Authorization": ""},
        {"Authorization": "Bearer"},
        {"Authorization": f"Basic {API_KEY}"},
        {"Authorization": f"Token {API_KEY}"},
        {"Authorization": API_KEY},
        {"Authorization": "Bearer wrong-key-0123456789"},
        {"Authorization": f"Bearer {API_KEY}x"},
        {"Authorization": f"Bearer {API_KEY[:-1]}"},
        {"X-Api-Key": API_KEY},
    ]
    async with client(server, key=None) as anonymous:
        for headers in cases:
            for method, path in (
                ("GET", "/api/meetings"),
                ("POST", "/api/meetings"),
                ("GET", "/api/meetings/whatever"),
                ("GET", "/api/nowhere"),
            ):
                response = await anonymous.request(
                    method, path, headers=headers, json={"title": "x", "hostEmpId": "h"}
                )
                assert response.status_code == 401, (headers, method, path, response.text)
                assert error_of(response)["code"] == "UNAUTHORIZED"
                assert response.headers["www-authenticate"].startswith("Bearer")
        # Nothing was created by the refused calls.
        assert await server.store.list_meetings() == ([], 0)
        # The scheme is case-insensitive, as HTTP says.
        ok = await anonymous.get("/api/meetings", headers={"Authorization": f"bearer {API_KEY}"})
        assert ok.status_code == 200


async def test_every_documented_endpoint_requires_the_key(server, api):
    spec = (await api.get("/openapi.json")).json()
    meeting = await live_meeting(api)
    async with client(server, key=None) as anonymous:
        count = 0
        for path, operations in spec["paths"].items():
            if not path.startswith("/api/"):
                continue
            url = (
                path.replace("{ref}", meeting["id"])
                .replace("{emp_id}", "bob")
                .replace("{empId}", "bob")
                .replace("{endpoint_id}", "ep_1")
                .replace("{delivery_id}", "1")
            )
            assert "{" not in url, path
            for method in operations:
                if method not in ("get", "post", "put", "patch", "delete"):
                    continue
                response = await anonymous.request(method.upper(), url, json={})
                assert response.status_code == 401, (method, path)
                count += 1
        assert count == 22


async def test_several_api_keys_are_accepted(tmp_path):
    keys = "first-key-0123456789,second-key-0123456789"
    settings = server_settings(tmp_path, http_port=0, api_keys=keys)
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            running = await start_server(nursery, settings)
            for key in keys.split(","):
                async with client(running, key=key) as http:
                    assert (await http.get("/api/meetings")).status_code == 200
            async with client(running) as http:  # conftest's key is not one of these
                assert (await http.get("/api/meetings")).status_code == 401
            running.server.request_shutdown()


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        ({"title": "", "hostEmpId": "h"}, {"title"}),
        ({"title": "x" * 201, "hostEmpId": "h"}, {"title"}),
        ({"hostEmpId": "h"}, {"title"}),
        ({"title": "T"}, {"hostEmpId"}),
        ({"title": "T", "hostEmpId": ""}, {"hostEmpId"}),
        ({"title": "T", "hostEmpId": "has space"}, {"hostEmpId"}),
        ({"title": 7, "hostEmpId": "h"}, {"title"}),
        ({"title": "T", "hostEmpId": "h", "scheduledAt": "next tuesday"}, {"scheduledAt"}),
        ({"title": "T", "hostEmpId": "h", "start": "maybe"}, {"start"}),
        ({"title": "T", "hostEmpId": "h", "colour": "red"}, {"colour"}),
        ({"title": "", "colour": "red"}, {"title", "hostEmpId", "colour"}),
    ],
)
async def test_create_meeting_rejects_bad_input_naming_the_fields(server, api, body, fields):
    response = await api.post("/api/meetings", json=body)
    assert bad_fields(response) == fields
    assert error_of(response)["code"] == "INVALID_INPUT"
    assert await server.store.list_meetings() == ([], 0)


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        ({}, {"empId"}),
        ({"empId": ""}, {"empId"}),
        ({"empId": "bob", "role": "king"}, {"role"}),
        ({"empId": "bob", "role": 1}, {"role"}),
        ({"empId": "bob", "ttlSeconds": 10}, {"ttlSeconds"}),
        ({"empId": "bob", "ttlSeconds": 8 * 24 * 3600}, {"ttlSeconds"}),
        ({"empId": "bob", "ttlSeconds": -1}, {"ttlSeconds"}),
        ({"empId": "bob", "ttlSeconds": "long"}, {"ttlSeconds"}),
        ({"empId": "bob", "displayName": ""}, {"displayName"}),
        ({"empId": "bob", "meetingId": "another"}, {"meetingId"}),
    ],
)
async def test_issue_token_rejects_bad_input_naming_the_fields(api, body, fields):
    meeting = await live_meeting(api)
    response = await api.post(f"/api/meetings/{meeting['id']}/tokens", json=body)
    assert bad_fields(response) == fields


async def test_ban_rejects_bad_input(api):
    meeting = await live_meeting(api)
    url = f"/api/meetings/{meeting['id']}/bans"
    assert bad_fields(await api.post(url, json={})) == {"empId"}
    assert bad_fields(await api.post(url, json={"empId": "bob", "reason": "x" * 501})) == {"reason"}
    assert bad_fields(await api.post(url, json={"empId": "bob", "until": "never"})) == {"until"}
    assert (await api.get(url)).json()["bans"] == []


@pytest.mark.parametrize(
    ("content", "content_type"),
    [
        (b"{not json", "application/json"),
        (b'{"title": "T", "hostEmpId": ', "application/json"),
        (b"", "application/json"),
        (b"[]", "application/json"),
        (b'"a string"', "application/json"),
        (b"null", "application/json"),
        (b"title=T&hostEmpId=h", "application/x-www-form-urlencoded"),
        (b"title: T", "text/plain"),
        (b"\xff\xfe\x00garbage", "application/octet-stream"),
        (b"", None),
    ],
)
async def test_a_body_that_is_not_a_json_object_is_400(server, api, content, content_type):
    headers = {"Content-Type": content_type} if content_type else {}
    response = await api.post("/api/meetings", content=content, headers=headers)
    assert bad_fields(response) == {"body"}
    assert error_of(response)["code"] in ("INVALID_INPUT", "BAD_REQUEST")
    assert await server.store.list_meetings() == ([], 0)


async def test_malformed_json_says_so(api):
    response = await api.post(
        "/api/meetings", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    error = error_of(response)
    assert error["code"] == "BAD_REQUEST"
    assert "JSON" in error["message"]
    assert error["fields"] == [{"field": "body", "problem": "not valid JSON"}]


@pytest.mark.parametrize(
    ("path", "params", "fields"),
    [
        ("/api/meetings", {"limit": "0"}, {"limit"}),
        ("/api/meetings", {"limit": "501"}, {"limit"}),
        ("/api/meetings", {"limit": "ten"}, {"limit"}),
        ("/api/meetings", {"offset": "-1"}, {"offset"}),
        ("/api/meetings", {"status": "FOO"}, {"status"}),
        ("/api/meetings", {"status": "live"}, {"status"}),
        ("/api/meetings", {"sort": "title"}, {"sort"}),
        ("ATTENDANCE", {"format": "xml"}, {"format"}),
        ("ATTENDANCE", {"view": "everything"}, {"view"}),
        ("/api/employees/bob/attendance", {"from": "yesterday"}, {"from"}),
        ("/api/employees/bob/attendance", {"to": "2024-13-40"}, {"to"}),
        ("/api/employees/bob/attendance", {"format": "pdf"}, {"format"}),
    ],
)
async def test_bad_query_parameters_are_400(api, path, params, fields):
    if path == "ATTENDANCE":
        path = f"/api/meetings/{(await live_meeting(api))['id']}/attendance"
    response = await api.get(path, params=params)
    assert bad_fields(response) == fields


async def test_unknown_meeting_is_404_on_every_meeting_endpoint(api):
    for ref in ("no-such-meeting", "abc-defg-hjk", "00000000-0000-0000-0000-000000000000"):
        calls = [
            ("GET", f"/api/meetings/{ref}", None),
            ("POST", f"/api/meetings/{ref}/start", None),
            ("POST", f"/api/meetings/{ref}/end", None),
            ("POST", f"/api/meetings/{ref}/tokens", {"empId": "bob"}),
            ("GET", f"/api/meetings/{ref}/participants", None),
            ("POST", f"/api/meetings/{ref}/participants/bob/kick", None),
            ("POST", f"/api/meetings/{ref}/bans", {"empId": "bob"}),
            ("GET", f"/api/meetings/{ref}/bans", None),
            ("DELETE", f"/api/meetings/{ref}/bans/bob", None),
            ("GET", f"/api/meetings/{ref}/attendance", None),
            ("GET", f"/api/meetings/{ref}/attendance?format=csv", None),
        ]
        for method, url, body in calls:
            response = await api.request(method, url, json=body)
            assert response.status_code == 404, (method, url, response.text)
            error = error_of(response)
            assert error["code"] == "MEETING_NOT_FOUND", (method, url)
            assert ref in error["message"]


async def test_unknown_api_path_is_404_json(api):
    for method, path in (
        ("GET", "/api/nowhere"),
        ("GET", "/api/meetings/x/y/z"),
        ("POST", "/api/employees"),
        ("DELETE", "/api/meetings/x/participants"),
        ("GET", "/api/"),
    ):
        response = await api.request(method, path)
        assert response.status_code == 404, (method, path, response.text)
        assert error_of(response)["code"] == "NOT_FOUND"


async def test_wrong_method_on_a_known_path_is_a_json_client_error(api):
    meeting = await create(api)
    for method, path in (
        ("PUT", "/api/meetings"),
        ("DELETE", "/api/meetings"),
        ("GET", f"/api/meetings/{meeting['id']}/start"),
        ("PATCH", f"/api/meetings/{meeting['id']}"),
    ):
        response = await api.request(method, path)
        assert response.status_code in (404, 405), (method, path, response.text)
        error_of(response)
    assert (await api.get(f"/api/meetings/{meeting['id']}")).json()["status"] == "SCHEDULED"


async def test_an_oversized_body_is_413_json(api):
    response = await api.post(
        "/api/meetings", json={"title": "T", "hostEmpId": "h", "pad": "x" * (2 * 1024 * 1024)}
    )
    assert response.status_code == 413, response.text
    assert error_of(response)["code"] == "TOO_LARGE"
