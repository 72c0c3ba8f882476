"""The wire protocol: decode_request on good and bad input, and the encoders."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshroom.protocol import (
    CLIENT_EVENTS,
    EncodedJson,
    ErrorCode,
    ProtocolError,
    Request,
    decode_request,
    encode_ack,
    encode_error,
    encode_event,
    encode_protocol_error,
)


def frame(event: Any = None, data: Any = None, **extra: Any) -> str:
    obj: dict[str, Any] = dict(extra)
    if event is not None:
        obj["event"] = event
    if data is not None:
        obj["data"] = data
    return json.dumps(obj)


def refused(text: str) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        decode_request(text)
    return info.value


# Good input


def test_minimal_request_has_empty_data_and_no_id():
    assert decode_request('{"event":"ping"}') == Request(event="ping", data={}, id=None)


@pytest.mark.parametrize("request_id", [0, 1, -5, 2**53 - 1, "", "abc", "x" * 64])
def test_valid_ids_are_kept(request_id):
    request = decode_request(frame("ping", {}, id=request_id))
    assert request.id == request_id


def test_relay_request_keeps_its_data_untouched():
    data = {"targetEmpId": "bob", "offer": {"type": "offer", "sdp": "v=0\r\n"}, "extra": [1]}
    request = decode_request(frame("signal:offer", data, id=3))
    assert request == Request(event="signal:offer", data=data, id=3)


def test_ice_candidate_may_be_null_end_of_candidates():
    request = decode_request(frame("signal:ice", {"targetEmpId": "bob", "candidate": None}))
    assert request.data["candidate"] is None


def test_optional_fields_may_be_absent():
    assert decode_request(frame("presence:update", {})).data == {}
    assert decode_request(frame("host:ban", {"targetEmpId": "bob"})).data == {"targetEmpId": "bob"}
    request = decode_request(frame("presence:update", {"muted": True, "handRaised": False}))
    assert request.data == {"muted": True, "handRaised": False}


@pytest.mark.parametrize(
    ("event", "data"),
    [
        ("auth", {"meetingAccessToken": "t"}),
        ("signal:offer", {"targetEmpId": "b", "offer": {}}),
        ("signal:answer", {"targetEmpId": "b", "answer": {}}),
        ("signal:ice", {"targetEmpId": "b", "candidate": {"candidate": "c"}}),
        ("presence:update", {"cameraOff": True}),
        ("peer:leave", {}),
        ("ping", {}),
        ("host:kick", {"targetEmpId": "b"}),
        ("host:ban", {"targetEmpId": "b", "reason": "spam"}),
        ("host:unban", {"targetEmpId": "b"}),
        ("host:end", {}),
        ("host:promote", {"targetEmpId": "b"}),
        ("host:demote", {"targetEmpId": "b"}),
    ],
)
def test_every_client_event_decodes(event, data):
    assert decode_request(frame(event, data, id="r1")) == Request(event, data, "r1")


def test_the_table_above_covers_every_client_event():
    assert len(CLIENT_EVENTS) == 13


# BAD_JSON


@pytest.mark.parametrize(
    "text", ["", "not json", "{", '{"event": "ping"', "{'event': 'ping'}", "\x00"]
)
def test_text_that_is_not_json_is_bad_json(text):
    assert refused(text).code is ErrorCode.BAD_JSON


@pytest.mark.parametrize("text", ["[" * 100_000, '{"a":' * 100_000, "[" * 100_000 + "]" * 100_000])
def test_deeply_nested_json_is_bad_json_not_a_crash(text):
    error = refused(text)
    assert error.code is ErrorCode.BAD_JSON
    assert len(error.message) < 200


def test_huge_integer_literal_is_bad_json():
    assert refused('{"event":"ping","id":' + "9" * 5000 + "}").code is ErrorCode.BAD_JSON


# BAD_FRAME


@pytest.mark.parametrize("text", ["[]", "[1,2]", "1", "null", "true", '"ping"', "1.5"])
def test_json_that_is_not_an_object_is_bad_frame(text):
    assert refused(text).code is ErrorCode.BAD_FRAME


@pytest.mark.parametrize(
    "text", ['{"data":{}}', '{"event":1}', '{"event":null}', '{"event":["ping"]}']
)
def test_object_without_an_event_string_is_bad_frame(text):
    assert refused(text).code is ErrorCode.BAD_FRAME


def test_bad_frame_echoes_the_id():
    error = refused('{"id": 9, "event": 42}')
    assert (error.code, error.request_id) == (ErrorCode.BAD_FRAME, 9)


# UNKNOWN_EVENT


def test_unknown_event_echoes_id_and_event():
    error = refused(frame("signal:teleport", {}, id=7))
    assert error.code is ErrorCode.UNKNOWN_EVENT
    assert error.request_id == 7
    assert error.event == "signal:teleport"


def test_unknown_event_name_is_truncated():
    error = refused(frame("x" * 10_000, id="a"))
    assert error.code is ErrorCode.UNKNOWN_EVENT
    assert error.event == "x" * 64
    assert len(error.message) < 100


# INVALID_FIELD


@pytest.mark.parametrize("request_id", [True, False, 1.5, 2**53, -(2**53), "x" * 65, [1], {"a": 1}])
def test_invalid_ids(request_id):
    error = refused(frame("ping", {}, id=request_id))
    assert (error.code, error.field) == (ErrorCode.INVALID_FIELD, "id")


@pytest.mark.parametrize("data", [[], "x", 1, True])
def test_data_must_be_an_object(data):
    error = refused(frame("ping", data, id=4))
    assert (error.code, error.field, error.request_id) == (ErrorCode.INVALID_FIELD, "data", 4)
    assert error.event == "ping"


def test_explicit_null_data_is_an_invalid_field():
    error = refused('{"event":"ping","data":null}')
    assert (error.code, error.field) == (ErrorCode.INVALID_FIELD, "data")


@pytest.mark.parametrize(
    ("event", "data", "field"),
    [
        ("auth", {}, "data.meetingAccessToken"),
        ("auth", {"meetingAccessToken": None}, "data.meetingAccessToken"),
        ("auth", {"meetingAccessToken": 5}, "data.meetingAccessToken"),
        ("auth", {"meetingAccessToken": "t" * 8193}, "data.meetingAccessToken"),
        ("signal:offer", {"offer": {}}, "data.targetEmpId"),
        ("signal:offer", {"targetEmpId": "b"}, "data.offer"),
        ("signal:offer", {"targetEmpId": "b", "offer": "sdp"}, "data.offer"),
        ("signal:offer", {"targetEmpId": "b", "offer": None}, "data.offer"),
        ("signal:offer", {"targetEmpId": 7, "offer": {}}, "data.targetEmpId"),
        ("signal:offer", {"targetEmpId": "b" * 129, "offer": {}}, "data.targetEmpId"),
        ("signal:answer", {"targetEmpId": "b", "answer": []}, "data.answer"),
        ("signal:ice", {"targetEmpId": "b"}, "data.candidate"),
        ("signal:ice", {"targetEmpId": "b", "candidate": "c"}, "data.candidate"),
        ("presence:update", {"muted": "yes"}, "data.muted"),
        ("presence:update", {"cameraOff": 1}, "data.cameraOff"),
        ("host:kick", {}, "data.targetEmpId"),
        ("host:ban", {"targetEmpId": "b", "reason": 3}, "data.reason"),
        ("host:ban", {"targetEmpId": "b", "reason": "r" * 501}, "data.reason"),
        ("host:promote", {"targetEmpId": ["b"]}, "data.targetEmpId"),
    ],
)
def test_missing_or_wrong_fields_name_the_field(event, data, field):
    error = refused(frame(event, data, id="q"))
    assert error.code is ErrorCode.INVALID_FIELD
    assert error.field == field
    assert error.request_id == "q"
    assert error.event == event
    assert field.removeprefix("data.") in error.message


@pytest.mark.parametrize(
    ("event", "data"),
    [
        ("presence:update", {"muted": None, "handRaised": True}),
        ("host:ban", {"targetEmpId": "b", "reason": None}),
    ],
)
def test_null_optional_field_counts_as_absent(event, data):
    request = decode_request(frame(event, data))
    assert request.data == {k: v for k, v in data.items() if v is not None}


def test_longest_allowed_values_pass():
    decode_request(frame("signal:offer", {"targetEmpId": "b" * 128, "offer": {}}))
    decode_request(frame("host:ban", {"targetEmpId": "b", "reason": "r" * 500}))


# Encoders


def test_encode_event_without_id_is_compact():
    assert (
        encode_event("peer:joined", {"empId": "a"})
        == b'{"event":"peer:joined","data":{"empId":"a"}}'
    )


def test_encode_event_with_id_and_unicode():
    text = encode_event("room:joined", {"name": "Zoë 🎉"}, "r1")
    assert text == '{"event":"room:joined","id":"r1","data":{"name":"Zoë 🎉"}}'.encode()
    assert json.loads(text) == {"event": "room:joined", "id": "r1", "data": {"name": "Zoë 🎉"}}


def test_encode_event_survives_a_lone_surrogate():
    # Display names come from tokens decoded by the standard json module, which
    # accepts "\ud800"; the frame must still be valid UTF-8 JSON.
    text = encode_event("peer:joined", {"displayName": "bad \ud800 name"})
    assert json.loads(text.decode("utf-8")) == {
        "event": "peer:joined",
        "data": {"displayName": "bad \ud800 name"},
    }


def test_encode_event_with_id_zero_keeps_it():
    assert json.loads(encode_event("ack", {}, 0))["id"] == 0


def test_encode_ack():
    assert json.loads(encode_ack(5)) == {"event": "ack", "id": 5, "data": {}}
    assert json.loads(encode_ack("x", {"a": 1})) == {"event": "ack", "id": "x", "data": {"a": 1}}
    assert json.loads(encode_ack(None)) == {"event": "ack", "data": {}}


def test_encode_error_includes_only_given_details():
    assert json.loads(encode_error(ErrorCode.FORBIDDEN, "no")) == {
        "event": "error",
        "data": {"code": "FORBIDDEN", "message": "no"},
    }
    assert json.loads(
        encode_error(ErrorCode.INVALID_FIELD, "bad", request_id=2, event="ping", field="data.x")
    ) == {
        "event": "error",
        "id": 2,
        "data": {"code": "INVALID_FIELD", "message": "bad", "event": "ping", "field": "data.x"},
    }


def test_encode_protocol_error_round_trip():
    error = refused(frame("signal:offer", {"targetEmpId": "b"}, id=11))
    assert json.loads(encode_protocol_error(error)) == {
        "event": "error",
        "id": 11,
        "data": {
            "code": "INVALID_FIELD",
            "message": error.message,
            "event": "signal:offer",
            "field": "data.offer",
        },
    }


# Properties: whatever arrives, the only exception is ProtocolError


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12), children, max_size=5)
    ),
    max_leaves=30,
)

# Frames shaped like requests, so the property reaches the field checks too.
field_names = st.sampled_from(
    [
        "targetEmpId",
        "offer",
        "answer",
        "candidate",
        "muted",
        "cameraOff",
        "handRaised",
        "reason",
        "meetingAccessToken",
        "fromEmpId",
    ]
)
request_like = st.fixed_dictionaries(
    {"event": st.sampled_from([*CLIENT_EVENTS, "nope"]) | json_values},
    optional={
        "id": json_values,
        "data": st.dictionaries(field_names, json_values, max_size=4) | json_values,
    },
)


KIND_TYPES = {
    "string": lambda v: isinstance(v, str),
    "object": lambda v: isinstance(v, dict),
    "object-or-null": lambda v: v is None or isinstance(v, dict),
    "boolean": lambda v: isinstance(v, bool),
}


def _decode_or_protocol_error(text: str) -> None:
    try:
        request = decode_request(text)
    except ProtocolError as exc:
        assert isinstance(exc.code, ErrorCode)
        encode_protocol_error(exc)  # and the answer can always be encoded
    else:
        assert request.event in CLIENT_EVENTS
        assert isinstance(request.data, dict)
        # What the room reads from a decoded request has the declared type.
        for spec in CLIENT_EVENTS[request.event]:
            if spec.name in request.data:
                value = request.data[spec.name]
                assert KIND_TYPES[spec.kind](value), (spec, value)
            else:
                assert not spec.required


@settings(max_examples=500)
@given(st.text())
def test_arbitrary_text_only_raises_protocol_error(text):
    _decode_or_protocol_error(text)


@settings(max_examples=500)
@given(json_values)
def test_arbitrary_json_only_raises_protocol_error(value):
    _decode_or_protocol_error(json.dumps(value))


@settings(max_examples=400)
@given(request_like)
def test_request_shaped_json_only_raises_protocol_error(value):
    _decode_or_protocol_error(json.dumps(value))


def test_an_encoded_fragment_goes_into_a_frame_as_it_is_on_either_encoder():
    fragment = EncodedJson({"empId": "zoë", "presence": {"muted": True}})
    frame = encode_event("room:joined", {"peers": [fragment, fragment]})
    view = '{"empId":"zoë","presence":{"muted":true}}'
    expected = '{"event":"room:joined","data":{"peers":[' + view + "," + view + "]}}"
    assert frame == expected.encode()
    # A lone surrogate elsewhere in the frame sends it through the standard encoder,
    # which must take the fragment too.
    fallback = encode_event("room:joined", {"title": "\ud800", "peers": [fragment]})
    assert json.loads(fallback) == {
        "event": "room:joined",
        "data": {"title": "\ud800", "peers": [{"empId": "zoë", "presence": {"muted": True}}]},
    }


def test_an_encoded_fragment_keeps_no_more_memory_than_its_text() -> None:
    # orjson's output holds a 4 KiB buffer however short: one per peer in a room of
    # thousands added ~4 KB per idle peer (bench capacity) before the copy.
    import tracemalloc

    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = [EncodedJson({"empId": f"p{i}", "role": "PARTICIPANT"}) for i in range(200)]
        per_item = (tracemalloc.get_traced_memory()[0] - before) / len(kept)
    finally:
        tracemalloc.stop()
    assert per_item < 1024
