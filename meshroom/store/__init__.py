"""Persistence: the :class:`Store` interface and its SQLAlchemy implementation.

``SqlStore`` is loaded on first use: the room core needs only the interface and
its value types (:mod:`.base`), not SQLAlchemy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .base import RECOVERED_LEAVE_REASON as RECOVERED_LEAVE_REASON
from .base import Admission as Admission
from .base import AttendanceRecord as AttendanceRecord
from .base import Ban as Ban
from .base import EmployeeBanned as EmployeeBanned
from .base import InvalidTransition as InvalidTransition
from .base import Leave as Leave
from .base import Meeting as Meeting
from .base import MeetingNotFound as MeetingNotFound
from .base import MeetingNotLive as MeetingNotLive
from .base import MeetingStatus as MeetingStatus
from .base import SchemaError as SchemaError
from .base import SchemaOutOfDate as SchemaOutOfDate
from .base import Store as Store
from .base import StoreError as StoreError
from .base import StoreUnavailable as StoreUnavailable

if TYPE_CHECKING:
    from .sql import SqlStore as SqlStore


def __getattr__(name: str) -> Any:
    if name == "SqlStore":
        from .sql import SqlStore

        return SqlStore
    raise AttributeError(f"module 'meshroom.store' has no attribute {name!r}")
