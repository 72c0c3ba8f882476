"""Property tests for the sans-I/O Engine.IO / Socket.IO layers.

python-socketio's and python-engineio's packet classes serve as an independent
decoding oracle: what meshroom encodes, they read back the same; what they encode,
meshroom reads back the same. Arbitrary text never makes a decoder fail with
anything but its protocol error.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import json
from types import ModuleType
from typing import Any

import engineio.packet as eio_oracle
from hypothesis import example, given, settings
from hypothesis import strategies as st

from meshroom.protocol import engineio, socketio
from meshroom.protocol.codes import CloseCode
from meshroom.protocol.engineio_session import (
    EngineSession,
    Heartbeat,
    SessionError,
    Timer,
    Transport,
)
from meshroom.protocol.socketio import Ending, NamespaceBridge


def _python_socketio_packet() -> ModuleType:
    # By path: inside pytest, "socketio" is this test package (tests/socketio), which
    # shadows python-socketio; its packet module needs nothing else from it.
    path = importlib.metadata.distribution("python-socketio").locate_file("socketio/packet.py")
    spec = importlib.util.spec_from_file_location("_python_socketio_packet", str(path))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


sio_oracle = _python_socketio_packet()

json_scalars = st.none() | st.booleans() | st.integers(-(2**53) + 1, 2**53 - 1) | st.text()
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)
json_objects = st.dictionaries(st.text(max_size=8), json_values, max_size=4)
namespaces = st.just("/") | st.from_regex(r"/[a-z0-9_-]{1,10}", fullmatch=True)
ack_ids = st.none() | st.integers(0, socketio.MAX_ACK_ID)
event_names = st.text(min_size=1, max_size=12).filter(lambda n: n not in socketio.RESERVED_EVENTS)


@st.composite
def sio_packets(draw: st.DrawFn) -> socketio.Packet:
    kind = draw(
        st.sampled_from(
            [
                socketio.PacketType.CONNECT,
                socketio.PacketType.DISCONNECT,
                socketio.PacketType.EVENT,
                socketio.PacketType.ACK,
                socketio.PacketType.CONNECT_ERROR,
            ]
        )
    )
    namespace = draw(namespaces)
    data: Any
    ack: int | None = None
    if kind is socketio.PacketType.CONNECT:
        data = draw(st.none() | json_objects)
    elif kind is socketio.PacketType.DISCONNECT:
        data = None
    elif kind is socketio.PacketType.EVENT:
        data = [draw(event_names), *draw(st.lists(json_values, max_size=3))]
        ack = draw(ack_ids)
    elif kind is socketio.PacketType.ACK:
        data = draw(st.lists(json_values, max_size=3))
        ack = draw(st.integers(0, socketio.MAX_ACK_ID))
    else:
        data = draw(st.text() | json_objects)
    return socketio.Packet(kind, namespace, data, ack)


@given(sio_packets())
def test_socketio_roundtrip_and_oracle(packet: socketio.Packet) -> None:
    text = socketio.encode(packet)
    assert socketio.decode(text) == packet
    oracle = sio_oracle.Packet(encoded_packet=text)
    assert oracle.packet_type == int(packet.type)
    assert (oracle.namespace or "/") == packet.namespace
    assert oracle.id == packet.id
    assert oracle.data == packet.data
    # And the other way: what python-socketio writes, meshroom reads.
    theirs = sio_oracle.Packet(
        int(packet.type), data=packet.data, namespace=packet.namespace, id=packet.id
    ).encode()
    assert isinstance(theirs, str)
    assert socketio.decode(theirs) == packet


@given(st.text(max_size=40))
def test_socketio_decode_fails_only_with_its_protocol_error(text: str) -> None:
    with contextlib.suppress(socketio.SocketIOProtocolError):
        socketio.decode(text)


@given(st.lists(st.text(max_size=20).filter(lambda t: engineio.SEPARATOR not in t), min_size=1))
@example(["NaN"])  # found by hypothesis: the oracle's float NaN never equals itself
def test_engineio_payload_roundtrip_and_oracle(messages: list[str]) -> None:
    packets = [engineio.Packet(engineio.PacketType.MESSAGE, m) for m in messages]
    body = engineio.encode_payload(packets)
    assert engineio.decode_payload(body) == packets
    for part, message in zip(body.split(engineio.SEPARATOR), messages, strict=True):
        oracle = eio_oracle.Packet(encoded_packet=part)
        assert oracle.packet_type == eio_oracle.MESSAGE
        # python-engineio parses JSON-looking data; compare what it means.
        if isinstance(oracle.data, str):
            assert oracle.data == message
        else:
            # Compared as JSON text: "NaN" parses to a float that equals nothing, itself included.
            assert json.dumps(oracle.data) == json.dumps(json.loads(message))


@given(st.binary(max_size=64))
def test_engineio_binary_is_base64_on_polling(data: bytes) -> None:
    packet = engineio.Packet(engineio.PacketType.MESSAGE, data)
    encoded = engineio.encode_packet(packet, polling=True)
    assert encoded == eio_oracle.Packet(eio_oracle.MESSAGE, data).encode(b64=True)
    assert isinstance(encoded, str)
    assert engineio.decode_packet(encoded) == packet
    assert engineio.encode_packet(packet, polling=False) == data


@given(st.text(max_size=40))
def test_engineio_decode_fails_only_with_its_protocol_error(text: str) -> None:
    with contextlib.suppress(engineio.EngineIOProtocolError):
        engineio.decode_payload(text)


# -- the session machine ---------------------------------------------------------------

operations = st.lists(
    st.sampled_from(
        ["push", "poll", "tick", "pong", "probe", "upgrade", "take_ws", "get", "end_get"]
    ),
    max_size=60,
)


@settings(max_examples=200)
@given(operations, st.integers(8, 64))
def test_session_delivers_every_message_once_in_order(ops: list[str], max_payload: int) -> None:
    now = 0.0
    session = EngineSession(
        "sid", Transport.POLLING, heartbeat=Heartbeat(1.0, 1.0), max_payload=max_payload, now=now
    )
    pushed: list[str] = []
    delivered: list[str] = []

    def collect(packets: list[engineio.Packet]) -> None:
        delivered.extend(str(p.data) for p in packets if p.type is engineio.PacketType.MESSAGE)

    for n, op in enumerate(ops):
        if op == "push":
            message = f"m{n}"
            session.push(engineio.Packet(engineio.PacketType.MESSAGE, message), tag=n)
            if not session.closed:
                pushed.append(message)
        elif op == "poll" and session.poll_ready():
            body = session.take_poll()
            if body is not None and session.transport is Transport.POLLING:
                parts = body.split(engineio.SEPARATOR)
                # Over maxPayload only if it is a single packet.
                assert len(parts) == 1 or len(body) <= max_payload
                collect(engineio.decode_payload(body))
        elif op == "tick":
            now += 0.75
            timer = session.on_timer(now)
            if timer is Timer.TIMEOUT:
                assert session.closed
        elif op == "pong":
            session.receive(engineio.Packet(engineio.PacketType.PONG), now)
            assert session.pong_deadline is None
        elif op == "probe":
            try:
                answer = session.probe(engineio.Packet(engineio.PacketType.PING, "probe"))
                assert answer == engineio.Packet(engineio.PacketType.PONG, "probe")
                assert session.poll_ready()  # the pending GET is released
            except SessionError:
                assert not session.can_upgrade() or session.closed
        elif op == "upgrade":
            try:
                session.upgrade(engineio.Packet(engineio.PacketType.UPGRADE))
                assert session.transport is Transport.WEBSOCKET
            except SessionError:
                pass
        elif op == "take_ws":
            frames = session.take_websocket()
            collect([engineio.decode_packet(f) for f in frames])
        elif op == "get":
            with contextlib.suppress(SessionError):
                session.begin_get()
        elif op == "end_get":
            session.end_get()
    # Drain whatever is left, on whichever transport.
    while session.has_output:
        if session.transport is Transport.WEBSOCKET:
            collect([engineio.decode_packet(f) for f in session.take_websocket()])
        else:
            body = session.take_poll()
            assert body is not None
            collect(engineio.decode_payload(body))
    assert delivered == pushed
    # The tag of the last packet taken tells how far the client has been sent.
    assert session.taken_tag == (int(pushed[-1][1:]) if pushed else None)


def test_session_rules() -> None:
    session = EngineSession(
        "sid", Transport.POLLING, heartbeat=Heartbeat(1.0, 2.0), max_payload=100, now=0.0
    )
    session.begin_get()
    try:
        session.begin_get()
        raise AssertionError("a second GET was accepted")
    except SessionError as exc:
        assert exc.code is engineio.ErrorCode.BAD_REQUEST
    assert session.on_timer(1.0) is Timer.PING
    assert session.take_poll() == "2"
    assert session.on_timer(2.5) is Timer.PING  # still unanswered: pinged again
    assert session.on_timer(3.0) is Timer.TIMEOUT and session.closed
    assert session.take_poll() == "2"  # what was queued still goes out
    assert session.take_poll() is None  # then the GET gets an error


def test_every_get_is_answered_at_once_while_upgrading() -> None:
    """The race behind hypercorn: the GET pending at the probe carries queued packets,
    the client gets them before ``3probe`` and polls again; that GET must not wait."""
    session = EngineSession(
        "sid", Transport.POLLING, heartbeat=Heartbeat(25.0, 20.0), max_payload=1000, now=0.0
    )
    session.begin_get()
    assert not session.poll_ready()  # an idle GET waits for traffic
    session.push(engineio.Packet(engineio.PacketType.MESSAGE, '40/meetings,{"sid":"x"}'))
    session.probe(engineio.Packet(engineio.PacketType.PING, "probe"))
    assert session.poll_ready()
    assert session.take_poll() == '440/meetings,{"sid":"x"}'  # the packet, not a noop
    session.end_get()
    # The client polled again before 3probe reached it: answered at once, with a noop.
    session.begin_get()
    assert session.poll_ready()
    assert session.take_poll() == "6"
    session.end_get()
    # And a GET still pending when "5" arrives is released too.
    session.begin_get()
    session.upgrade(engineio.Packet(engineio.PacketType.UPGRADE))
    assert session.poll_ready()
    assert session.take_poll() == "6"
    session.end_get()
    # A probe that fails puts polling back to waiting for traffic.
    other = EngineSession(
        "sid2", Transport.POLLING, heartbeat=Heartbeat(25.0, 20.0), max_payload=1000, now=0.0
    )
    other.probe(engineio.Packet(engineio.PacketType.PING, "probe"))
    other.upgrade_failed()
    assert not other.poll_ready()


# -- the namespace bridge ---------------------------------------------------------------


@given(event_names, st.none() | json_objects, ack_ids)
def test_bridge_maps_events_to_native_requests(
    name: str, data: dict[str, Any] | None, ack: int | None
) -> None:
    bridge = NamespaceBridge("/meetings", "sid")
    args = [] if data is None else [data]
    frame = bridge.inbound(
        socketio.Packet(socketio.PacketType.EVENT, "/meetings", [name, *args], ack)
    )
    assert frame is not None
    native = json.loads(frame)
    assert native["event"] == name
    assert native.get("id") == ack
    assert native.get("data") == data


@given(st.sampled_from(list(CloseCode)), st.booleans(), st.booleans())
def test_bridge_endings(code: CloseCode, joined: bool, refused: bool) -> None:
    bridge = NamespaceBridge("/meetings", "sid")
    if refused:
        assert bridge.outbound(b'{"event":"error","data":{"code":"BANNED","message":"no"}}') == []
    if joined:
        packets = bridge.outbound(b'{"event":"room:joined","data":{"resumeToken":"r"}}')
        assert [p.type for p in packets] == [
            socketio.PacketType.CONNECT,
            socketio.PacketType.EVENT,
        ]
        assert bridge.resume_token == "r"
    packets, ending = bridge.closing(code, "why")
    if not joined:
        if refused or code in socketio.SERVER_DECIDED:
            [packet] = packets
            assert packet.type is socketio.PacketType.CONNECT_ERROR
            assert packet.data["data"]["closeCode"] == code
            if refused:
                assert packet.data["data"]["code"] == "BANNED"
            assert ending is Ending.KEEP_TRANSPORT
        else:
            assert packets == [] and ending is Ending.CLOSE_TRANSPORT
    elif code in socketio.SERVER_DECIDED:
        assert [p.type for p in packets] == [socketio.PacketType.DISCONNECT]
        assert ending is Ending.KEEP_TRANSPORT
    else:
        assert packets == [] and ending is Ending.CLOSE_TRANSPORT


def test_bridge_acks_and_errors() -> None:
    bridge = NamespaceBridge("/meetings", "sid")
    bridge.outbound(b'{"event":"room:joined","data":{}}')
    [ack] = bridge.outbound(b'{"event":"ack","id":4,"data":{"targetEmpId":"bob"}}')
    assert socketio.encode(ack) == '3/meetings,4[{"targetEmpId":"bob"}]'
    [error] = bridge.outbound(b'{"event":"error","id":5,"data":{"code":"FORBIDDEN"}}')
    assert socketio.encode(error) == '3/meetings,5[{"code":"FORBIDDEN"}]'
    [event] = bridge.outbound(b'{"event":"error","data":{"code":"BAD_JSON"}}')
    assert socketio.encode(event) == '2/meetings,["error",{"code":"BAD_JSON"}]'
    [event] = bridge.outbound(b'{"event":"peer:joined","data":{"empId":"a"}}')
    assert socketio.encode(event) == '2/meetings,["peer:joined",{"empId":"a"}]'


def test_bridge_ignores_other_top_level_keys() -> None:
    """Keys the core may add beside event/id/data (such as a frame ``seq``) are not relayed."""
    bridge = NamespaceBridge("/meetings", "sid")
    bridge.outbound(b'{"event":"room:joined","data":{},"seq":1}')
    [event] = bridge.outbound(b'{"event":"peer:joined","data":{"empId":"a"},"seq":7}')
    assert socketio.encode(event) == '2/meetings,["peer:joined",{"empId":"a"}]'


# -- the bridge's fast paths agree with its decoding paths -------------------------------


def _numbered(frame: bytes, seq: int | None) -> bytes:
    # As the core's Peer stamps each frame it writes (meshroom.core.peer).
    return frame if seq is None else frame[:-1] + b',"seq":%d}' % seq


@given(
    event_names | st.sampled_from(["ack", "error", "room:resumed", 'a"b', "a\\b"]),
    json_objects,
    st.none() | st.integers(0, 2**31) | st.text(max_size=8),
    st.none() | st.integers(1, 2**40),
)
def test_bridge_outbound_text_splices_as_it_decodes(
    name: str, data: dict[str, Any], request_id: int | str | None, seq: int | None
) -> None:
    from meshroom.protocol.messages import encode_event

    frame = _numbered(encode_event(name, data, request_id), seq)
    fast = NamespaceBridge("/meetings", "sid", joined=True)
    slow = NamespaceBridge("/meetings", "sid", joined=True)
    texts = fast.outbound_text(frame)
    packets = slow.outbound(frame)
    assert [socketio.decode(text) for text in texts] == packets
    assert fast.frame_seq == slow.frame_seq == seq
    assert fast.resume_token == slow.resume_token


@given(
    event_names | st.sampled_from(['a"b', "a\\b", "\x01"]),
    st.lists(json_values, max_size=3),
    ack_ids,
    st.sampled_from(["", " "]),
)
def test_bridge_inbound_copies_the_argument_as_it_decodes(
    name: str, args: list[Any], ack: int | None, space: str
) -> None:
    # As a client may write it, whitespace around the arguments included.
    items = [json.dumps(name, ensure_ascii=False)]
    items += [space + json.dumps(arg, ensure_ascii=False) + space for arg in args]
    text = f"2/meetings,{'' if ack is None else ack}[{','.join(items)}]"
    decoded, start = socketio.decode_at(text)
    bridge = NamespaceBridge("/meetings", "sid")
    fast = bridge.inbound(decoded, text, start)
    slow = bridge.inbound(decoded)
    assert fast is not None and slow is not None
    assert json.loads(fast) == json.loads(slow)


@given(
    event_names | st.sampled_from(["ack", "error", "room:resumed", 'a"b', "a\\b"]),
    json_objects,
    st.none() | st.integers(0, 2**31) | st.text(max_size=8),
    st.none() | st.integers(1, 2**40),
    st.booleans(),
)
def test_bridge_outbound_messages_are_the_texts_as_bytes(
    name: str, data: dict[str, Any], request_id: int | str | None, seq: int | None, joined: bool
) -> None:
    """The WebSocket's bytes (spliced without a str round trip) are the polling texts."""
    from meshroom.protocol.messages import encode_event

    frame = _numbered(encode_event(name, data, request_id), seq)
    fast = NamespaceBridge("/meetings", "sid", joined=joined)
    slow = NamespaceBridge("/meetings", "sid", joined=joined)
    assert fast.outbound_messages(frame) == [b"4" + t.encode() for t in slow.outbound_text(frame)]
    assert fast.frame_seq == slow.frame_seq
    assert fast.joined == slow.joined and fast.resume_token == slow.resume_token
    root = NamespaceBridge("/", "sid", joined=True)
    assert root.outbound_messages(frame) == [
        b"4" + t.encode() for t in NamespaceBridge("/", "sid", joined=True).outbound_text(frame)
    ]


def _engineio_texts() -> st.SearchStrategy[str]:
    """Engine.IO messages as a client may write them: mostly EVENTs on /meetings, some
    with spaces, odd names, several or no arguments, ack ids, broken JSON."""
    name = event_names | st.sampled_from(['a"b', "a\\b", "\x01", "connect", "é", ""])
    args = st.lists(json_values, max_size=3)
    space = st.sampled_from(["", " "])

    @st.composite
    def event(draw: st.DrawFn) -> str:
        items = [json.dumps(draw(name), ensure_ascii=draw(st.booleans()))]
        s = draw(space)
        items += [s + json.dumps(arg, ensure_ascii=False) + s for arg in draw(args)]
        ack = draw(st.none() | st.integers(0, 2**60))
        namespace = draw(st.sampled_from(["/meetings,", "/other,", "/meetings", ""]))
        text = f"42{namespace}{'' if ack is None else ack}[{','.join(items)}]"
        return text + draw(st.sampled_from(["", "", "]", "x", " "]))

    return event() | st.text(max_size=30).map(lambda t: "42/meetings," + t)


@settings(max_examples=400)
@given(_engineio_texts())
@example('42/meetings,["signal:offer",{"targetEmpId":"b","offer":{}}]')
@example('42/meetings,7["ping",{}]')
@example('42/meetings,["x",{}, {"a":1}]')
@example('42/meetings,["x",{}],["y",{}]')
@example('42/meetings,["connect",{}]')
@example('42/meetings,["x",{"a":NaN}]')
@example('42/meetings,99999999999999999["x",{}]')
def test_bridge_event_frame_is_the_general_way_without_the_packet(message: str) -> None:
    """event_frame() takes only what decode_at() + inbound() accept, and gives the same
    native frame; its parsed value is what the core would parse from its text."""
    from meshroom.protocol.messages import ParsedFrame, ProtocolError, decode_request

    bridge = NamespaceBridge("/meetings", "sid", joined=True)
    fast = bridge.event_frame(message)
    if fast is None:
        return
    packet, start = socketio.decode_at(message, 1)  # does not raise: it is valid
    assert packet.namespace == "/meetings" and packet.type is socketio.PacketType.EVENT
    slow = NamespaceBridge("/meetings", "sid", joined=True).inbound(packet, message, start)
    assert slow is not None
    assert str(fast) == str(slow)
    assert isinstance(fast, ParsedFrame) and fast.value == json.loads(str(fast))

    def decoded(frame: str) -> Any:
        try:
            return decode_request(frame)
        except ProtocolError as exc:
            return (exc.code, str(exc), exc.request_id, exc.event, exc.field)

    # The core gets the same request (or refusal) as from the text: twice, since it may
    # decode a frame again (a rate-limited one's error names its request).
    again = NamespaceBridge("/meetings", "sid").event_frame(message)
    assert again is not None
    assert decoded(fast) == decoded(str(fast)) == decoded(again)


@given(json_values, st.sampled_from(["signal:offer", "ping", "host:kick", "nope"]), ack_ids)
def test_decode_request_of_a_parsed_frame_is_that_of_its_text(
    data: Any, event: str, ack: int | None
) -> None:
    from meshroom.protocol.messages import ParsedFrame, ProtocolError, decode_request

    value: dict[str, Any] = {"event": event, "data": data}
    if ack is not None:
        value["id"] = ack
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    frame = ParsedFrame(text)
    frame.value = json.loads(text)

    def decoded(frame: str) -> Any:
        try:
            return decode_request(frame)
        except ProtocolError as exc:
            return (exc.code, str(exc), exc.request_id, exc.event, exc.field)

    assert decoded(frame) == decoded(text)
