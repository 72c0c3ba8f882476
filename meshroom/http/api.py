"""The REST API under ``/api``: meetings, tokens, live participants, moderation, attendance.

Every handler is a few lines over :class:`meshroom.service.MeetingService`.
"""

from __future__ import annotations

import datetime as dt
import hmac
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError
from quart import Blueprint, Response, current_app, request
from quart_schema import (
    RequestSchemaValidationError,
    document_response,
    hide,
    security_scheme_blueprint,
    tag_blueprint,
    validate_querystring,
    validate_request,
    validate_response,
)
from werkzeug.exceptions import HTTPException

from ..service import attendance_totals, records_csv, totals_csv
from ..store import InvalidTransition, Meeting, MeetingNotFound, StoreUnavailable
from .schemas import (
    AttendanceOut,
    AttendanceQuery,
    AttendanceRecordOut,
    AttendanceTotalOut,
    BanList,
    BanOut,
    CreateBan,
    CreateMeeting,
    EmployeeAttendanceQuery,
    ErrorOut,
    IssueToken,
    KickOut,
    ListMeetingsQuery,
    MeetingOut,
    MeetingPage,
    ParticipantList,
    ParticipantOut,
    TokenOut,
)

if TYPE_CHECKING:
    from .extension import Meshroom

api = Blueprint("meshroom_api", __name__)
tag_blueprint(api, ["meetings"])
security_scheme_blueprint(api, [{"bearer": []}])

BY_API = "api"


def _meshroom() -> Meshroom:
    return current_app.extensions["meshroom"]  # type: ignore[no-any-return]


def error(
    status: int, code: str, message: str, fields: list[dict[str, str]] | None = None
) -> Response:
    body: dict[str, Any] = {"code": code, "message": message}
    if fields:
        body["fields"] = fields
    response = Response(
        current_app.json.dumps({"error": body}), status=status, content_type="application/json"
    )
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="meshroom"'
    return response


@api.before_request
async def require_api_key() -> Response | None:
    header = request.headers.get("Authorization", "")
    scheme, _, presented = header.partition(" ")
    if scheme.lower() != "bearer" or not presented:
        return error(401, "UNAUTHORIZED", "send an API key as 'Authorization: Bearer KEY'")
    # Compare against every key, always, so timing says nothing about which matched.
    matched = False
    for key in _meshroom().api_keys:
        matched |= hmac.compare_digest(presented.strip().encode(), key.encode())
    if not matched:
        return error(401, "UNAUTHORIZED", "the API key is not valid")
    return None


@api.errorhandler(RequestSchemaValidationError)
async def invalid_input(exc: RequestSchemaValidationError) -> Response:
    cause = exc.validation_error
    fields = []
    if isinstance(cause, ValidationError):
        for problem in cause.errors():
            location = ".".join(str(part) for part in problem["loc"]) or "body"
            fields.append({"field": location, "problem": problem["msg"]})
    return error(400, "INVALID_INPUT", "the request does not match the schema", fields or None)


@api.errorhandler(MeetingNotFound)
async def meeting_not_found(exc: MeetingNotFound) -> Response:
    return error(404, "MEETING_NOT_FOUND", f"no meeting with id or room code {exc}")


@api.errorhandler(InvalidTransition)
async def invalid_transition(exc: InvalidTransition) -> Response:
    return error(409, "INVALID_TRANSITION", str(exc))


@api.errorhandler(StoreUnavailable)
async def store_unavailable(exc: StoreUnavailable) -> Response:
    response = error(503, "STORE_UNAVAILABLE", "the database is unavailable; try again shortly")
    response.headers["Retry-After"] = "5"
    return response


@api.errorhandler(HTTPException)
async def http_error(exc: HTTPException) -> Response:
    status = exc.code or 500
    code = {
        400: "BAD_REQUEST",
        404: "NOT_FOUND",
        405: "METHOD_NOT_ALLOWED",
        413: "TOO_LARGE",
        415: "UNSUPPORTED_MEDIA_TYPE",
    }.get(status, "HTTP_ERROR")
    if status == 400 and request.is_json:
        # Quart's answer to a body it cannot parse as JSON: say so, and name the body.
        problem = [{"field": "body", "problem": "not valid JSON"}]
        return error(status, code, "the request body is not valid JSON", problem)
    return error(status, code, exc.description or exc.name)


def meeting_out(meeting: Meeting, *, live: int | None = None) -> MeetingOut:
    """``live``: how many are connected, when the caller asked the room's node (a cluster's
    may be another); otherwise this process's own room is counted."""
    hub = _meshroom().hub
    room = hub.rooms.get(meeting.id) if hub else None
    return MeetingOut(
        id=meeting.id,
        title=meeting.title,
        room_code=meeting.room_code,
        host_emp_id=meeting.host_emp_id,
        status=meeting.status,
        scheduled_at=meeting.scheduled_at,
        created_at=meeting.created_at,
        started_at=meeting.started_at,
        ended_at=meeting.ended_at,
        live_participants=live if live is not None else len(room.peers) if room else 0,
    )


# Meetings


@api.post("/meetings")
@validate_request(CreateMeeting)
@validate_response(MeetingOut, 201)
@document_response(ErrorOut, 400)
async def create_meeting(data: CreateMeeting) -> tuple[MeetingOut, int]:
    """Create a meeting (SCHEDULED, or LIVE with ``start``)."""
    meeting = await _meshroom().service.create(
        title=data.title,
        host_emp_id=data.host_emp_id,
        scheduled_at=data.scheduled_at,
        start=data.start,
    )
    return meeting_out(meeting), 201


@api.get("/meetings")
@validate_querystring(ListMeetingsQuery)
@validate_response(MeetingPage)
async def list_meetings(query_args: ListMeetingsQuery) -> MeetingPage:
    """List meetings, newest first, optionally by status."""
    meetings, total = await _meshroom().service.list_meetings(
        status=query_args.status, limit=query_args.limit, offset=query_args.offset
    )
    return MeetingPage(
        items=[meeting_out(m) for m in meetings],
        total=total,
        limit=query_args.limit,
        offset=query_args.offset,
    )


@api.get("/meetings/<ref>")
@validate_response(MeetingOut)
@document_response(ErrorOut, 404)
async def get_meeting(ref: str) -> MeetingOut:
    """A meeting by id or room code."""
    service = _meshroom().service
    meeting = await service.find(ref)
    return meeting_out(meeting, live=len(await service.live_participants(meeting)))


@api.post("/meetings/<ref>/start")
@validate_response(MeetingOut)
@document_response(ErrorOut, 409)
async def start_meeting(ref: str) -> MeetingOut:
    """SCHEDULED → LIVE."""
    return meeting_out(await _meshroom().service.start(ref))


@api.post("/meetings/<ref>/end")
@validate_response(MeetingOut)
@document_response(ErrorOut, 409)
async def end_meeting(ref: str) -> MeetingOut:
    """→ ENDED. Live peers are told, closed (4006) and their rows written before this returns."""
    return meeting_out(await _meshroom().service.end(ref, by=BY_API))


@api.post("/meetings/<ref>/tokens")
@validate_request(IssueToken)
@validate_response(TokenOut, 201)
async def issue_token(ref: str, data: IssueToken) -> tuple[TokenOut, int]:
    """Mint a meeting access token for one employee."""
    issued = await _meshroom().service.issue_token(
        ref,
        emp_id=data.emp_id,
        display_name=data.display_name,
        role=data.role,
        ttl=dt.timedelta(seconds=data.ttl_seconds),
    )
    return TokenOut(
        token=issued.token,
        meeting_id=issued.meeting_id,
        emp_id=issued.emp_id,
        role=issued.role,
        expires_at=issued.expires_at,
    ), 201


# Live participants and moderation


@api.get("/meetings/<ref>/participants")
@validate_response(ParticipantList)
async def live_participants(ref: str) -> ParticipantList:
    """Peers connected right now, with roles and presence."""
    service = _meshroom().service
    meeting = await service.find(ref)
    live = await service.live_participants(meeting)
    return ParticipantList(
        meeting_id=meeting.id,
        participants=[ParticipantOut.model_validate(p) for p in live],
    )


@api.post("/meetings/<ref>/participants/<emp_id>/kick")
@validate_response(KickOut)
@document_response(ErrorOut, 404)
async def kick(ref: str, emp_id: str) -> KickOut | Response:
    """Remove a live participant now (close 4005). They may rejoin."""
    service = _meshroom().service
    meeting = await service.find(ref)
    if not await service.kick(meeting.id, emp_id, by=BY_API):
        return error(404, "NOT_PRESENT", f"{emp_id!r} is not in the meeting")
    return KickOut(meeting_id=meeting.id, emp_id=emp_id, kicked=True)


@api.post("/meetings/<ref>/bans")
@validate_request(CreateBan)
@validate_response(BanOut, 201)
async def ban(ref: str, data: CreateBan) -> tuple[BanOut, int]:
    """Ban an employee from the meeting; if connected, they are removed now (close 4004)."""
    service = _meshroom().service
    meeting = await service.ban(ref, data.emp_id, by=BY_API, reason=data.reason)
    bans = {b.emp_id: b for b in await service.bans(meeting.id)}
    return BanOut.model_validate(bans[data.emp_id], from_attributes=True), 201


@api.get("/meetings/<ref>/bans")
@validate_response(BanList)
async def list_bans(ref: str) -> BanList:
    """Employees banned from the meeting."""
    service = _meshroom().service
    meeting = await service.find(ref)
    return BanList(
        meeting_id=meeting.id,
        bans=[
            BanOut.model_validate(b, from_attributes=True) for b in await service.bans(meeting.id)
        ],
    )


@api.delete("/meetings/<ref>/bans/<emp_id>")
@document_response(ErrorOut, 404)
async def unban(ref: str, emp_id: str) -> Response:
    """Lift a ban."""
    if not await _meshroom().service.unban(ref, emp_id, by=BY_API):
        return error(404, "NOT_BANNED", f"{emp_id!r} is not banned from this meeting")
    return Response(b"", status=204)  # no body: Response(None) would iterate via asyncio


# Attendance


@api.get("/meetings/<ref>/attendance")
@validate_querystring(AttendanceQuery)
@document_response(AttendanceOut)  # not validate_response: it refuses the CSV Response
async def meeting_attendance(ref: str, query_args: AttendanceQuery) -> AttendanceOut | Response:
    """Per-join rows and per-employee totals; ``format=csv`` for a timesheet export."""
    meeting, records = await _meshroom().service.meeting_attendance(ref)
    return _attendance(records, query_args, f"attendance-{meeting.room_code}")


@api.get("/employees/<emp_id>/attendance")
@validate_querystring(EmployeeAttendanceQuery)
@document_response(AttendanceOut)
async def employee_attendance(
    emp_id: str, query_args: EmployeeAttendanceQuery
) -> AttendanceOut | Response:
    """One employee's attendance across meetings, joins in [from, to)."""
    records = await _meshroom().service.employee_attendance(
        emp_id, since=query_args.since, until=query_args.until
    )
    return _attendance(records, query_args, f"attendance-{emp_id}")


def _attendance(
    records: list[Any], query: AttendanceQuery, filename: str
) -> AttendanceOut | Response:
    totals = attendance_totals(records)
    if query.format == "csv":
        body = records_csv(records) if query.view == "records" else totals_csv(totals)
        safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in filename)
        return Response(
            body,
            content_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="{safe}-{query.view}.csv"'},
        )
    return AttendanceOut(
        records=[AttendanceRecordOut.model_validate(r, from_attributes=True) for r in records],
        totals=[AttendanceTotalOut.model_validate(t, from_attributes=True) for t in totals],
    )


@api.route("/", defaults={"rest": ""}, methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
@api.route("/<path:rest>", methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
@hide  # a catch-all, not an endpoint to document
async def unknown(rest: str) -> Response:
    return error(404, "NOT_FOUND", f"no API endpoint {request.method} /api/{rest}")
