"""Hostile connection patterns over loopback: the server answers each as documented and
keeps serving everyone else, and nothing is left behind (slots, rooms, open rows).
"""

from __future__ import annotations

import itertools
import json
import re
import struct
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import jwt
import pytest
import trio
import trio.lowlevel
from _rawws import RawClient, raw_client
from _servers import RunningServer, server_settings, start_server
from _signaling import ping
from hypothesis import given, settings
from hypothesis import strategies as st
from wsproto.events import CloseConnection, TextMessage

from meshroom import Role
from meshroom.client import JoinRefused, connect
from meshroom.core.limits import ConnectionSlots
from meshroom.protocol import ErrorCode, ProtocolError, decode_request
from meshroom.protocol.messages import CLIENT_EVENTS, MAX_NESTING_DEPTH, encode_event
from meshroom.transports.websocket import MAX_REQUEST_HEAD_BYTES

DEADLINE = 20


class Quiet:
    """Waits until the server holds no more than ``n`` connections (no polling)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.released = trio.Event()
        release = ConnectionSlots.release

        def release_and_tell(slots: ConnectionSlots) -> None:
            release(slots)
            self.released.set()

        monkeypatch.setattr(ConnectionSlots, "release", release_and_tell)

    async def until(self, server: RunningServer, n: int = 0) -> None:
        while server.hub.slots.open > n:
            self.released = trio.Event()
            await self.released.wait()


@pytest.fixture
def quiet(monkeypatch: pytest.MonkeyPatch) -> Quiet:
    return Quiet(monkeypatch)


async def _all_rows_closed(server: RunningServer, meeting_id: str) -> list[tuple[str, str]]:
    rows = await server.store.attendance_for_meeting(meeting_id)
    assert all(r.left_at is not None for r in rows), rows
    return sorted((r.emp_id, r.leave_reason or "") for r in rows)


def _healthy(server: RunningServer) -> None:
    hub = server.hub
    assert hub.rooms == {}
    kept = hub.bookkeeping()
    assert (kept.joining, kept.unjoined, kept.employee_locks, kept.room_locks) == (0, 0, 0, 0)


# Connect and say nothing, at scale


async def test_hundreds_of_idle_sockets_are_cut_off_while_a_peer_is_served(tmp_path, quiet):
    auth_timeout = 1.0
    # (No rate limit: alice relays flat out for as long as the idlers last.)
    settings_ = server_settings(tmp_path, auth_timeout=auth_timeout, rate_limit=0)
    silent, dribbling, unauthenticated = 300, 100, 100
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            server = await start_server(nursery, settings_)
            meeting = await server.meeting()
            host, port = "127.0.0.1", server.server.port
            assert port is not None
            cut_off_after: list[float] = []
            auth_timeouts: list[tuple[int | None, list[str]]] = []

            async def say_nothing() -> None:
                stream = await trio.open_tcp_stream(host, port)
                start = trio.current_time()
                async with stream:
                    while await stream.receive_some(4096):
                        pass
                cut_off_after.append(trio.current_time() - start)

            async def dribble() -> None:
                # Slowloris: an HTTP request that never ends, a header byte at a time.
                stream = await trio.open_tcp_stream(host, port)
                start = trio.current_time()
                async with stream:
                    try:
                        await stream.send_all(b"GET /meetings HTTP/1.1\r\nHost: x\r\n")
                        while True:
                            await stream.send_all(b"X")
                            with trio.move_on_after(0.1):
                                if not await stream.receive_some(4096):
                                    break
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        pass
                cut_off_after.append(trio.current_time() - start)

            async def open_and_wait() -> None:
                async with raw_client(server.url) as client:
                    start = trio.current_time()
                    frames = await client.frames_until_closed()
                    cut_off_after.append(trio.current_time() - start)
                    auth_timeouts.append((client.close_code, [f["data"]["code"] for f in frames]))

            async with trio.open_nursery() as idlers:
                for _ in range(silent):
                    idlers.start_soon(say_nothing)
                for _ in range(dribbling):
                    idlers.start_soon(dribble)
                for _ in range(unauthenticated):
                    idlers.start_soon(open_and_wait)
                # Meanwhile, business as usual, and promptly, until the last idler is gone.
                async with (
                    connect(server.url, server.token(meeting, "alice", Role.HOST)) as alice,
                    connect(server.url, server.token(meeting, "bob")) as bob,
                ):
                    worst, round_trips = 0.0, 0
                    while len(cut_off_after) < silent + dribbling + unauthenticated:
                        start = trio.current_time()
                        await alice.offer("bob", {"type": "offer", "sdp": str(round_trips)})
                        assert (await bob.next_event()).name in ("peer:joined", "signal:offer")
                        await ping(alice)
                        worst = max(worst, trio.current_time() - start)
                        round_trips += 1
                    await alice.leave()
                    await bob.leave()
            assert len(cut_off_after) == silent + dribbling + unauthenticated
            assert max(cut_off_after) < auth_timeout + 1.5
            assert set(map(tuple, ((c, tuple(f)) for c, f in auth_timeouts))) == {
                (4002, ("AUTH_TIMEOUT",))
            }
            assert worst < 0.5, f"a relay round trip took {worst:.3f} s under the idle flood"
            await quiet.until(server)
            assert server.metrics.rejections.labels("auth-timeout")._value.get() == 100
            server.server.request_shutdown()


# Disconnect at every step of the handshake


async def _tcp_then_close(server: RunningServer) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", server.server.port)
    await stream.aclose()


async def _half_request_then_close(server: RunningServer) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", server.server.port)
    await stream.send_all(b"GET /meetings HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: webs")
    await stream.aclose()


async def _request_then_close_before_the_answer(server: RunningServer) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", server.server.port)
    await stream.send_all(
        b"GET /meetings HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        b"Sec-WebSocket-Version: 13\r\n\r\n"
    )
    await trio.aclose_forcefully(stream)


async def _open_then_abort(server: RunningServer) -> None:
    async with raw_client(server.url) as client:
        await client.abort()


async def _half_an_auth_frame_then_abort(server: RunningServer) -> None:
    async with raw_client(server.url) as client:
        frame = client.ws.send(
            TextMessage(data='{"event":"auth","data":{"meetingAccessToken":"x"}}')
        )
        await client.stream.send_all(frame[: len(frame) // 2])
        await client.abort()


def _auth_then_abort(with_token: Callable[[RunningServer], str]) -> Callable[..., Awaitable[None]]:
    async def scenario(server: RunningServer) -> None:
        async with raw_client(server.url) as client:
            await client.send_json("auth", {"meetingAccessToken": with_token(server)}, id=0)
            await client.abort()  # before room:joined can arrive

    return scenario


def _joined_then_abort() -> Callable[..., Awaitable[None]]:
    async def scenario(server: RunningServer) -> None:
        async with raw_client(server.url) as client:
            joined = await client.authenticate(server.token(server.meeting_id, "mallory"))
            assert joined["event"] == "room:joined"
            await client.abort()

    return scenario


async def _close_frame_before_auth(server: RunningServer) -> None:
    async with raw_client(server.url) as client:
        await client.stream.send_all(client.ws.send(CloseConnection(code=1000)))
        await client.frames_until_closed()


HANDSHAKE_STEPS = {
    "tcp-only": _tcp_then_close,
    "half-an-http-request": _half_request_then_close,
    "request-then-gone": _request_then_close_before_the_answer,
    "upgraded-then-gone": _open_then_abort,
    "half-an-auth-frame": _half_an_auth_frame_then_abort,
    "bad-token-then-gone": _auth_then_abort(lambda s: "not-a-token"),
    "auth-then-gone": _auth_then_abort(lambda s: s.token(s.meeting_id, "mallory")),
    "joined-then-gone": _joined_then_abort(),
    "close-frame-before-auth": _close_frame_before_auth,
}


@pytest.mark.parametrize("step", list(HANDSHAKE_STEPS))
async def test_disconnect_at_every_step_of_the_handshake(tmp_path, quiet, step):
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            server = await start_server(nursery, server_settings(tmp_path))
            meeting = await server.meeting()
            server.meeting_id = meeting.id  # type: ignore[attr-defined]
            for _ in range(5):
                await HANDSHAKE_STEPS[step](server)
            await quiet.until(server)
            _healthy(server)
            # Every row an admitted join opened is closed: the peer was gone, or (when the
            # server had not noticed yet) replaced by the next attempt of the same employee.
            rows = await _all_rows_closed(server, meeting.id)
            assert {reason for _, reason in rows} <= {"disconnected", "replaced"}
            # And the server serves the next one as if nothing happened.
            async with connect(server.url, server.token(meeting, "alice")) as alice:
                await ping(alice)
                await alice.leave()
            server.server.request_shutdown()


# Disconnect at every step of a relay


async def test_sender_gone_right_after_a_relay(server, quiet):
    with trio.fail_after(DEADLINE):
        meeting = await server.meeting()
        async with connect(server.url, server.token(meeting, "bob")) as bob:
            for n in range(10):
                async with raw_client(server.url) as alice:
                    joined = await alice.authenticate(server.token(meeting, "alice"))
                    assert joined["event"] == "room:joined"
                    await alice.send_json(
                        "signal:offer", {"targetEmpId": "bob", "offer": {"sdp": str(n)}}
                    )
                    await alice.abort()
                # What alice sent before she went still arrives, then her leave.
                offer = await bob.wait_for("signal:offer")
                assert offer.data == {"fromEmpId": "alice", "offer": {"sdp": str(n)}}
                left = await bob.wait_for("peer:left", empId="alice")
                assert left.data["reason"] == "disconnected"
            await ping(bob)
            await bob.leave()
        await quiet.until(server)
        _healthy(server)


async def test_target_gone_in_the_middle_of_a_stream_of_signals(server, quiet):
    with trio.fail_after(DEADLINE):
        meeting = await server.meeting()
        async with connect(server.url, server.token(meeting, "alice")) as alice:
            for _ in range(5):
                async with raw_client(server.url) as bob:
                    joined = await bob.authenticate(server.token(meeting, "bob"))
                    assert joined["event"] == "room:joined"
                    await alice.wait_for("peer:joined", empId="bob")
                    answers: list[str] = []

                    async def stream(answers: list[str] = answers) -> None:
                        for n in range(200):
                            try:
                                await alice.request(
                                    "signal:ice", {"targetEmpId": "bob", "candidate": {"n": n}}
                                )
                                answers.append("ack")
                            except Exception as exc:  # MeshroomError
                                answers.append(getattr(exc, "code", repr(exc)))

                    async with trio.open_nursery() as n:
                        n.start_soon(stream)
                        await trio.lowlevel.checkpoint()  # let the stream start
                        await bob.abort()
                # Acks until the server saw bob go, then TARGET_NOT_FOUND; nothing else.
                assert set(answers) <= {"ack", "TARGET_NOT_FOUND"}
                assert answers[-1] == "TARGET_NOT_FOUND"
                assert answers == sorted(answers, key=lambda a: a != "ack")
                await alice.wait_for("peer:left", empId="bob")
            await ping(alice)
            await alice.leave()
        await quiet.until(server)
        _healthy(server)


# A flood of joins and leaves of one employee


async def test_a_flood_of_joins_and_leaves_of_one_employee(tmp_path, quiet):
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            server = await start_server(nursery, server_settings(tmp_path))
            meeting = await server.meeting()
            joined = 0

            async def cycles(worker: int) -> None:
                nonlocal joined
                for n in range(10):
                    try:
                        async with raw_client(server.url) as flood:
                            first = await flood.authenticate(server.token(meeting, "flood"))
                            if first["event"] != "room:joined":
                                continue
                            joined += 1
                            if (worker + n) % 3 == 0:
                                await flood.abort()
                            elif (worker + n) % 3 == 1:
                                await flood.send_json("peer:leave", id=1)
                                await flood.frames_until_closed()
                            else:  # a close frame, no leave: a disconnect
                                close = CloseConnection(code=1000)
                                await flood.stream.send_all(flood.ws.send(close))
                                await flood.frames_until_closed()
                    except (AssertionError, ConnectionError, trio.BrokenResourceError):
                        pass  # replaced by a sibling before it could read room:joined

            async with connect(server.url, server.token(meeting, "alice", Role.HOST)) as alice:
                async with trio.open_nursery() as workers:
                    for worker in range(20):
                        workers.start_soon(cycles, worker)
                await quiet.until(server, 1)  # every flood connection is done with
                await ping(alice)  # and everything the room told alice has arrived
                # Alice saw a consistent story: joined, left, joined, left...
                story = []
                while True:
                    try:
                        event = alice._events.receive_nowait()
                    except trio.WouldBlock:
                        break
                    if event.data.get("empId") == "flood":
                        story.append(event.name)
                assert story[0] == "peer:joined" and story[-1] == "peer:left"
                assert all(a != b for a, b in itertools.pairwise(story)), story
                assert server.hub.live_peers(meeting.id)[0]["empId"] == "alice"
                assert len(server.hub.live_peers(meeting.id)) == 1
                await alice.leave()
            await quiet.until(server)
            _healthy(server)
            rows = await _all_rows_closed(server, meeting.id)
            flood_rows = [reason for emp, reason in rows if emp == "flood"]
            assert len(flood_rows) >= joined
            assert set(flood_rows) <= {"left", "disconnected", "replaced"}
            server.server.request_shutdown()


# Oversized, binary and deeply nested frames


async def _frame_with_a_huge_length(client: RawClient, length: int, sent: int) -> None:
    mask = b"\x01\x02\x03\x04"
    header = struct.pack("!BBQ", 0x81, 0x80 | 127, length) + mask
    await client.stream.send_all(header + b"x" * sent)


async def test_oversized_frames_cost_an_error_not_the_connection_nor_the_memory(tmp_path):
    settings_ = server_settings(tmp_path, max_message_bytes=64 * 1024)
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            server = await start_server(nursery, settings_)
            meeting = await server.meeting()
            async with raw_client(server.url) as client:
                assert (await client.authenticate(server.token(meeting, "a")))["event"] == (
                    "room:joined"
                )
                # Over the limit but within the hard limit (1 MiB here): dropped, kept.
                for size in (64 * 1024 + 1, 2**20 - 64):
                    await client.send_text('{"event":"ping","data":{"x":"' + "y" * size + '"}}')
                    error = await client.receive_json()
                    assert error["data"]["code"] == "FRAME_TOO_LARGE"
                await client.send_json("ping", id=2)
                assert (await client.receive_json())["event"] == "ack"
            # A header claiming 2^62 bytes: closed with 1009 on its header, nothing read.
            async with raw_client(server.url) as client:
                assert (await client.authenticate(server.token(meeting, "b")))["event"] == (
                    "room:joined"
                )
                await _frame_with_a_huge_length(client, 2**62, 1000)
                assert await client.frames_until_closed() == []
                assert client.close_code == 1009
            async with connect(server.url, server.token(meeting, "c")) as c:
                await ping(c)
            server.server.request_shutdown()


async def test_binary_and_oversized_first_frames_are_refused_with_4000(server):
    with trio.fail_after(DEADLINE):
        for send in (
            lambda c: c.send_bytes(b"\x00\x01binary"),
            lambda c: c.send_text("x" * (server.settings.max_message_bytes + 1)),
            lambda c: c.send_text("[" * 50_000),
        ):
            async with raw_client(server.url) as client:
                await send(client)
                frames = await client.frames_until_closed()
                assert [f["data"]["code"] for f in frames] == ["AUTH_REQUIRED"]
                assert client.close_code == 4000


@pytest.mark.parametrize("depth", [2_000, 30_000])
async def test_deeply_nested_json_is_bad_json_and_the_connection_survives(server, depth):
    with trio.fail_after(DEADLINE):
        meeting = await server.meeting()
        async with raw_client(server.url) as client:
            assert (await client.authenticate(server.token(meeting, "a")))["event"] == (
                "room:joined"
            )
            for text in (
                "[" * depth + "]" * depth,
                '{"event":"signal:offer","data":{"targetEmpId":"b","offer":'
                + '{"a":' * depth
                + "1"
                + "}" * depth
                + "}}",
            ):
                await client.send_text(text)
                error = await client.receive_json()
                assert error["event"] == "error"
                assert error["data"]["code"] in ("BAD_JSON", "FRAME_TOO_LARGE")
            await client.send_json("ping", id=3)
            assert (await client.receive_json())["id"] == 3


async def test_reasonably_nested_payloads_are_relayed_untouched(server):
    with trio.fail_after(DEADLINE):
        meeting = await server.meeting()
        async with (
            connect(server.url, server.token(meeting, "a")) as a,
            connect(server.url, server.token(meeting, "b")) as b,
        ):
            offer: dict = {"leaf": True}
            for _ in range(100):
                offer = {"nested": offer}
            await a.offer("b", offer)
            received = await b.wait_for("signal:offer")
            assert received.data["offer"] == offer


@settings(max_examples=500)
@given(st.binary(max_size=512))
def test_the_decoder_only_raises_protocol_errors_on_arbitrary_bytes(data):
    try:
        request = decode_request(data)
    except ProtocolError as exc:
        assert isinstance(exc.code, ErrorCode)
    else:
        assert isinstance(request.data, dict)


def test_json_nesting_beyond_the_parsers_limit_is_bad_json():
    for text in ("[" * 100_000, '{"a":' * 100_000, "[" * 2000 + "]" * 2000):
        with pytest.raises(ProtocolError) as info:
            decode_request(text)
        assert info.value.code in (ErrorCode.BAD_JSON, ErrorCode.BAD_FRAME)
    assert json.loads("[" * 500 + "]" * 500)  # (the stdlib agrees at small depths)


async def test_join_refused_when_the_room_is_gone_mid_flood(server):
    # Refusals never take the server down: a meeting that does not exist, a hundred times.
    with trio.fail_after(DEADLINE):
        for n in range(100):
            with pytest.raises(JoinRefused) as refused:
                async with connect(server.url, server.token(f"no-such-meeting-{n}", "x")):
                    pass
            assert refused.value.code == "MEETING_NOT_FOUND"
        meeting = await server.meeting()
        async with connect(server.url, server.token(meeting, "a")) as a:
            await ping(a)


# Nesting depth: limited at parse time, so what is accepted can be relayed (issue 11 #6)


def _nested_offer(depth: int) -> str:
    """A signal:offer frame nesting ``depth`` levels in all (its own object is level 1)."""
    inner = depth - 3  # the frame, its data and the offer object are three levels
    offer = '{"a":' * inner + "{}" + "}" * inner
    return '{"event":"signal:offer","data":{"targetEmpId":"b","offer":' + offer + "}}"


@pytest.mark.parametrize("depth", [3, 64, MAX_NESTING_DEPTH - 1, MAX_NESTING_DEPTH])
def test_a_frame_nested_up_to_the_limit_is_accepted_and_can_be_encoded_again(depth):
    request = decode_request(_nested_offer(depth))
    # What the server would relay: the offer re-encoded inside a frame of the same depth.
    relayed = encode_event("signal:offer", {"fromEmpId": "a", "offer": request.data["offer"]})
    assert json.loads(relayed)["data"]["offer"] == request.data["offer"]


@pytest.mark.parametrize("depth", [MAX_NESTING_DEPTH + 1, 256, 257, 990, 1023, 1024, 5000])
def test_a_frame_nested_past_the_limit_is_bad_json_naming_the_limit(depth):
    with pytest.raises(ProtocolError) as info:
        decode_request(_nested_offer(depth))
    assert info.value.code is ErrorCode.BAD_JSON
    assert str(MAX_NESTING_DEPTH) in info.value.message or depth > 1024


def test_brackets_inside_strings_do_not_count_as_nesting():
    text = json.dumps({"event": "ping", "data": {"pad": "[{" * 5000}})
    assert decode_request(text).data["pad"] == "[{" * 5000


@pytest.mark.parametrize("depth", [MAX_NESTING_DEPTH, MAX_NESTING_DEPTH + 1, 300, 990])
async def test_a_deeply_nested_signal_costs_the_sender_an_error_not_its_session(server, depth):
    """The issue's reproduction: a signal nested 990 levels closed its sender with 1011."""
    with trio.fail_after(DEADLINE):
        meeting = await server.meeting()
        async with (
            raw_client(server.url) as a,
            connect(server.url, server.token(meeting, "b")) as b,
        ):
            assert (await a.authenticate(server.token(meeting, "a")))["event"] == "room:joined"
            await a.send_text(_nested_offer(depth))
            await a.send_json("ping", id="after")
            answers = []  # everything up to the ack of the ping: the session survived
            while (frame := await a.receive_json()).get("id") != "after":
                answers.append(frame)
            assert frame["event"] == "ack"
            if depth <= MAX_NESTING_DEPTH:
                assert answers == []
                offer = await b.wait_for("signal:offer")
                assert offer.data["offer"] == json.loads(_nested_offer(depth))["data"]["offer"]
            else:
                assert [f["data"]["code"] for f in answers] == ["BAD_JSON"]
                assert str(MAX_NESTING_DEPTH) in answers[0]["data"]["message"]
            await ping(b)


# Every field of every client event, of every JSON type: an answer, never a crash


json_scalars = (  # (what orjson reads: no NaN or Infinity, integers within 64 bits)
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
_KIND_OF = {"string": str, "object": dict, "boolean": bool}


@st.composite
def event_with_one_field_of_any_type(draw: st.DrawFn) -> tuple[str, str, object, dict]:
    event = draw(st.sampled_from([e for e, fields in CLIENT_EVENTS.items() if fields]))
    fields = CLIENT_EVENTS[event]
    spec = draw(st.sampled_from(fields))
    data = {f.name: _valid_value(f.kind) for f in fields}
    value = draw(st.one_of(json_scalars, json_values))
    data[spec.name] = value
    return event, spec.name, value, data


def _valid_value(kind: str) -> object:
    return {"string": "x", "object": {}, "object-or-null": None, "boolean": True, "count": 0}[kind]


def _type_fits(kind: str, value: object) -> bool:
    if kind == "object-or-null":
        return value is None or isinstance(value, dict)
    if kind == "count":  # a frame count: a non-negative 64-bit integer, not a boolean
        return type(value) is int and 0 <= value < 2**63
    return isinstance(value, _KIND_OF[kind])


@settings(max_examples=300, deadline=None)
@given(event_with_one_field_of_any_type(), st.one_of(st.none(), json_values))
def test_any_json_value_in_any_field_of_any_event_is_accepted_or_invalid_field(case, request_id):
    event, name, value, data = case
    spec = next(f for f in CLIENT_EVENTS[event] if f.name == name)
    frame = {"event": event, "data": data}
    if request_id is not None:
        frame["id"] = request_id
    try:
        request = decode_request(json.dumps(frame))
    except ProtocolError as exc:
        assert exc.code is ErrorCode.INVALID_FIELD
        assert exc.field in ("id", f"data.{name}")
        if exc.field == f"data.{name}":
            assert (
                not _type_fits(spec.kind, value)
                or (isinstance(value, str) and len(value) > spec.max_length > 0)
                or (isinstance(value, str) and "\x00" in value)  # (PostgreSQL cannot store it)
                or (value is None and spec.required and spec.kind != "object-or-null")
            )
        return
    assert _type_fits(spec.kind, value) or (value is None and not spec.required)
    # And whatever is accepted can be written back out (relayed, or echoed in an ack).
    encode_event(request.event, request.data, request.id)


async def test_a_correctly_signed_token_with_a_string_exp_is_auth_failed_not_1011(server):
    """The issue's reproduction: TypeError in verification closed with 1011, no error frame."""
    with trio.fail_after(DEADLINE):
        meeting = await server.meeting()
        now = int(time.time())
        for claim, value in (("exp", str(now + 3600)), ("iat", str(now)), ("exp", {"t": 1})):
            claims = {
                "mid": meeting.id, "sub": "mallory", "role": "PARTICIPANT", "iat": now,
                "exp": now + 3600, "jti": {"any": ["json"]}, "aud": "meshroom", "iss": "meshroom",
            }  # fmt: skip
            claims[claim] = value
            token = jwt.encode(claims, server.settings.secret, algorithm="HS256")
            async with raw_client(server.url) as client:
                await client.send_json("auth", {"meetingAccessToken": token}, id=1)
                frames = await client.frames_until_closed()
                assert [(f["data"]["code"], f["id"]) for f in frames] == [("AUTH_FAILED", 1)]
                assert claim in frames[0]["data"]["message"]
                assert client.close_code == 4001
        # And the same employee with a sound token, jti an object, gets in.
        claims[claim] = now + 3600
        token = jwt.encode(claims, server.settings.secret, algorithm="HS256")
        async with raw_client(server.url) as client:
            assert (await client.authenticate(token))["event"] == "room:joined"


# Oversized upgrade requests (issue 11 #9): 431, however the bytes are cut


async def _status_of_request(server: RunningServer, head: bytes, chunk: int) -> int:
    stream = await trio.open_tcp_stream("127.0.0.1", server.server.port)
    async with stream:
        try:
            for i in range(0, len(head), chunk):
                await stream.send_all(head[i : i + chunk])
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # refused before the rest was sent: the answer is still there to read
        answer = b""
        while b"\r\n" not in answer:
            data = await stream.receive_some(4096)
            if not data:
                break
            answer += data
    return int(answer.split(b" ", 2)[1])


def _upgrade_request(header_bytes: int) -> bytes:
    padding = b"".join(
        b"X-Pad-%05d: %s\r\n" % (n, b"p" * 90) for n in range(header_bytes // 105 + 1)
    )[:header_bytes]
    padding = padding[: padding.rfind(b"\r\n") + 2]
    return (
        b"GET /meetings HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        b"Sec-WebSocket-Version: 13\r\n" + padding + b"\r\n"
    )


@pytest.mark.parametrize(
    ("header_bytes", "chunk"),
    [(20_000, 1 << 20), (60_000, 1 << 20), (70_000, 1 << 20), (200_000, 1 << 20), (17_000, 1000)],
    ids=["20KiB-whole", "60KiB-whole", "70KiB-whole", "200KiB-whole", "17KiB-in-pieces"],
)
async def test_an_upgrade_with_oversized_headers_gets_431(server, header_bytes, chunk):
    with trio.fail_after(DEADLINE):
        assert await _status_of_request(server, _upgrade_request(header_bytes), chunk) == 431


async def test_an_upgrade_with_headers_just_under_the_limit_is_accepted(server):
    with trio.fail_after(DEADLINE):
        head = _upgrade_request(MAX_REQUEST_HEAD_BYTES - 400)
        assert len(head) <= MAX_REQUEST_HEAD_BYTES
        assert await _status_of_request(server, head, 1000) == 101
        assert await _status_of_request(server, head, 1 << 20) == 101


def test_every_row_of_the_hostile_input_table_names_a_test_that_exists():
    """docs/security.md §4 names one test per hostile input: each must be a real test."""
    root = Path(__file__).parent
    doc = (root.parent / "docs" / "security.md").read_text()
    table = doc[doc.index("## 4. Hostile inputs") : doc.index("## 5.")]
    rows = [line for line in table.splitlines() if line.startswith("| ") and "`test_" in line]
    assert len(rows) >= 25
    for row in rows:
        named = re.findall(r"`(test_\w+\.py)::(test_\w+)`", row)
        assert named, row
        for file, test in named:
            source = (root / file).read_text()
            assert re.search(rf"^(async )?def {test}\(", source, re.MULTILINE), (file, test)
