"""The browser side: the JS client, the demo meeting page, and the demo's join endpoint.

``GET /meshroom.js`` (the dependency-free ES module client) is always served.
With the ``demo`` setting on (the default), also:

* ``GET /`` — the demo meeting page (with ``app.js`` and ``style.css``);
* ``POST /demo/join`` — what the page calls instead of the API, which needs the
  admin API key that must never reach a browser.

``/demo/join`` is deliberately small. It can only (a) create a LIVE meeting whose
host is a fresh ``demo-…`` employee id and hand that creator a HOST token, or
(b) hand a PARTICIPANT token for a LIVE meeting that the demo itself created,
found by room code. It never mints a token for a meeting made through the API
or the CLI, never lets the caller choose an employee id or a role, refuses rooms
at :data:`ROOM_LIMIT` peers (a mesh sends every stream to every peer), and is
rate-limited per client address. Embedders turn it off with ``MESHROOM_DEMO=0``
(or ``app.config["MESHROOM_DEMO"] = False``); the routes are then not registered.
"""

from __future__ import annotations

import datetime as dt
import secrets
import time
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic.alias_generators import to_camel
from quart import Blueprint, Response, current_app, request, send_from_directory
from quart_schema import hide

from ..roles import Role
from ..roomcode import normalize_room_code
from ..store import MeetingNotFound, MeetingStatus, StoreUnavailable

if TYPE_CHECKING:
    from flask.sansio.blueprints import BlueprintSetupState

    from .extension import Meshroom

STATIC_DIR: Final = Path(__file__).resolve().parent.parent / "static"
DEMO_EMP_PREFIX: Final = "demo-"
#: Largest room the demo admits a new participant to.
ROOM_LIMIT: Final = 8
#: Lifetime of the tokens the demo hands out.
TOKEN_TTL: Final = dt.timedelta(hours=4)
_STATE_KEY: Final = "meshroom_demo"

web = Blueprint("meshroom_web", __name__)

_PAGE_HEADERS: Final = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self' data:; media-src 'self' blob: mediastream:; object-src 'none'; "
        "base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
    ),
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Permissions-Policy": "camera=(self), microphone=(self)",
    "Cache-Control": "no-cache",
}


def _enabled(value: object) -> bool:
    """The ``demo`` setting, also when an embedder put a string into app.config."""
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


@web.record
def _register(state: BlueprintSetupState) -> None:
    """Register the demo routes only when the demo is on, so they never shadow an app's own."""
    meshroom: Meshroom = state.app.extensions["meshroom"]
    if not _enabled(meshroom.settings.demo):
        return
    state.app.extensions[_STATE_KEY] = DemoLimits()
    state.add_url_rule("/", "index", index, methods=["GET"])
    state.add_url_rule("/app.js", "app_js", app_js, methods=["GET"])
    state.add_url_rule("/style.css", "style_css", style_css, methods=["GET"])
    state.add_url_rule("/demo/join", "demo_join", demo_join, methods=["POST"])


async def _static(name: str, content_type: str | None = None) -> Response:
    response = await send_from_directory(STATIC_DIR, name)
    if content_type:
        response.content_type = content_type
    response.headers.pop("Expires", None)  # revalidated (ETag) on every load instead
    response.headers.update(_PAGE_HEADERS)
    return response


@web.get("/meshroom.js")
@hide  # files, not API endpoints (the demo's endpoint is documented in docs/)
async def client_js() -> Response:
    """The browser client, an ES module: ``import { MeshroomClient } from "/meshroom.js"``."""
    response = await _static("meshroom.js", "text/javascript; charset=utf-8")
    response.headers["Access-Control-Allow-Origin"] = "*"  # importable from other origins
    return response


@web.get("/meshroom.d.ts")
@hide
async def client_types() -> Response:
    """meshroom.js's TypeScript declarations, to copy next to the module in an app."""
    response = await _static("meshroom.d.ts", "application/typescript; charset=utf-8")
    response.headers["Access-Control-Allow-Origin"] = "*"
    return response


@hide
async def index() -> Response:
    return await _static("index.html", "text/html; charset=utf-8")


@hide
async def app_js() -> Response:
    return await _static("app.js", "text/javascript; charset=utf-8")


@hide
async def style_css() -> Response:
    return await _static("style.css", "text/css; charset=utf-8")


# The demo's join endpoint


class DemoJoin(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")

    display_name: str = Field(min_length=1, max_length=60)
    create: bool = False
    room_code: str | None = Field(default=None, max_length=40)
    title: str | None = Field(default=None, max_length=100)

    @field_validator("display_name", "title")
    @classmethod
    def _printable(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = " ".join(value.split())
        if any(unicodedata.category(c).startswith("C") for c in value):
            raise ValueError("must not contain control characters")
        return value


@dataclass
class _Bucket:
    tokens: float
    at: float


@dataclass
class DemoLimits:
    """Token buckets per client address: a few meetings a minute, more joins."""

    create_burst: int = 5
    create_per_second: float = 1 / 20
    join_burst: int = 30
    join_per_second: float = 1.0
    max_addresses: int = 10_000
    _buckets: dict[tuple[str, str], _Bucket] = field(default_factory=dict)

    def allow(self, kind: str, address: str, now: float | None = None) -> float:
        """0 if allowed (and counted), else the seconds until it would be."""
        now = time.monotonic() if now is None else now
        burst, rate = (
            (self.create_burst, self.create_per_second)
            if kind == "create"
            else (self.join_burst, self.join_per_second)
        )
        if len(self._buckets) >= self.max_addresses:
            self._buckets = {
                k: b for k, b in self._buckets.items() if b.tokens + (now - b.at) * rate < burst
            }
        bucket = self._buckets.setdefault((kind, address), _Bucket(float(burst), now))
        bucket.tokens = min(float(burst), bucket.tokens + (now - bucket.at) * rate)
        bucket.at = now
        if bucket.tokens >= 1:
            bucket.tokens -= 1
            return 0.0
        return (1 - bucket.tokens) / rate


def _error(status: int, code: str, message: str, **extra: Any) -> Response:
    body: dict[str, Any] = {"code": code, "message": message, **extra}
    return Response(
        current_app.json.dumps({"error": body}), status=status, content_type="application/json"
    )


@hide
async def demo_join() -> Response | tuple[dict[str, Any], int]:
    """Create a LIVE meeting (the caller becomes its HOST), or join a demo meeting by code."""
    meshroom: Meshroom = current_app.extensions["meshroom"]
    payload = await request.get_json(force=True, silent=True)
    if not isinstance(payload, dict):
        return _error(400, "INVALID_INPUT", "send a JSON object")
    try:
        data = DemoJoin.model_validate(payload)
    except ValidationError as exc:
        problems = [
            {"field": ".".join(str(p) for p in e["loc"]) or "body", "problem": e["msg"]}
            for e in exc.errors()
        ]
        return _error(
            400, "INVALID_INPUT", "the request does not match the schema", fields=problems
        )
    if not data.create and not data.room_code:
        return _error(400, "INVALID_INPUT", "give a roomCode to join, or create: true")

    limits: DemoLimits = current_app.extensions[_STATE_KEY]
    wait = limits.allow("create" if data.create else "join", str(request.remote_addr or "?"))
    if wait:
        response = _error(429, "RATE_LIMITED", "too many requests; try again shortly")
        response.headers["Retry-After"] = str(max(1, round(wait)))
        return response

    service = meshroom.service
    emp_id = DEMO_EMP_PREFIX + secrets.token_hex(6)
    try:
        if data.create:
            title = data.title or f"{data.display_name}'s meeting"
            meeting = await service.create(title=title, host_emp_id=emp_id, start=True)
            role = Role.HOST
            status = 201
        else:
            code = normalize_room_code(data.room_code or "")
            if code is None:
                return _error(404, "MEETING_NOT_FOUND", "no meeting has that room code")
            meeting = await service.find(code)
            # Only meetings the demo created: never a token for one made through the API.
            if not meeting.host_emp_id.startswith(DEMO_EMP_PREFIX):
                return _error(404, "MEETING_NOT_FOUND", "no meeting has that room code")
            if meeting.status is MeetingStatus.ENDED:
                return _error(410, "MEETING_ENDED", "that meeting has ended")
            if meeting.status is not MeetingStatus.LIVE:
                return _error(409, "MEETING_NOT_LIVE", "that meeting has not started")
            room = meshroom.hub.rooms.get(meeting.id)
            if room is not None and len(room.peers) >= ROOM_LIMIT:
                return _error(
                    409, "ROOM_FULL", f"the meeting is full ({ROOM_LIMIT} people)", limit=ROOM_LIMIT
                )
            role = Role.PARTICIPANT
            status = 200
        issued = await service.issue_token(
            meeting.id, emp_id=emp_id, display_name=data.display_name, role=role, ttl=TOKEN_TTL
        )
    except MeetingNotFound:
        return _error(404, "MEETING_NOT_FOUND", "no meeting has that room code")
    except StoreUnavailable:
        response = _error(503, "STORE_UNAVAILABLE", "the database is unavailable; try again")
        response.headers["Retry-After"] = "5"
        return response
    return {
        "token": issued.token,
        "empId": emp_id,
        "role": role.value,
        "expiresAt": issued.expires_at.isoformat(),
        "signalingPath": f"{meshroom.url_prefix}/meetings",
        "meeting": {"id": meeting.id, "title": meeting.title, "roomCode": meeting.room_code},
    }, status
