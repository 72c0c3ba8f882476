"""The wire protocol: frames, validation, error and close codes. No I/O, no trio."""

from .codes import CloseCode as CloseCode
from .codes import ErrorCode as ErrorCode
from .codes import LeaveReason as LeaveReason
from .messages import CLIENT_EVENTS as CLIENT_EVENTS
from .messages import EncodedJson as EncodedJson
from .messages import ProtocolError as ProtocolError
from .messages import Request as Request
from .messages import RequestId as RequestId
from .messages import decode_request as decode_request
from .messages import encode_ack as encode_ack
from .messages import encode_error as encode_error
from .messages import encode_event as encode_event
from .messages import encode_protocol_error as encode_protocol_error
