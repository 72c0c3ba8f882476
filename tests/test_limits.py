"""Limits: rate, room size, connections per process, allowed Origins, TLS.

Rate and room-size logic run on the core with in-memory connections (virtual
time where time matters); the handshake limits and TLS over loopback.
"""

from __future__ import annotations

import datetime as dt
import ssl
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trio.testing
from _memhub import (
    memory_hub,
    real_time_watchdog_fixture,  # noqa: F401  (the real_time_watchdog fixture)
)
from _rawws import Refused, raw_client
from _servers import server_settings, start_server
from wsproto.utilities import RemoteProtocolError

from meshroom import Role
from meshroom.client import JoinRefused, connect
from meshroom.config import ConfigError
from meshroom.core import HubConfig
from meshroom.core.limits import ConnectionSlots, OriginPolicy, RateLimiter, TokenBucket, Verdict

DEADLINE = 10


# The token bucket, on a hand-driven clock


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_bucket_allows_the_burst_then_the_rate():
    clock = Clock()
    bucket = TokenBucket(rate=10, burst=5, clock=clock)
    assert [bucket.take() for _ in range(6)] == [True] * 5 + [False]
    clock.now += 0.1  # one token back
    assert [bucket.take() for _ in range(2)] == [True, False]
    clock.now += 100  # never more than the burst
    assert sum(bucket.take() for _ in range(10)) == 5


def test_limiter_drops_over_the_rate_and_closes_only_on_sustained_abuse():
    clock = Clock()
    limiter = RateLimiter(rate=10, burst=5, clock=clock)
    # 1.5x the rate for a long time: a third of the frames dropped, never closed.
    verdicts = []
    for _ in range(600):
        clock.now += 1 / 15
        verdicts.append(limiter.check())
    assert Verdict.CLOSE not in verdicts
    assert 150 < verdicts.count(Verdict.DROP) < 250
    # 3x the rate: closed within a couple of seconds.
    frames = 0
    while limiter.check() is not Verdict.CLOSE:
        clock.now += 1 / 30
        frames += 1
    assert frames < 90


def test_connection_slots_count_and_refuse():
    slots = ConnectionSlots(2)
    assert slots.acquire() and slots.acquire()
    assert not slots.acquire()
    assert slots.refused == 1
    slots.release()
    assert slots.acquire()
    unlimited = ConnectionSlots(0)
    assert all(unlimited.acquire() for _ in range(10_000))


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        (None, True),  # not a browser
        ("https://app.example.com", True),
        ("HTTPS://APP.example.com:443", True),
        ("https://app.example.com:8443", False),
        ("http://app.example.com", False),
        ("https://evil.example", False),
        ("https://team.corp.example", True),
        ("https://a.b.corp.example", True),
        ("https://corp.example", False),
        ("https://evilcorp.example", False),
        ("null", False),
    ],
)
def test_origin_policy(origin, allowed):
    policy = OriginPolicy(["https://app.example.com", "https://*.corp.example"])
    assert policy.allows(origin) is allowed
    assert OriginPolicy([]).allows(origin)  # empty allowlist: anything


# Rate limit in the room


async def test_frames_over_the_rate_get_rate_limited_and_are_dropped(
    mock_clock, real_time_watchdog
):
    config = HubConfig(rate_limit=10, rate_burst=5)
    async with memory_hub(config) as h:
        meeting = await h.meeting()
        alice, first = await h.join(meeting, "alice", Role.HOST)
        assert first["event"] == "room:joined"
        for n in range(7):
            await alice.send_json("ping", id=n)
        answers = [await alice.next_frame() for _ in range(7)]
        assert [a["event"] for a in answers] == ["ack"] * 5 + ["error"] * 2
        assert [a["id"] for a in answers] == list(range(7))  # errors answer their request
        assert answers[5]["data"]["code"] == "RATE_LIMITED"
        assert answers[5]["data"]["event"] == "ping"
        mock_clock.jump(0.1)  # one frame's worth
        await alice.send_json("ping", id=7)
        assert (await alice.next_frame())["event"] == "ack"
        # Frames that are not even JSON count too.
        mock_clock.jump(10)
        for _ in range(6):
            await alice.send_text("{nope")
        errors = [await alice.next_frame() for _ in range(6)]
        assert [e["data"]["code"] for e in errors] == ["BAD_JSON"] * 5 + ["RATE_LIMITED"]
        assert "id" not in errors[-1]
        assert not alice.closed.is_set()


async def test_sustained_flood_is_closed_with_4012_and_leaves_as_rate_limited(
    mock_clock, real_time_watchdog
):
    config = HubConfig(rate_limit=10, rate_burst=5)
    async with memory_hub(config) as h:
        meeting = await h.meeting()
        alice, _ = await h.join(meeting, "alice", Role.HOST)
        bob, _ = await h.join(meeting, "bob")
        # 3x the rate, in virtual time.
        for n in range(200):
            if bob.closed.is_set():
                break
            await bob.send_json("signal:ice", {"targetEmpId": "alice", "candidate": None}, id=n)
            mock_clock.jump(1 / 30)
            await trio.testing.wait_all_tasks_blocked()
        assert bob.closed.is_set()
        assert bob.close_code == 4012
        left = await alice.wait_for("peer:left", empId="bob")
        assert left["data"]["reason"] == "rate-limited"
        assert [f["event"] for f in bob.frames()][-1] == "session:closed"
        # Alice got only what the limit let through: burst + rate x time.
        relayed = [f for f in alice.seen if f["event"] == "signal:ice"]
        assert len(relayed) <= 5 + 10 * (n + 1) / 30 + 1


async def test_a_rate_of_zero_turns_the_limit_off(mock_clock, real_time_watchdog):
    async with memory_hub(HubConfig(rate_limit=0)) as h:
        meeting = await h.meeting()
        alice, _ = await h.join(meeting, "alice")
        for n in range(2000):
            await alice.send_json("ping", id=n)
        answers = [await alice.next_frame() for _ in range(2000)]
        assert {a["event"] for a in answers} == {"ack"}


# Room size


async def test_a_full_room_refuses_with_room_full_and_4011(mock_clock, real_time_watchdog):
    async with memory_hub(HubConfig(max_room_peers=2, resume_grace=15)) as h:
        meeting = await h.meeting()
        await h.join(meeting, "alice", Role.HOST)
        await h.join(meeting, "bob")
        carol, refused = await h.join(meeting, "carol")
        assert refused["event"] == "error" and refused["id"] == 0
        assert refused["data"]["code"] == "ROOM_FULL"
        await carol.closed.wait()
        assert carol.close_code == 4011
        # No attendance row for a refused join; the same employee can still rejoin.
        rows = await h.store.attendance_for_meeting(meeting.id)
        assert sorted(r.emp_id for r in rows) == ["alice", "bob"]
        bob2, again = await h.join(meeting, "bob")
        assert again["event"] == "room:joined"
        # A detached peer keeps its place: still full.
        bob2.drop()
        await trio.testing.wait_all_tasks_blocked()
        _, refused = await h.join(meeting, "dave")
        assert refused["data"]["code"] == "ROOM_FULL"
        assert h.metrics.rejections.labels("room-full")._value.get() == 2


async def test_concurrent_joins_never_overfill_a_room():
    async with memory_hub(HubConfig(max_room_peers=3)) as h:
        meeting = await h.meeting()
        results: dict[str, str] = {}

        async def join(emp: str) -> None:
            _, first = await h.join(meeting, emp)
            results[emp] = first["event"] if first["event"] != "error" else first["data"]["code"]

        with trio.fail_after(DEADLINE):
            async with trio.open_nursery() as nursery:
                for n in range(10):
                    nursery.start_soon(join, f"emp{n}")
        assert sorted(results.values()) == ["ROOM_FULL"] * 7 + ["room:joined"] * 3
        assert len(h.room(meeting).peers) == 3


async def test_room_full_over_the_wire(tmp_path):
    settings = server_settings(tmp_path, max_room_peers=1)
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            server = await start_server(nursery, settings)
            meeting = await server.meeting()
            async with connect(server.url, server.token(meeting, "alice", Role.HOST)):
                with pytest.raises(JoinRefused) as refused:
                    async with connect(server.url, server.token(meeting, "bob")):
                        pass
                assert (refused.value.code, refused.value.close_code) == ("ROOM_FULL", 4011)
                # Another meeting is another room.
                other = await server.meeting()
                async with connect(server.url, server.token(other, "bob")):
                    pass
            server.server.request_shutdown()


# Connections per process


async def test_connections_over_the_limit_get_http_503_on_both_listeners(tmp_path, monkeypatch):
    all_released = trio.Event()
    release = ConnectionSlots.release

    def release_and_tell(self: ConnectionSlots) -> None:
        release(self)
        if not self.open:
            all_released.set()

    monkeypatch.setattr(ConnectionSlots, "release", release_and_tell)
    settings = server_settings(tmp_path, max_connections=2, http_port=0)
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            server = await start_server(nursery, settings)
            quart_url = server.http_url.replace("http://", "ws://", 1) + "/meetings"
            async with raw_client(server.url), raw_client(quart_url):
                assert server.hub.slots.open == 2
                for url in (server.url, quart_url):
                    with pytest.raises(Refused) as refused:
                        async with raw_client(url):
                            pass
                    assert refused.value.status == 503
                assert server.hub.slots.refused == 2
            # Slots come back when connections end.
            await all_released.wait()
            meeting = await server.meeting()
            async with connect(server.url, server.token(meeting, "alice")):
                pass
            server.server.request_shutdown()


# Origins


@pytest.mark.parametrize("listener", ["standalone", "quart"])
async def test_disallowed_origin_gets_403_at_the_handshake(tmp_path, listener):
    settings = server_settings(tmp_path, allowed_origins="https://app.example.com", http_port=0)
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            server = await start_server(nursery, settings)
            url = (
                server.url
                if listener == "standalone"
                else server.http_url.replace("http://", "ws://", 1) + "/meetings"
            )
            meeting = await server.meeting()
            with pytest.raises(Refused) as refused:
                async with raw_client(url, headers={"Origin": "https://evil.example"}):
                    pass
            assert refused.value.status == 403
            for headers in ({"Origin": "https://app.example.com"}, {}):
                async with raw_client(url, headers=headers) as ok:
                    joined = await ok.authenticate(server.token(meeting, "alice"))
                    assert joined["event"] == "room:joined"
                    await ok.send_json("peer:leave", id=1)
                    await ok.frames_until_closed()
            server.server.request_shutdown()


# TLS


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    import ipaddress

    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


async def test_tls_serves_wss_and_https_from_cert_and_key_flags(tmp_path):
    cert, key = _self_signed(tmp_path)
    settings = server_settings(tmp_path, tls_cert=str(cert), tls_key=str(key), http_port=0)
    client_tls = ssl.create_default_context(cafile=str(cert))
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            server = await start_server(nursery, settings)
            assert server.url.startswith("wss://") and server.http_url.startswith("https://")
            meeting = await server.meeting()
            token = server.token(meeting, "alice", Role.HOST)
            async with connect(server.url, token, ssl_context=client_tls) as alice:
                assert alice.emp_id == "alice"
                quart_url = server.http_url.replace("https://", "wss://", 1) + "/meetings"
                async with connect(
                    quart_url, server.token(meeting, "bob"), ssl_context=client_tls
                ) as bob:
                    await bob.offer("alice", {"type": "offer", "sdp": "over tls"})
                    offer = await alice.wait_for("signal:offer")
                    assert offer.data["offer"]["sdp"] == "over tls"
            async with httpx.AsyncClient(verify=client_tls) as http:
                response = await http.get(f"{server.http_url}/healthz")
                assert response.status_code == 200
            # Plain text to a TLS port: the connection fails, the server does not.
            with pytest.raises((ConnectionError, RemoteProtocolError)):
                async with raw_client(server.url.replace("wss://", "ws://", 1)):
                    pass
            async with connect(server.url, token, ssl_context=client_tls):
                pass
            server.server.request_shutdown()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"tls_cert": "cert.pem"}, "both --tls-cert and --tls-key"),
        ({"tls_cert": "missing.pem", "tls_key": "missing.key"}, "cannot read the TLS file"),
    ],
)
def test_tls_settings_are_checked(tmp_path, options: dict[str, Any], message):
    with pytest.raises(ConfigError, match=message):
        server_settings(tmp_path, **options).ssl_context()


def test_tls_settings_refuse_a_key_that_does_not_match(tmp_path):
    cert, _ = _self_signed(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    _, wrong_key = _self_signed(other)
    with pytest.raises(ConfigError, match="cannot use the TLS certificate and key"):
        server_settings(tmp_path, tls_cert=str(cert), tls_key=str(wrong_key)).ssl_context()
