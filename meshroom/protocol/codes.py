"""Error codes carried in ``error`` frames and WebSocket close codes.

Both are part of the wire contract documented in docs/protocol.md: clients
branch on them, so values never change once released.
"""

from __future__ import annotations

import enum


class ErrorCode(enum.StrEnum):
    """The ``data.code`` of an ``error`` frame."""

    # Frame-level problems: the frame is dropped, the connection stays open.
    BAD_JSON = "BAD_JSON"
    BAD_FRAME = "BAD_FRAME"
    UNKNOWN_EVENT = "UNKNOWN_EVENT"
    INVALID_FIELD = "INVALID_FIELD"
    FRAME_TOO_LARGE = "FRAME_TOO_LARGE"
    BINARY_NOT_SUPPORTED = "BINARY_NOT_SUPPORTED"
    RATE_LIMITED = "RATE_LIMITED"  # over the rate limit (kept up, it closes with 4012)
    # Request-level problems: the request is refused, the connection stays open.
    TARGET_NOT_FOUND = "TARGET_NOT_FOUND"
    FORBIDDEN = "FORBIDDEN"
    CANNOT_TARGET_SELF = "CANNOT_TARGET_SELF"
    INVALID_TRANSITION = "INVALID_TRANSITION"
    ALREADY_AUTHENTICATED = "ALREADY_AUTHENTICATED"
    STORE_UNAVAILABLE = "STORE_UNAVAILABLE"
    # Join refusals: sent just before the connection is closed.
    AUTH_REQUIRED = "AUTH_REQUIRED"
    AUTH_FAILED = "AUTH_FAILED"
    AUTH_TIMEOUT = "AUTH_TIMEOUT"
    MEETING_NOT_FOUND = "MEETING_NOT_FOUND"
    MEETING_NOT_LIVE = "MEETING_NOT_LIVE"
    MEETING_ENDED = "MEETING_ENDED"
    BANNED = "BANNED"
    KICKED = "KICKED"  # removed by a host moments ago: refused until kick_rejoin_block passes
    DUPLICATE_SESSION = "DUPLICATE_SESSION"
    ROOM_FULL = "ROOM_FULL"
    SHUTTING_DOWN = "SHUTTING_DOWN"
    # A cluster node cannot tell now which node runs the meeting (Redis unreachable,
    # the meeting moving between nodes): reconnect shortly.
    CLUSTER_UNAVAILABLE = "CLUSTER_UNAVAILABLE"
    INTERNAL_ERROR = "INTERNAL_ERROR"


class CloseCode(enum.IntEnum):
    """WebSocket close codes meshroom sends (RFC 6455 §7.4; 4000-4999 are ours)."""

    NORMAL = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    INTERNAL_ERROR = 1011
    TRY_AGAIN_LATER = 1013
    AUTH_REQUIRED = 4000
    AUTH_FAILED = 4001
    AUTH_TIMEOUT = 4002
    MEETING_UNAVAILABLE = 4003
    BANNED = 4004
    KICKED = 4005
    MEETING_ENDED = 4006
    REPLACED = 4007
    DUPLICATE_SESSION = 4008
    SLOW_CONSUMER = 4009
    HEARTBEAT_TIMEOUT = 4010
    ROOM_FULL = 4011
    RATE_LIMITED = 4012
    RESUMED_ELSEWHERE = 4013


class LeaveReason(enum.StrEnum):
    """Why a peer left a room: ``peer:left.data.reason`` and the attendance record."""

    LEFT = "left"
    DISCONNECTED = "disconnected"
    KICKED = "kicked"
    BANNED = "banned"
    MEETING_ENDED = "meeting-ended"
    REPLACED = "replaced"
    SLOW_CONSUMER = "slow-consumer"
    TIMEOUT = "timeout"
    RATE_LIMITED = "rate-limited"
    SERVER_SHUTDOWN = "server-shutdown"
    ERROR = "error"
