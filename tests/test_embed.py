"""Embedding: a quart-trio app with meshroom in it, served by hypercorn's trio worker."""

from __future__ import annotations

import datetime as dt
import importlib.util
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from quart import Quart
from quart_schema import QuartSchema
from quart_trio import QuartTrio

from meshroom import Role
from meshroom.client import JoinRefused, connect
from meshroom.http import Meshroom
from meshroom.store import MeetingStatus, SqlStore

TIMEOUT = 10
EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "embed_quart.py"
SECRET = "embed-secret-" + "y" * 40
KEY = "embed-api-key-0123456789"


@pytest.fixture
def example_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run from a scratch directory with every meshroom setting in the environment."""
    monkeypatch.chdir(tmp_path)
    database = tmp_path / "embedded.db"
    monkeypatch.setenv("MESHROOM_DATABASE_URL", f"sqlite:///{database}")
    monkeypatch.setenv("MESHROOM_API_KEYS", KEY)
    monkeypatch.setenv("MESHROOM_SECRET", SECRET)
    return database


def load_example(name: str = "embed_quart_under_test") -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # Quart resolves the app's root path through the module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


@pytest.fixture
def example(example_env: Path) -> Iterator[ModuleType]:
    module = load_example()
    yield module
    sys.modules.pop(module.__name__, None)


class Served:
    def __init__(self, base: str, stop: trio.Event, stopped: trio.Event) -> None:
        self.http_url = base
        self.ws_url = base.replace("http://", "ws://", 1)
        self.stop = stop
        self.stopped = stopped


async def start_serving(nursery: trio.Nursery, app: Quart, **options: Any) -> Served:
    """Serve ``app`` with hypercorn's trio worker on an ephemeral loopback port, in ``nursery``."""
    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    for name, value in options.items():
        setattr(config, name, value)
    stop, stopped = trio.Event(), trio.Event()

    async def run(task_status: trio.TaskStatus[list[str]]) -> None:
        try:
            await serve(app, config, shutdown_trigger=stop.wait, task_status=task_status)
        finally:
            stopped.set()

    binds = await nursery.start(run)
    return Served(binds[0], stop, stopped)


@asynccontextmanager
async def served(app: Quart, **options: Any) -> AsyncIterator[Served]:
    """Serve ``app`` for the block; on the way out stop it and wait until it has stopped."""
    async with trio.open_nursery() as nursery:
        site = await start_serving(nursery, app, **options)
        try:
            yield site
        finally:
            site.stop.set()


def api_client(base: str, key: str | None = KEY) -> httpx.AsyncClient:
    async def no_500(response: httpx.Response) -> None:
        assert response.status_code != 500, response.request.url

    return httpx.AsyncClient(
        base_url=base,
        headers={"Authorization": f"Bearer {key}"} if key else {},
        event_hooks={"response": [no_500]},
        timeout=TIMEOUT,
    )


async def test_the_example_serves_its_own_route_and_meshroom(example, example_env):
    app = example.app
    with trio.fail_after(TIMEOUT):
        async with served(app) as site, api_client(site.http_url) as http:
            # The app's own route is untouched.
            index = await http.get("/")
            assert index.status_code == 200
            assert index.json() == {"app": "my meetings portal", "signaling": "/meshroom/meetings"}
            # ... and an unknown page is still the app's own 404, not meshroom's.
            missing = await http.get("/no-such-page")
            assert missing.status_code == 404
            assert not missing.headers["content-type"].startswith("application/json")

            # meshroom under its prefix: health, metrics, API, OpenAPI.
            assert (await http.get("/meshroom/healthz")).json()["status"] == "ok"
            assert (await http.get("/meshroom/readyz")).status_code == 200
            assert "meshroom_rooms 0.0" in (await http.get("/meshroom/metrics")).text
            spec = (await http.get("/meshroom/openapi.json")).json()
            assert "/meshroom/api/meetings" in spec["paths"]
            assert "/meshroom/api/meetings/{ref}/participants/{emp_id}/kick" in spec["paths"]
            assert not any(path.startswith("/api") for path in spec["paths"])
            assert (await http.get("/api/meetings")).status_code == 404  # nothing at the root
            async with api_client(site.http_url, key=None) as anonymous:
                refused = await anonymous.get("/meshroom/api/meetings")
                assert refused.status_code == 401
                assert refused.json()["error"]["code"] == "UNAUTHORIZED"

            created = await http.post(
                "/meshroom/api/meetings",
                json={"title": "Embedded", "hostEmpId": "alice", "start": True},
            )
            assert created.status_code == 201, created.text
            meeting = created.json()
            listed = (await http.get("/meshroom/api/meetings")).json()
            assert [m["id"] for m in listed["items"]] == [meeting["id"]]

    # Nothing written to the repository; the configured database is where the data went.
    assert example_env.exists()
    assert not (EXAMPLE.parent / "embedded.db").exists()
    store = SqlStore(f"sqlite:///{example_env}")
    try:
        stored = await store.get_meeting(meeting["id"])
        assert stored is not None and stored.title == "Embedded"
    finally:
        await store.close()


async def test_signaling_through_the_embedding_app(example):
    app = example.app
    with trio.fail_after(TIMEOUT):
        async with served(app) as site, api_client(site.http_url) as http:
            meeting = (
                await http.post(
                    "/meshroom/api/meetings",
                    json={"title": "Standup", "hostEmpId": "alice", "start": True},
                )
            ).json()
            ref = meeting["roomCode"]

            async def token(emp_id: str, **body: Any) -> str:
                response = await http.post(
                    f"/meshroom/api/meetings/{ref}/tokens", json={"empId": emp_id, **body}
                )
                assert response.status_code == 201, response.text
                return str(response.json()["token"])

            url = f"{site.ws_url}/meshroom/meetings"
            alice_token = await token("alice", role="HOST", displayName="Alice")
            async with connect(url, alice_token) as alice:
                assert alice.role == "HOST"
                async with connect(url, await token("bob"), token_in_query=True) as bob:
                    joined = await alice.wait_for("peer:joined")
                    assert joined.data["empId"] == "bob"

                    offer = {"type": "offer", "sdp": "v=0"}
                    await bob.offer("alice", offer)
                    relayed = await alice.wait_for("signal:offer")
                    assert relayed.data == {"fromEmpId": "bob", "offer": offer}
                    await alice.answer("bob", {"type": "answer", "sdp": "v=0"})
                    assert (await bob.wait_for("signal:answer")).data["fromEmpId"] == "alice"

                    people = (await http.get(f"/meshroom/api/meetings/{ref}/participants")).json()
                    assert sorted(p["empId"] for p in people["participants"]) == ["alice", "bob"]

                    assert await alice.kick("bob") == {"targetEmpId": "bob"}
                    assert await bob.wait_closed() == 4005
                    left = await alice.wait_for("peer:left", empId="bob")
                    assert left.data["reason"] == "kicked"

                people = (await http.get(f"/meshroom/api/meetings/{ref}/participants")).json()
                assert [p["empId"] for p in people["participants"]] == ["alice"]
                metrics = (await http.get("/meshroom/metrics")).text
                assert 'meshroom_messages_relayed_total{event="signal:offer"} 1.0' in metrics

                # The API acts on the embedded rooms: ending closes alice's socket.
                ended = await http.post(f"/meshroom/api/meetings/{ref}/end")
                assert ended.status_code == 200
                await alice.wait_for("meeting:ended")
                assert await alice.wait_closed() == 4006

            attendance = (await http.get(f"/meshroom/api/meetings/{ref}/attendance")).json()
            reasons = {(r["empId"], r["leaveReason"]) for r in attendance["records"]}
            assert reasons == {("alice", "meeting-ended"), ("bob", "kicked")}


async def test_the_hub_runs_only_while_the_app_serves(example, example_env):
    extension = example.meshroom
    assert example.app.extensions["meshroom"] is extension
    with pytest.raises(RuntimeError):
        _ = extension.hub  # not serving yet
    with trio.fail_after(TIMEOUT):
        async with served(example.app) as site, api_client(site.http_url) as http:
            meeting = (
                await http.post(
                    "/meshroom/api/meetings",
                    json={"title": "T", "hostEmpId": "alice", "start": True},
                )
            ).json()
            token = (
                await http.post(
                    f"/meshroom/api/meetings/{meeting['id']}/tokens", json={"empId": "alice"}
                )
            ).json()["token"]
            hub = extension.hub
            assert hub.store.url == f"sqlite:///{example_env}"
            async with connect(f"{site.ws_url}/meshroom/meetings", token):
                assert set(hub.rooms) == {meeting["id"]}
    # After serving, the rooms are gone and every attendance row is closed.
    assert hub.rooms == {}
    store = SqlStore(f"sqlite:///{example_env}")
    try:
        rows = await store.attendance_for_meeting(meeting["id"])
    finally:
        await store.close()
    assert [r.emp_id for r in rows] == ["alice"]
    assert all(r.left_at is not None for r in rows)


async def test_stopping_the_app_with_peers_connected_closes_them(example, example_env):
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            site = await start_serving(nursery, example.app, graceful_timeout=1.0)
            async with api_client(site.http_url) as http:
                meeting = (
                    await http.post(
                        "/meshroom/api/meetings",
                        json={"title": "T", "hostEmpId": "alice", "start": True},
                    )
                ).json()
                token = (
                    await http.post(
                        f"/meshroom/api/meetings/{meeting['id']}/tokens", json={"empId": "bob"}
                    )
                ).json()["token"]
            async with connect(f"{site.ws_url}/meshroom/meetings", token) as bob:
                site.stop.set()
                closed = await bob.wait_closed()
                await site.stopped.wait()
    assert closed is not None and closed != 1000, closed
    store = SqlStore(f"sqlite:///{example_env}")
    try:
        rows = await store.attendance_for_meeting(meeting["id"])
    finally:
        await store.close()
    assert len(rows) == 1 and rows[0].left_at is not None, rows


async def test_deferred_init_app_reads_settings_from_app_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("MESHROOM_DATABASE_URL", "MESHROOM_SECRET"):
        monkeypatch.delenv(name, raising=False)
    # The app's configuration wins over the environment.
    monkeypatch.setenv("MESHROOM_API_KEYS", "env-key-that-is-not-used-0000")

    extension = Meshroom()  # e.g. at module level, before the app exists
    app = QuartTrio("deferred_app")
    database = tmp_path / "deferred.db"
    app.config.update(
        MESHROOM_DATABASE_URL=f"sqlite:///{database}",
        MESHROOM_SECRET=SECRET,
        MESHROOM_API_KEYS=KEY,
        MESHROOM_MAX_MESSAGE_BYTES=4096,
    )

    @app.get("/hello")
    async def hello() -> str:
        return "hello"

    extension.init_app(app)
    assert app.extensions["meshroom"] is extension
    assert extension.settings.database_url == f"sqlite:///{database}"
    assert extension.settings.secret == SECRET
    assert extension.settings.max_message_bytes == 4096
    assert extension.api_keys == (KEY,)

    with trio.fail_after(TIMEOUT):
        async with served(app) as site, api_client(site.http_url) as http:
            assert (await http.get("/hello")).text == "hello"
            assert (await http.get("/healthz")).status_code == 200  # no prefix: at the root
            async with api_client(site.http_url, key="env-key-that-is-not-used-0000") as env:
                assert (await env.get("/api/meetings")).status_code == 401
            meeting = (
                await http.post(
                    "/api/meetings", json={"title": "T", "hostEmpId": "alice", "start": True}
                )
            ).json()
            tokens = {}
            for emp_id, role in (("alice", "HOST"), ("bob", "PARTICIPANT")):
                response = await http.post(
                    f"/api/meetings/{meeting['id']}/tokens", json={"empId": emp_id, "role": role}
                )
                tokens[emp_id] = response.json()["token"]
            url = f"{site.ws_url}/meetings"
            async with connect(url, tokens["alice"]) as alice, connect(url, tokens["bob"]) as bob:
                await bob.offer("alice", {"type": "offer", "sdp": "v=0"})
                assert (await alice.wait_for("signal:offer")).data["fromEmpId"] == "bob"
                # The app's limit applies: 4096 bytes, not the default 64 KiB.
                await bob.offer("alice", {"type": "offer", "sdp": "a" * 5000})
                assert (await bob.wait_for("error")).data["code"] == "FRAME_TOO_LARGE"
                await alice.kick("bob")
                assert await bob.wait_closed() == 4005
    assert database.exists()
    # The secret and API key came from the app's config: no key files were created
    # (only the attendance journal, which lives in the working directory by default).
    created = {p.name for p in tmp_path.iterdir() if not p.name.startswith("deferred.db")}
    assert {name for name in created if not name.startswith("meshroom.journal")} == set()


async def test_a_join_with_a_token_from_another_secret_is_refused(example):
    from meshroom import Role, mint_token
    from meshroom.auth import TokenKeys

    with trio.fail_after(TIMEOUT):
        async with served(example.app) as site, api_client(site.http_url) as http:
            meeting = (
                await http.post(
                    "/meshroom/api/meetings",
                    json={"title": "T", "hostEmpId": "alice", "start": True},
                )
            ).json()
            other = "another-secret-" + "z" * 40
            forged = mint_token(
                TokenKeys("HS256", other, other, audience="meshroom", issuer="meshroom"),
                meeting_id=meeting["id"],
                emp_id="mallory",
                display_name="Mallory",
                role=Role.HOST,
            )
            with pytest.raises(JoinRefused) as refused:
                async with connect(f"{site.ws_url}/meshroom/meetings", forged):
                    pass
            assert refused.value.code == "AUTH_FAILED" and refused.value.close_code == 4001


async def test_an_app_with_its_own_quart_schema_keeps_meshroom_camel_case(tmp_path, monkeypatch):
    """The app's QuartSchema (default options) serialises meshroom's models too."""
    monkeypatch.chdir(tmp_path)
    app = QuartTrio("schema_app")
    QuartSchema(app, info={"title": "portal", "version": "1"})
    app.config.update(
        MESHROOM_DATABASE_URL=f"sqlite:///{tmp_path / 'portal.db'}",
        MESHROOM_SECRET=SECRET,
        MESHROOM_API_KEYS=KEY,
    )
    Meshroom(app, url_prefix="/rtc")
    with trio.fail_after(TIMEOUT):
        async with served(app) as site, api_client(site.http_url) as http:
            created = await http.post(
                "/rtc/api/meetings", json={"title": "T", "hostEmpId": "alice", "start": True}
            )
            assert created.status_code == 201, created.text
            meeting = created.json()
            assert {"roomCode", "hostEmpId", "liveParticipants"} <= set(meeting)
            page = (await http.get("/rtc/api/meetings")).json()
            assert set(page["items"][0]) == set(meeting)
            bad = await http.post("/rtc/api/meetings", json={"title": ""})
            assert bad.status_code == 400
            assert {f["field"] for f in bad.json()["error"]["fields"]} == {"title", "hostEmpId"}
            # One OpenAPI document, the app's, describing meshroom's routes too.
            spec = (await http.get("/openapi.json")).json()
            assert spec["info"]["title"] == "portal"
            assert "/rtc/api/meetings/{ref}/tokens" in spec["paths"]
            # The scheme meshroom's operations name is declared in the app's document.
            operation = spec["paths"]["/rtc/api/meetings"]["post"]
            assert operation["security"] == [{"bearer": []}]
            assert spec["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"


async def test_an_embedded_app_runs_what_meshroom_serve_runs(example, example_env, monkeypatch):
    """One runtime: attendance settings and crash recovery apply to an embedding app too."""
    monkeypatch.setenv("MESHROOM_ATTENDANCE_HEARTBEAT", "1.5")
    monkeypatch.setenv("MESHROOM_LEAVE_RETRY_MAX", "2")
    # A row left open by a process that crashed: the embedded app must close it at start.
    store = SqlStore(f"sqlite:///{example_env}")
    try:
        await store.open()
        meeting = await store.create_meeting(title="Crashed", host_emp_id="alice")
        meeting = await store.transition(meeting.id, MeetingStatus.LIVE)
        admission = await store.admit(
            meeting_id=meeting.id,
            emp_id="alice",
            display_name="Alice",
            role=Role.HOST,
            at=dt.datetime.now(dt.UTC),
        )
    finally:
        await store.close()
    app = load_example("embed_quart_runtime_under_test").app
    try:
        with trio.fail_after(TIMEOUT):
            async with served(app):
                runtime = app.extensions["meshroom"].runtime
                assert runtime.hub.attendance.heartbeat_interval == 1.5
                assert runtime.hub.attendance.retry_max == 2
                rows = await runtime.store.attendance_for_meeting(meeting.id)
                assert [(r.id, r.closed_by_recovery) for r in rows] == [
                    (admission.attendance_id, True)
                ]
                assert rows[0].left_at is not None
    finally:
        sys.modules.pop("embed_quart_runtime_under_test", None)


async def test_the_middleware_leaves_the_apps_own_websockets_and_hooks_to_quart(
    tmp_path, monkeypatch
):
    """Only {prefix}/meetings bypasses Quart; the app's WebSocket routes and hooks are its own."""
    from _rawws import Refused, raw_client
    from quart import websocket
    from trio_websocket import open_websocket_url

    monkeypatch.chdir(tmp_path)
    app = QuartTrio("ws_app")
    app.config.update(
        MESHROOM_DATABASE_URL=f"sqlite:///{tmp_path / 'ws.db'}",
        MESHROOM_SECRET=SECRET,
        MESHROOM_API_KEYS=KEY,
    )
    hooked: list[str] = []

    @app.before_websocket
    async def remember() -> None:
        hooked.append(websocket.path)

    @app.websocket("/echo")
    async def echo() -> None:
        while True:
            await websocket.send(f"echo: {await websocket.receive()}")

    @app.get("/hello")
    async def hello() -> str:
        return "hello"

    Meshroom(app, url_prefix="/rtc")
    with trio.fail_after(TIMEOUT):
        async with served(app) as site, api_client(site.http_url) as http:
            assert (await http.get("/hello")).text == "hello"
            async with open_websocket_url(f"{site.ws_url}/echo") as ws:
                await ws.send_message("hi")
                assert await ws.get_message() == "echo: hi"
            assert hooked == ["/echo"]

            meeting = (
                await http.post(
                    "/rtc/api/meetings", json={"title": "T", "hostEmpId": "alice", "start": True}
                )
            ).json()
            token = (
                await http.post(f"/rtc/api/meetings/{meeting['id']}/tokens", json={"empId": "bob"})
            ).json()["token"]
            async with connect(f"{site.ws_url}/rtc/meetings", token) as bob:
                assert (await bob.request("ping"))["serverTime"]
            assert hooked == ["/echo"]  # the signaling route does not go through Quart

            # Outside the prefix (or past the path) it is Quart's: no such route.
            for path in ("/meetings", "/rtc/meetings/extra"):
                with pytest.raises(Refused) as refused:
                    async with raw_client(f"{site.ws_url}{path}"):
                        pass
                assert refused.value.status == 404, path
