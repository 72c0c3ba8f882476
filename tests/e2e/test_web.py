"""The browser side over real HTTP: the JS client, the demo page and its join endpoint."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from _servers import RunningServer, server_settings

from meshroom import Role
from meshroom.auth import verify_token
from meshroom.client import connect
from meshroom.http import create_app
from meshroom.http import web as web_module
from meshroom.http.extension import Meshroom
from meshroom.http.web import DemoLimits

TIMEOUT = 10


@pytest.fixture
async def http(e2e_server: RunningServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=e2e_server.http_url, timeout=TIMEOUT) as client:
        yield client


async def join(http: httpx.AsyncClient, **body: Any) -> httpx.Response:
    return await http.post("/demo/join", json=body)


async def test_static_files_are_served_with_a_strict_policy(http: httpx.AsyncClient) -> None:
    page = await http.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "default-src 'self'" in policy and "unsafe" not in policy
    assert '<script type="module" src="app.js">' in page.text
    for path, kind in (
        ("/meshroom.js", "text/javascript"),
        ("/app.js", "text/javascript"),
        ("/style.css", "text/css"),
    ):
        response = await http.get(path)
        assert response.status_code == 200, path
        assert response.headers["content-type"].startswith(kind), path
    client = await http.get("/meshroom.js")
    assert "export class MeshroomClient" in client.text
    assert client.headers["access-control-allow-origin"] == "*"


async def test_create_makes_a_live_meeting_and_a_host_token(
    http: httpx.AsyncClient, e2e_server: RunningServer
) -> None:
    response = await join(http, displayName="  Ada   Lovelace ", create=True, title="Standup")
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["role"] == "HOST"
    assert body["signalingPath"] == "/meetings"
    assert body["meeting"]["title"] == "Standup"
    claims = verify_token(e2e_server.settings.token_keys(), body["token"])
    assert claims.role is Role.HOST
    assert claims.display_name == "Ada Lovelace"
    assert claims.emp_id == body["empId"] and claims.emp_id.startswith("demo-")
    async with connect(e2e_server.url, body["token"]) as peer:
        assert peer.snapshot["meeting"]["roomCode"] == body["meeting"]["roomCode"]
        assert peer.snapshot["self"]["role"] == "HOST"


async def test_join_by_room_code_as_typed_gives_a_participant_token(
    http: httpx.AsyncClient, e2e_server: RunningServer
) -> None:
    created = (await join(http, displayName="Ada", create=True)).json()
    assert created["meeting"]["title"] == "Ada's meeting"
    typed = created["meeting"]["roomCode"].upper().replace("-", " ")
    response = await join(http, displayName="Grace", roomCode=typed)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["role"] == "PARTICIPANT"
    assert body["meeting"] == created["meeting"]
    assert body["empId"] != created["empId"]
    claims = verify_token(e2e_server.settings.token_keys(), body["token"])
    assert claims.meeting_id == created["meeting"]["id"]


async def test_join_refuses_unknown_ended_and_non_demo_meetings(
    http: httpx.AsyncClient, e2e_server: RunningServer
) -> None:
    unknown = await join(http, displayName="Grace", roomCode="abc-defg-hjk")
    assert (unknown.status_code, unknown.json()["error"]["code"]) == (404, "MEETING_NOT_FOUND")
    garbage = await join(http, displayName="Grace", roomCode="not a code")
    assert garbage.status_code == 404

    # A meeting made with the admin API (or the CLI) can never be joined through the demo.
    api_meeting = await e2e_server.meeting(host="alice")
    refused = await join(http, displayName="Mallory", roomCode=api_meeting.room_code)
    assert refused.status_code == 404

    created = (await join(http, displayName="Ada", create=True)).json()
    await e2e_server.hub.end_meeting(created["meeting"]["id"], by="test")
    ended = await join(http, displayName="Grace", roomCode=created["meeting"]["roomCode"])
    assert (ended.status_code, ended.json()["error"]["code"]) == (410, "MEETING_ENDED")


async def test_join_refuses_a_full_room(
    http: httpx.AsyncClient, e2e_server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(web_module, "ROOM_LIMIT", 2)
    host = (await join(http, displayName="Ada", create=True)).json()
    code = host["meeting"]["roomCode"]
    guest = (await join(http, displayName="Grace", roomCode=code)).json()
    async with connect(e2e_server.url, host["token"]) as ada:
        async with connect(e2e_server.url, guest["token"]) as grace:
            full = await join(http, displayName="Alan", roomCode=code)
            assert full.status_code == 409
            assert full.json()["error"] == {
                "code": "ROOM_FULL",
                "message": "the meeting is full (2 people)",
                "limit": 2,
            }
            with trio.fail_after(TIMEOUT):
                await grace.leave()
                await ada.wait_for("peer:left", empId=guest["empId"])
        # Grace is out of the room (peer:left is sent as she is removed): room for one more.
        assert (await join(http, displayName="Alan", roomCode=code)).status_code == 200


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"displayName": ""},
        {"displayName": "x" * 61, "create": True},
        {"displayName": "Ada"},  # neither create nor roomCode
        {"displayName": "Ada\u0007", "create": True},
        {"displayName": "Ada", "create": True, "role": "HOST"},  # no role to choose
        {"displayName": "Ada", "create": True, "empId": "alice"},  # no id to choose
        {"displayName": "Ada", "create": "yes please"},
        [],
    ],
)
async def test_join_validates_its_input(http: httpx.AsyncClient, body: Any) -> None:
    response = await http.post("/demo/join", json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "INVALID_INPUT"


async def test_creating_meetings_is_rate_limited(http: httpx.AsyncClient) -> None:
    statuses = [
        (await join(http, displayName="Ada", create=True)).status_code
        for _ in range(DemoLimits.create_burst + 1)
    ]
    assert statuses == [201] * DemoLimits.create_burst + [429]
    limited = await join(http, displayName="Ada", create=True)
    assert limited.json()["error"]["code"] == "RATE_LIMITED"
    assert int(limited.headers["retry-after"]) >= 1


def test_limits_refill_over_time() -> None:
    limits = DemoLimits(create_burst=2, create_per_second=0.5)
    assert [limits.allow("create", "a", now=0.0) for _ in range(2)] == [0.0, 0.0]
    assert limits.allow("create", "a", now=0.0) == pytest.approx(2.0)
    assert limits.allow("create", "b", now=0.0) == 0.0  # per address
    assert limits.allow("join", "a", now=0.0) == 0.0  # per kind
    assert limits.allow("create", "a", now=2.0) == 0.0  # one token back after 2 s
    assert limits.allow("create", "a", now=2.0) > 0


def _rules(app: Any) -> set[str]:
    return {rule.rule for rule in app.url_map.iter_rules()}


def test_demo_off_registers_no_demo_route_but_keeps_the_client(tmp_path: Path) -> None:
    app = create_app(server_settings(tmp_path, demo=False))
    rules = _rules(app)
    assert "/meshroom.js" in rules
    assert not {"/", "/app.js", "/style.css", "/demo/join"} & rules


def test_demo_is_on_by_default_and_follows_the_url_prefix(tmp_path: Path) -> None:
    from quart_trio import QuartTrio

    assert server_settings(tmp_path).demo is True
    app = QuartTrio("embedder")
    app.config["MESHROOM_API_KEYS"] = "embedder-key-0123456789"
    app.config["MESHROOM_SECRET"] = "s" * 40
    Meshroom(app, url_prefix="/meshroom")
    rules = _rules(app)
    assert {"/meshroom/", "/meshroom/meshroom.js", "/meshroom/demo/join"} <= rules
    off = QuartTrio("embedder")
    off.config.update(app.config)
    off.config["MESHROOM_DEMO"] = "0"  # a string, as from an environment-style config
    Meshroom(off, url_prefix="/meshroom")
    assert "/meshroom/demo/join" not in _rules(off)
