"""Operations endpoints (/healthz, /readyz, /metrics) and the OpenAPI document, over loopback."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from _servers import API_KEY, RunningServer, server_settings, start_server
from prometheus_client.parser import text_string_to_metric_families

import meshroom.http.ops
from meshroom import Role
from meshroom.client import JoinRefused, connect
from meshroom.store import StoreUnavailable

TIMEOUT = 10


async def _no_500(response: httpx.Response) -> None:
    assert response.status_code != 500, f"{response.request.method} {response.request.url}"


def client(server: RunningServer, **headers: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=server.http_url,
        headers=headers,
        event_hooks={"response": [_no_500]},
        timeout=TIMEOUT,
    )


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[RunningServer]:
    """conftest's server with HTTP on (HTTP is off there; 0 binds any free port)."""
    settings = server_settings(tmp_path, http_port=0)
    async with trio.open_nursery() as nursery:
        running = await start_server(nursery, settings)
        yield running
        running.server.request_shutdown()


@pytest.fixture
async def http(server: RunningServer) -> AsyncIterator[httpx.AsyncClient]:
    """No API key: the operations endpoints must not need one."""
    async with client(server) as anonymous:
        yield anonymous


@pytest.fixture
async def api(server: RunningServer) -> AsyncIterator[httpx.AsyncClient]:
    async with client(server, Authorization=f"Bearer {API_KEY}") as http:
        yield http


# Health


async def test_healthz_answers_without_a_key(http):
    response = await http.get("/healthz")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"


async def test_readyz_is_200_while_the_database_answers(http):
    response = await http.get("/readyz")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"


async def test_readyz_is_503_while_the_database_is_unreachable(tmp_path):
    """A real fault: the database's directory disappears and pooled connections are dropped."""
    data = tmp_path / "data"
    data.mkdir()
    settings = server_settings(
        tmp_path, http_port=0, database_url=f"sqlite:///{data / 'meshroom.db'}"
    )
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            server = await start_server(nursery, settings)
            meeting = await server.meeting()
            async with (
                client(server) as http,
                client(server, Authorization=f"Bearer {API_KEY}") as api,
            ):
                assert (await http.get("/readyz")).status_code == 200

                data.rename(tmp_path / "gone")
                server.store.engine.dispose()  # as a database restart would
                try:
                    ready = await http.get("/readyz")
                    assert ready.status_code == 503, ready.text
                    assert ready.json()["status"] == "unavailable"
                    assert ready.json()["detail"].startswith("database")
                    # Liveness is not readiness: the process is fine.
                    assert (await http.get("/healthz")).status_code == 200
                    # The API says so too, instead of failing with a 500.
                    listed = await api.get("/api/meetings")
                    assert listed.status_code == 503, listed.text
                    assert listed.json()["error"]["code"] == "STORE_UNAVAILABLE"
                    assert int(listed.headers["retry-after"]) > 0
                    # A join is refused for now (try again later), and counted.
                    with pytest.raises(JoinRefused) as refused:
                        async with connect(server.url, server.token(meeting, "bob")):
                            pass
                    assert refused.value.code == "STORE_UNAVAILABLE"
                    assert refused.value.close_code == 1013
                    metrics = await scrape(http)
                    assert metrics[REJECTED, (("reason", "store-unavailable"),)] == 1
                finally:
                    (tmp_path / "gone").rename(data)

                ready = await http.get("/readyz")
                assert ready.status_code == 200, ready.text
                async with connect(server.url, server.token(meeting, "bob")) as bob:
                    assert bob.emp_id == "bob"
            server.server.request_shutdown()


async def test_readyz_is_503_when_the_store_raises(server, http, monkeypatch):
    async def unavailable() -> None:
        raise StoreUnavailable("connection refused")

    monkeypatch.setattr(server.hub.store, "ping", unavailable)
    response = await http.get("/readyz")
    assert response.status_code == 503
    assert response.json() == {"status": "unavailable", "detail": "database: connection refused"}


async def test_readyz_is_503_when_the_store_does_not_answer_in_time(server, http, monkeypatch):
    monkeypatch.setattr(meshroom.http.ops, "READY_TIMEOUT", 0.05)
    monkeypatch.setattr(server.hub.store, "ping", trio.sleep_forever)
    with trio.fail_after(TIMEOUT):
        response = await http.get("/readyz")
    assert response.status_code == 503
    assert response.json()["status"] == "unavailable"
    assert "no answer" in response.json()["detail"]


# Metrics

ROOMS = "meshroom_rooms"
PEERS = "meshroom_peers"
JOINS = "meshroom_joins_total"
REJECTED = "meshroom_join_rejections_total"
RELAYED = "meshroom_messages_relayed_total"
RELAY_LATENCY_COUNT = "meshroom_relay_latency_seconds_count"
DB_COUNT = "meshroom_db_call_seconds_count"

Labels = tuple[tuple[str, str], ...]


async def scrape(http: httpx.AsyncClient) -> dict[tuple[str, Labels], float]:
    response = await http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert "version=" in response.headers["content-type"]
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def labelled(samples: dict[tuple[str, Labels], float], name: str) -> dict[Labels, float]:
    return {labels: value for (n, labels), value in samples.items() if n == name}


async def test_metrics_exposition_has_every_family(http):
    response = await http.get("/metrics")
    text = response.text
    for name, kind in (
        ("meshroom_rooms", "gauge"),
        ("meshroom_peers", "gauge"),
        ("meshroom_joins_total", "counter"),
        ("meshroom_join_rejections_total", "counter"),
        ("meshroom_messages_relayed_total", "counter"),
        ("meshroom_relay_latency_seconds", "histogram"),
        ("meshroom_db_call_seconds", "histogram"),
    ):
        assert f"# TYPE {name} {kind}" in text, name
        assert f"# HELP {name} " in text, name
    metrics = await scrape(http)
    assert metrics[ROOMS, ()] == 0
    assert metrics[PEERS, ()] == 0
    assert metrics[JOINS, ()] == 0


async def test_metrics_follow_rooms_peers_joins_and_rejections(server, http, api):
    meeting = await server.meeting()
    with trio.fail_after(TIMEOUT):
        async with AsyncExitStack() as stack:
            alice = await stack.enter_async_context(
                connect(server.url, server.token(meeting, "alice", Role.HOST))
            )
            bob = await stack.enter_async_context(connect(server.url, server.token(meeting, "bob")))
            await alice.wait_for("peer:joined", empId="bob")
            metrics = await scrape(http)
            assert metrics[ROOMS, ()] == 1
            assert metrics[PEERS, ()] == 2
            assert metrics[JOINS, ()] == 2

            # Refusals, by reason.
            with pytest.raises(JoinRefused):
                async with connect(server.url, "not-a-token"):
                    pass
            scheduled = await server.meeting(live=False)
            with pytest.raises(JoinRefused):
                async with connect(server.url, server.token(scheduled, "carol")):
                    pass
            banned = await api.post(f"/api/meetings/{meeting.id}/bans", json={"empId": "bob"})
            assert banned.status_code == 201
            assert await bob.wait_closed() == 4004
            with pytest.raises(JoinRefused):
                async with connect(server.url, server.token(meeting, "bob")):
                    pass

            metrics = await scrape(http)
            assert labelled(metrics, REJECTED) == {
                (("reason", "auth-failed"),): 1,
                (("reason", "meeting-not-live"),): 1,
                (("reason", "banned"),): 1,
            }
            assert metrics[JOINS, ()] == 2  # refusals are not joins
            assert metrics[PEERS, ()] == 1
            assert metrics["meshroom_leaves_total", (("reason", "banned"),)] == 1

            # Everyone gone: the room closes.
            room = server.hub.rooms[meeting.id]
            await alice.leave()
            await room.done.wait()
    metrics = await scrape(http)
    assert metrics[ROOMS, ()] == 0
    assert metrics[PEERS, ()] == 0


async def test_metrics_count_relayed_signals_by_event(server, http):
    meeting = await server.meeting()
    with trio.fail_after(TIMEOUT):
        async with AsyncExitStack() as stack:
            alice = await stack.enter_async_context(
                connect(server.url, server.token(meeting, "alice", Role.HOST))
            )
            bob = await stack.enter_async_context(connect(server.url, server.token(meeting, "bob")))
            await alice.wait_for("peer:joined", empId="bob")

            await bob.offer("alice", {"type": "offer", "sdp": "v=0"})
            await alice.wait_for("signal:offer")
            metrics = await scrape(http)
            assert metrics[RELAYED, (("event", "signal:offer"),)] == 1
            assert metrics.get((RELAYED, (("event", "signal:answer"),)), 0) == 0

            await alice.answer("bob", {"type": "answer", "sdp": "v=0"})
            for i in range(3):
                await alice.ice("bob", {"candidate": f"candidate:{i}", "sdpMid": "0"})
            await bob.wait_for("signal:answer")
            for _ in range(3):
                await bob.wait_for("signal:ice")
            # A signal to nobody is refused, not counted.
            await bob.offer("nobody", {"type": "offer", "sdp": "v=0"})
            assert (await bob.request("ping"))["serverTime"]

            metrics = await scrape(http)
            assert labelled(metrics, RELAYED) == {
                (("event", "signal:offer"),): 1,
                (("event", "signal:answer"),): 1,
                (("event", "signal:ice"),): 3,
            }


async def test_relay_latency_histogram_is_observed(server, http):
    """Relay latency is sampled (one relay in LATENCY_SAMPLE_EVERY); relay enough to get samples."""
    meeting = await server.meeting()
    relays = 200
    with trio.fail_after(TIMEOUT):
        async with AsyncExitStack() as stack:
            alice = await stack.enter_async_context(
                connect(server.url, server.token(meeting, "alice", Role.HOST))
            )
            bob = await stack.enter_async_context(connect(server.url, server.token(meeting, "bob")))
            await alice.wait_for("peer:joined", empId="bob")
            for i in range(relays):
                await bob.ice("alice", {"candidate": f"candidate:{i}"})
            for _ in range(relays):
                await alice.wait_for("signal:ice")
            # alice's writer sends this ack after it has written (and timed) every relay above.
            await alice.request("ping")
            metrics = await scrape(http)
    assert metrics[RELAYED, (("event", "signal:ice"),)] == relays
    count = metrics[RELAY_LATENCY_COUNT, ()]
    assert count >= 1, "meshroom_relay_latency_seconds is never observed"
    assert count <= relays
    total = metrics["meshroom_relay_latency_seconds_sum", ()]
    assert 0 <= total < count * TIMEOUT
    buckets = labelled(metrics, "meshroom_relay_latency_seconds_bucket")
    assert buckets[(("le", "+Inf"),)] == count


async def test_db_call_latency_histogram_is_observed(server, http, api):
    created = await api.post("/api/meetings", json={"title": "T", "hostEmpId": "h", "start": True})
    assert created.status_code == 201
    meeting_id = created.json()["id"]
    with trio.fail_after(TIMEOUT):
        async with connect(server.url, server.token(meeting_id, "bob")) as bob:
            await bob.leave()
    metrics = await scrape(http)
    counts = labelled(metrics, DB_COUNT)
    assert counts, "meshroom_db_call_seconds is never observed"
    operations = {dict(labels)["operation"] for labels, count in counts.items() if count > 0}
    assert {"create_meeting", "admit"} <= operations, operations
    for labels in counts:
        assert metrics["meshroom_db_call_seconds_sum", labels] >= 0


async def test_two_servers_keep_separate_metrics(server, http, tmp_path):
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    meeting = await server.meeting()
    with trio.fail_after(TIMEOUT):
        async with (
            connect(server.url, server.token(meeting, "bob")),
            trio.open_nursery() as nursery,
        ):
            other = await start_server(nursery, server_settings(other_dir, http_port=0))
            async with client(other) as other_http:
                assert (await scrape(other_http))[PEERS, ()] == 0
            assert (await scrape(http))[PEERS, ()] == 1
            other.server.request_shutdown()


# OpenAPI

API_OPERATIONS = {
    ("/api/meetings", "get"),
    ("/api/meetings", "post"),
    ("/api/meetings/{ref}", "get"),
    ("/api/meetings/{ref}/start", "post"),
    ("/api/meetings/{ref}/end", "post"),
    ("/api/meetings/{ref}/tokens", "post"),
    ("/api/meetings/{ref}/participants", "get"),
    ("/api/meetings/{ref}/participants/{emp_id}/kick", "post"),
    ("/api/meetings/{ref}/bans", "get"),
    ("/api/meetings/{ref}/bans", "post"),
    ("/api/meetings/{ref}/bans/{emp_id}", "delete"),
    ("/api/meetings/{ref}/attendance", "get"),
    ("/api/employees/{emp_id}/attendance", "get"),
    ("/api/webhooks/endpoints", "get"),
    ("/api/webhooks/endpoints", "post"),
    ("/api/webhooks/endpoints/{endpoint_id}", "get"),
    ("/api/webhooks/endpoints/{endpoint_id}", "patch"),
    ("/api/webhooks/endpoints/{endpoint_id}", "delete"),
    ("/api/webhooks/deliveries", "get"),
    ("/api/webhooks/deliveries/{delivery_id}", "get"),
    ("/api/webhooks/deliveries/{delivery_id}/retry", "post"),
    ("/api/webhooks/deliveries/retry", "post"),
}


@pytest.fixture
async def openapi(http: httpx.AsyncClient) -> dict[str, Any]:
    response = await http.get("/openapi.json")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    return json.loads(response.text)  # type: ignore[no-any-return]


def resolve(spec: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        *_, name = schema["$ref"].split("/")
        schema = spec["components"]["schemas"][name]
    return schema


async def test_openapi_lists_every_api_operation(openapi):
    assert openapi["openapi"].startswith("3.")
    assert openapi["info"]["title"] == "meshroom"
    documented = {
        (path, method)
        for path, operations in openapi["paths"].items()
        if path.startswith("/api")
        for method in operations
    }
    assert documented == API_OPERATIONS
    assert openapi["components"]["securitySchemes"]["bearer"] == {
        "type": "http",
        "scheme": "bearer",
    }
    for path, method in API_OPERATIONS:
        operation = openapi["paths"][path][method]
        assert operation.get("security") == [{"bearer": []}], (path, method)
        assert operation.get("summary") or operation.get("description"), (path, method)
    for path in ("/healthz", "/readyz"):
        assert "get" in openapi["paths"][path]


async def test_openapi_describes_request_bodies_and_query_strings(openapi):
    with_body = {
        ("/api/meetings", "post"): "CreateMeeting",
        ("/api/meetings/{ref}/tokens", "post"): "IssueToken",
        ("/api/meetings/{ref}/bans", "post"): "CreateBan",
    }
    for (path, method), model in with_body.items():
        body = openapi["paths"][path][method]["requestBody"]
        schema = resolve(openapi, body["content"]["application/json"]["schema"])
        assert schema["title"] == model, path
        assert schema["type"] == "object" and schema["additionalProperties"] is False, path
    tokens = resolve(
        openapi,
        openapi["paths"]["/api/meetings/{ref}/tokens"]["post"]["requestBody"]["content"][
            "application/json"
        ]["schema"],
    )
    assert set(tokens["properties"]) == {"empId", "displayName", "role", "ttlSeconds"}
    assert tokens["required"] == ["empId"]
    ttl = tokens["properties"]["ttlSeconds"]
    assert ttl["minimum"] == 30 and ttl["maximum"] == 7 * 24 * 3600
    queries = {
        ("/api/meetings", "get"): {"status", "limit", "offset"},
        ("/api/meetings/{ref}/attendance", "get"): {"format", "view"},
        ("/api/employees/{emp_id}/attendance", "get"): {"format", "view", "from", "to"},
    }
    for (path, method), names in queries.items():
        parameters = openapi["paths"][path][method].get("parameters", [])
        assert {p["name"] for p in parameters if p["in"] == "query"} == names, path


async def test_openapi_schema_of_create_meeting_is_the_one_that_validates(openapi, api, server):
    """Each constraint the document states is one the API enforces, field by field."""
    operation = openapi["paths"]["/api/meetings"]["post"]
    schema = resolve(openapi, operation["requestBody"]["content"]["application/json"]["schema"])
    assert schema["additionalProperties"] is False
    assert set(schema["required"]) == {"title", "hostEmpId"}
    properties = schema["properties"]
    assert set(properties) == {"title", "hostEmpId", "scheduledAt", "start"}
    assert properties["title"]["minLength"] == 1
    assert properties["title"]["maxLength"] == 200

    valid = {"title": "T", "hostEmpId": "h"}
    assert (await api.post("/api/meetings", json=valid)).status_code == 201

    async def refused_fields(body: dict[str, Any]) -> set[str]:
        response = await api.post("/api/meetings", json=body)
        assert response.status_code == 400, (body, response.text)
        return {f["field"] for f in response.json()["error"]["fields"]}

    for name in schema["required"]:
        assert await refused_fields({k: v for k, v in valid.items() if k != name}) == {name}
    for name, rules in properties.items():
        if "minLength" in rules:
            assert await refused_fields(valid | {name: "x" * (rules["minLength"] - 1)}) == {name}
        if "maxLength" in rules:
            assert await refused_fields(valid | {name: "x" * (rules["maxLength"] + 1)}) == {name}
        if "pattern" in rules:
            assert not re.search(rules["pattern"], "has space")
            assert await refused_fields(valid | {name: "has space"}) == {name}
        if rules.get("type") == "boolean":
            assert await refused_fields(valid | {name: "maybe"}) == {name}
        if {"format": "date-time", "type": "string"} in rules.get("anyOf", []):
            assert await refused_fields(valid | {name: "next tuesday"}) == {name}
    assert await refused_fields(valid | {"undocumented": 1}) == {"undocumented"}
    # Only the one valid request above created anything.
    assert (await server.store.list_meetings())[1] == 1


async def test_openapi_documents_errors_and_responses(openapi):
    created = openapi["paths"]["/api/meetings"]["post"]["responses"]
    assert "201" in created and "400" in created
    error = resolve(openapi, created["400"]["content"]["application/json"]["schema"])
    assert "error" in error["properties"]
    meeting = resolve(openapi, created["201"]["content"]["application/json"]["schema"])
    assert {"id", "roomCode", "status", "hostEmpId", "title"} <= set(meeting["properties"])
    assert "409" in openapi["paths"]["/api/meetings/{ref}/start"]["post"]["responses"]
    assert "404" in openapi["paths"]["/api/meetings/{ref}"]["get"]["responses"]
    attendance = openapi["paths"]["/api/meetings/{ref}/attendance"]["get"]["responses"]["200"]
    schema = resolve(openapi, attendance["content"]["application/json"]["schema"])
    assert set(schema["properties"]) == {"records", "totals"}


async def test_docs_page_is_served(http):
    response = await http.get("/docs")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "/openapi.json" in response.text


async def test_the_docs_page_needs_no_internet(http):
    """/docs loads Swagger UI from meshroom itself, not a CDN (air-gapped hosts)."""
    page = await http.get("/docs")
    assert page.status_code == 200
    scripts_and_styles = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert scripts_and_styles, page.text
    assert all(url.startswith("/docs/assets/") for url in scripts_and_styles), scripts_and_styles
    for url in scripts_and_styles:
        asset = await http.get(url)
        assert asset.status_code == 200 and len(asset.content) > 10_000, url
    assert (await http.get("/docs/assets/index.html")).status_code == 404  # only those two
    document = (await http.get("/openapi.json")).json()
    assert not any(path.startswith("/docs") for path in document["paths"])


async def test_the_js_client_and_its_types_are_served(http):
    module = await http.get("/meshroom.js")
    types = await http.get("/meshroom.d.ts")
    assert module.status_code == types.status_code == 200
    assert "export declare class MeshroomClient" in types.text
    assert "export class MeshroomClient" in module.text
