"""Decoding client frames and encoding server frames. Pure functions, no I/O.

Every frame is a JSON object ``{"event": str, "id"?: int | str, "data"?: object}``.
``decode_request`` turns text into a validated :class:`Request` or raises
:class:`ProtocolError` carrying the error code to answer with; it never raises
anything else, whatever the input.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import orjson

from .codes import ErrorCode

RequestId = int | str

MAX_ID_LENGTH: Final = 64
MAX_EMP_ID_LENGTH: Final = 128
MAX_REASON_LENGTH: Final = 500
MAX_RESUME_TOKEN_LENGTH: Final = 128
#: Arrays and objects nested in one frame, its own object included. orjson parses up to
#: 1024, but a relayed value is encoded again, and past 255 levels orjson's encoder gives
#: up (and the fallback one recurses in Python): so the limit is enforced at parse time.
MAX_NESTING_DEPTH: Final = 128


@dataclass(frozen=True, slots=True)
class Field:
    name: str
    kind: str  # "string", "object", "object-or-null", "boolean", "count"
    required: bool = True
    max_length: int = 0


def _target() -> Field:
    return Field("targetEmpId", "string", max_length=MAX_EMP_ID_LENGTH)


#: Every event a client may send, with the fields its ``data`` object must carry.
CLIENT_EVENTS: Final[Mapping[str, tuple[Field, ...]]] = {
    "auth": (
        Field("meetingAccessToken", "string", max_length=8192),
        Field("resumeToken", "string", required=False, max_length=MAX_RESUME_TOKEN_LENGTH),
        # The seq of the last frame the client has (resume: what follows is replayed).
        Field("lastSeq", "count", required=False),
    ),
    "signal:offer": (_target(), Field("offer", "object")),
    "signal:answer": (_target(), Field("answer", "object")),
    "signal:ice": (_target(), Field("candidate", "object-or-null")),
    "presence:update": (
        Field("muted", "boolean", required=False),
        Field("cameraOff", "boolean", required=False),
        Field("handRaised", "boolean", required=False),
    ),
    "peer:leave": (),
    "ping": (Field("lastSeq", "count", required=False),),
    "host:kick": (_target(),),
    "host:ban": (
        _target(),
        Field("reason", "string", required=False, max_length=MAX_REASON_LENGTH),
    ),
    "host:unban": (_target(),),
    "host:end": (),
    "host:promote": (_target(),),
    "host:demote": (_target(),),
}

_KIND_CHECKS: Final = {
    "string": lambda v: isinstance(v, str),
    "object": lambda v: isinstance(v, dict),
    "object-or-null": lambda v: v is None or isinstance(v, dict),
    "boolean": lambda v: isinstance(v, bool),
    # A frame count: a non-negative integer (JSON true is not one) that fits 64 bits.
    "count": lambda v: type(v) is int and 0 <= v < 2**63,
}


class ProtocolError(Exception):
    """A client frame that cannot be acted on. The connection survives it."""

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        *,
        request_id: RequestId | None = None,
        event: str | None = None,
        field: str | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id
        self.event = event
        self.field = field


@dataclass(frozen=True, slots=True)
class Request:
    event: str
    data: dict[str, Any]
    id: RequestId | None = None


class ParsedFrame(str):
    """A client frame's text that comes with its JSON value, parsed already.

    A transport that had to parse what the client sent anyway (the Socket.IO
    endpoint parses each packet's payload to refuse what socket.io-parser refuses)
    hands the core this instead of a plain ``str``, so :func:`decode_request` does not
    parse the same JSON a second time. ``value`` must be exactly what
    ``orjson.loads(text)`` gives, and nobody else's: decode_request may change it.
    """

    value: Any  # set right after construction: frame = ParsedFrame(text); frame.value = …


def decode_request(text: str | bytes) -> Request:
    """Parse and validate one client text frame.

    Raises:
        ProtocolError: for anything but a well-formed request of a known event.
    """
    if type(text) is ParsedFrame:
        obj = text.value
    else:
        try:
            # orjson refuses nesting deeper than 1024 levels, lone surrogates and NaN,
            # all of which are bad input here anyway.
            obj = orjson.loads(text)
        except (ValueError, RecursionError) as exc:
            raise ProtocolError(
                ErrorCode.BAD_JSON, f"frame is not valid JSON: {_brief(exc)}"
            ) from None
    if _too_deep(text, obj):
        raise ProtocolError(
            ErrorCode.BAD_JSON, f"frame nests arrays and objects deeper than {MAX_NESTING_DEPTH}"
        )
    if not isinstance(obj, dict):
        raise ProtocolError(ErrorCode.BAD_FRAME, "frame must be a JSON object")

    request_id = obj.get("id")
    if request_id is not None and not _valid_id(request_id):
        raise ProtocolError(
            ErrorCode.INVALID_FIELD,
            f"id must be an integer or a string of at most {MAX_ID_LENGTH} characters",
            field="id",
        )
    event = obj.get("event")
    if not isinstance(event, str):
        raise ProtocolError(
            ErrorCode.BAD_FRAME, "frame must carry an 'event' string", request_id=request_id
        )
    fields = CLIENT_EVENTS.get(event)
    if fields is None:
        raise ProtocolError(
            ErrorCode.UNKNOWN_EVENT,
            f"unknown event {event[:64]!r}",
            request_id=request_id,
            event=event[:64],
        )
    data = obj.get("data", {})
    if not isinstance(data, dict):
        raise ProtocolError(
            ErrorCode.INVALID_FIELD,
            "data must be a JSON object",
            request_id=request_id,
            event=event,
            field="data",
        )
    for spec in fields:
        value = data.get(spec.name)
        if value is None and spec.kind != "object-or-null":
            if spec.required:
                raise _field_error(spec, "is required", request_id, event)
            data.pop(spec.name, None)  # an optional field sent as null counts as absent
            continue
        if spec.name not in data and spec.required:
            raise _field_error(spec, "is required", request_id, event)
        if not _KIND_CHECKS[spec.kind](value):
            what = "a non-negative integer" if spec.kind == "count" else f"of type {spec.kind}"
            raise _field_error(spec, f"must be {what}", request_id, event)
        if spec.max_length and isinstance(value, str) and len(value) > spec.max_length:
            raise _field_error(spec, f"is longer than {spec.max_length}", request_id, event)
        if isinstance(value, str) and "\x00" in value:
            # These strings reach the database (an employee id, a ban reason), and
            # PostgreSQL text cannot hold NUL: it would fail the request there (1011).
            raise _field_error(spec, "must not contain NUL characters", request_id, event)
    return Request(event=event, data=data, id=request_id)


def _too_deep(text: str | bytes, obj: object) -> bool:
    """Whether ``obj`` (parsed from ``text``) nests deeper than MAX_NESTING_DEPTH."""
    # Nesting needs an opening bracket per level: counting them (at C speed) clears
    # nearly every frame without walking the parsed value.
    if isinstance(text, str):
        brackets = text.count("[") + text.count("{")
    else:
        brackets = text.count(b"[") + text.count(b"{")
    if brackets <= MAX_NESTING_DEPTH:
        return False
    stack: list[tuple[dict[str, object] | list[object], int]] = []
    if isinstance(obj, dict | list):
        stack.append((obj, 1))
    while stack:  # iterative: a recursive walk would hit Python's own recursion limit
        value, depth = stack.pop()
        children: Iterable[object] = value.values() if isinstance(value, dict) else value
        for child in children:
            if isinstance(child, dict | list):
                if depth == MAX_NESTING_DEPTH:
                    return True
                stack.append((child, depth + 1))
    return False


def _valid_id(value: object) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return -(2**53) < value < 2**53
    return isinstance(value, str) and len(value) <= MAX_ID_LENGTH


def _field_error(
    spec: Field, problem: str, request_id: RequestId | None, event: str
) -> ProtocolError:
    return ProtocolError(
        ErrorCode.INVALID_FIELD,
        f"data.{spec.name} {problem}",
        request_id=request_id,
        event=event,
        field=f"data.{spec.name}",
    )


def _brief(exc: BaseException) -> str:
    return str(exc).split("\n", 1)[0][:120] or type(exc).__name__


class EncodedJson:
    """JSON serialised once, to be embedded as it is in frames encoded later.

    For what goes into many frames unchanged: a peer's public view is in the snapshot
    of every peer that joins after it.
    """

    __slots__ = ("fragment", "raw")

    def __init__(self, data: Mapping[str, Any]) -> None:
        # Copied: orjson's output keeps a 4 KiB buffer however short the text, and this
        # one is kept (a peer's, for as long as it is in the room).
        self.raw = bytes(memoryview(_dumps(data)))
        self.fragment = orjson.Fragment(self.raw)


def _embedded(obj: object) -> Any:
    if type(obj) is EncodedJson:
        return obj.fragment
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


def _expanded(obj: object) -> Any:
    if type(obj) is EncodedJson:
        return json.loads(obj.raw)
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


_fallback_dumps = json.JSONEncoder(
    separators=(",", ":"), ensure_ascii=True, default=_expanded
).encode


def _dumps(obj: Any) -> bytes:
    try:
        return orjson.dumps(obj, default=_embedded)
    except orjson.JSONEncodeError:
        # A lone surrogate (say, in a display name decoded from a token) is not valid
        # UTF-8; the standard encoder can still write it as a \u escape.
        return _fallback_dumps(obj).encode()


def encode_event(event: str, data: Mapping[str, Any], request_id: RequestId | None = None) -> bytes:
    """Serialise one server frame as UTF-8 JSON text."""
    if request_id is None:
        return _dumps({"event": event, "data": data})
    return _dumps({"event": event, "id": request_id, "data": data})


def encode_ack(request_id: RequestId | None, data: Mapping[str, Any] | None = None) -> bytes:
    return encode_event("ack", data or {}, request_id)


def encode_error(
    code: ErrorCode,
    message: str,
    *,
    request_id: RequestId | None = None,
    event: str | None = None,
    field: str | None = None,
) -> bytes:
    data: dict[str, Any] = {"code": code.value, "message": message}
    if event is not None:
        data["event"] = event
    if field is not None:
        data["field"] = field
    return encode_event("error", data, request_id)


def encode_protocol_error(exc: ProtocolError) -> bytes:
    return encode_error(
        exc.code, exc.message, request_id=exc.request_id, event=exc.event, field=exc.field
    )
