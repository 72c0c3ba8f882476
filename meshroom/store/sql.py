"""The SQLAlchemy implementation of :class:`~meshroom.store.base.Store`.

SQLAlchemy's engines are synchronous; every call runs in a Trio worker thread
(``trio.to_thread.run_sync``) gated by a capacity limiter the size of the
connection pool, so the Trio thread never blocks on the database and no more
threads wait than there are connections. SQLite allows one writer at a time,
so it gets a single worker.

The schema is Alembic's (see :mod:`meshroom.store.migrate`): :meth:`SqlStore.open`
creates it in an empty database, and refuses an out-of-date one unless the
store was made with ``auto_migrate=True``.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import math
import secrets
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ParamSpec, TypeVar

import orjson
import sqlalchemy as sa
import trio
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.pool import StaticPool

from ..roles import Role
from ..roomcode import new_room_code
from . import migrate, outbox
from .base import (
    RECOVERED_LEAVE_REASON,
    Admission,
    AttemptOutcome,
    AttemptResult,
    AttendanceRecord,
    Ban,
    Claim,
    ClaimedDelivery,
    DeliveryStatus,
    EmployeeBanned,
    EndpointSource,
    InvalidTransition,
    Leave,
    Meeting,
    MeetingNotFound,
    MeetingNotLive,
    MeetingStatus,
    SchemaError,
    SchemaOutOfDate,
    StoreUnavailable,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookEventType,
)
from .migrate import SchemaState, SchemaStatus
from .outbox import ClosedRow, OutboxEvent
from .schema import (
    attendance,
    meetings,
    participants,
    webhook_deliveries,
    webhook_endpoints,
    webhook_events,
)

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

# Rows per statement when a call names many attendance rows (SQLite caps bound parameters).
_CHUNK = 1000
# Seconds a new PostgreSQL connection may take; past it the store is unavailable.
PG_CONNECT_TIMEOUT = 5

# Seconds "no webhook endpoint is enabled" is believed without asking the database again:
# writing transactions then skip the endpoints query (a round trip on PostgreSQL). This
# process's own endpoint changes end it at once; another process's show within this.
NO_ENDPOINTS_TTL = 2.0
# Set in a connection's info by a transaction that wrote webhook events.
_OUTBOX_WRITTEN = "meshroom_outbox_written"
# The enabled webhook endpoints as a writing transaction sees them: (id, wanted types or None).
_Targets = list[tuple[str, frozenset[str] | None]]

# Joins written in one transaction at most: a batch holds its meetings' row locks, and
# keeps all its joiners waiting, until it commits.
ADMIT_BATCH_MAX = 256


@dataclass(eq=False, slots=True)
class _AdmitRequest:
    """One admit call waiting for its batch (see SqlStore.admit)."""

    meeting_id: str
    emp_id: str
    display_name: str
    role: Role
    at: dt.datetime
    taken: bool = False  # in a batch being written: its outcome will come
    outcome: Admission | BaseException | None = None
    settled: trio.Event = field(default_factory=trio.Event)  # outcome is set
    # Set when settled, or when this call should take the slot and write a batch.
    wake: trio.Event = field(default_factory=trio.Event)


@dataclass(frozen=True, slots=True)
class _Person:
    """What admission reads of a participants row."""

    banned: bool
    role_override: str | None


_TRANSITIONS = {
    MeetingStatus.SCHEDULED: {MeetingStatus.LIVE, MeetingStatus.ENDED},
    MeetingStatus.LIVE: {MeetingStatus.ENDED},
    MeetingStatus.ENDED: set(),
}


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _utc(value: dt.datetime | None) -> dt.datetime | None:
    # SQLite hands back naive datetimes; everything meshroom writes is UTC.
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=dt.UTC)


def create_engine(url: str, *, pool_size: int = 10) -> Engine:
    sa_url = sa.make_url(url)
    if sa_url.get_backend_name() == "sqlite":
        in_memory = sa_url.database in (None, "", ":memory:")
        engine = sa.create_engine(
            sa_url,
            connect_args={"check_same_thread": False, "timeout": 30},
            poolclass=StaticPool if in_memory else None,
        )

        @sa.event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            if not in_memory:
                cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        return engine
    connect_args: dict[str, Any] = {}
    if sa_url.get_backend_name() == "postgresql":
        connect_args["connect_timeout"] = PG_CONNECT_TIMEOUT
        # A database host that vanishes (no RST) is noticed in about 30 s, not the
        # kernel's default of hours: a call in flight then fails as StoreUnavailable.
        connect_args.update(keepalives=1, keepalives_idle=15, keepalives_interval=5)
        connect_args.update(keepalives_count=3)
    return sa.create_engine(
        sa_url,
        pool_size=pool_size,
        max_overflow=0,
        pool_pre_ping=True,
        pool_timeout=10,
        connect_args=connect_args,
    )


class SqlStore:
    """Store on any SQLAlchemy URL: ``sqlite:///meshroom.db``, ``postgresql+psycopg://…``."""

    def __init__(self, url: str, *, pool_size: int = 10, auto_migrate: bool = False) -> None:
        self.url = url
        self.auto_migrate = auto_migrate
        self.engine = create_engine(url, pool_size=pool_size)
        self.is_sqlite = self.engine.dialect.name == "sqlite"
        self._limiter = trio.CapacityLimiter(1 if self.is_sqlite else pool_size)
        # For a thread started by a task that already holds a _limiter worker.
        self._worker_held = trio.CapacityLimiter(math.inf)
        # Group commit of admissions (see admit): requests not yet taken into a batch,
        # oldest first, and whether some admit call is writing batches right now.
        self._admit_queue: list[_AdmitRequest] = []
        self._admit_writing = False
        # Told (operation, seconds) after every database call, waiting for a thread included.
        self.on_call: Callable[[str, float], None] | None = None
        # Called (on the Trio thread) after a call committed webhook events or made
        # deliveries due: the delivery worker's wake-up.
        self.on_outbox_write: Callable[[], None] | None = None
        self._outbox_dirty = False  # set by a worker thread after such a commit
        self._no_endpoints_until = 0.0  # time.monotonic(); see NO_ENDPOINTS_TTL

    async def _run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        return await self._call(self._limiter, fn, *args, **kwargs)

    async def _run_holding_worker(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """:meth:`_run` for a caller that already holds one of ``_limiter``'s workers."""
        return await self._call(self._worker_held, fn, *args, **kwargs)

    async def _call(
        self,
        limiter: trio.CapacityLimiter,
        fn: Callable[P, T],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> T:
        call = functools.partial(_translate_errors(fn), *args, **kwargs)
        started = trio.current_time()
        try:
            return await trio.to_thread.run_sync(call, limiter=limiter)
        finally:
            if self.on_call is not None:
                self.on_call(fn.__name__.lstrip("_"), trio.current_time() - started)
            if self._outbox_dirty:
                self._outbox_dirty = False
                if self.on_outbox_write is not None:
                    self.on_outbox_write()

    @contextmanager
    def _begin(self) -> Iterator[Connection]:
        """``engine.begin()`` that notes, once committed, that webhook events were written."""
        with self.engine.begin() as conn:
            try:
                yield conn
            finally:
                wrote = conn.info.pop(_OUTBOX_WRITTEN, False)
        if wrote:  # committed: only now may the worker look for the new rows
            self._outbox_dirty = True

    # Lifecycle

    async def open(self) -> None:
        """Check the schema: create it in an empty database, upgrade it if allowed.

        Raises SchemaOutOfDate (naming ``meshroom db upgrade``), SchemaError or
        StoreUnavailable.
        """
        await self._run(self._prepare_schema)

    def _prepare_schema(self) -> None:
        with self.engine.begin() as conn:
            state = migrate.inspect(conn)
            if state.status is SchemaStatus.CURRENT:
                return
            if state.status is SchemaStatus.EMPTY or (
                self.auto_migrate
                and state.status in (SchemaStatus.BEHIND, SchemaStatus.UNVERSIONED)
            ):
                before, after = migrate.upgrade(conn)
                if before is None:
                    log.info("created the database schema (revision %s)", after)
                else:
                    log.warning("upgraded the database schema from %s to %s", before, after)
                return
            if state.status in (SchemaStatus.BEHIND, SchemaStatus.UNVERSIONED):
                raise SchemaOutOfDate(
                    f"{state.describe()}; run `meshroom db upgrade` "
                    "(or start the server with --auto-migrate)"
                )
            raise SchemaError(state.describe())

    async def schema_state(self) -> SchemaState:
        return await self._run(self._schema_state)

    def _schema_state(self) -> SchemaState:
        with self.engine.connect() as conn:
            return migrate.inspect(conn)

    async def upgrade_schema(self, revision: str = "head") -> tuple[str | None, str]:
        """Migrate to ``revision``; (from, to). Used by ``meshroom db upgrade``."""
        return await self._run(self._upgrade_schema, revision)

    def _upgrade_schema(self, revision: str) -> tuple[str | None, str]:
        with self.engine.begin() as conn:
            return migrate.upgrade(conn, revision)

    async def close(self) -> None:
        await self._run(self.engine.dispose)

    async def ping(self) -> None:
        await self._run(self._ping)

    def _ping(self) -> None:
        with self.engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))

    # Meetings

    async def create_meeting(
        self, *, title: str, host_emp_id: str, scheduled_at: dt.datetime | None = None
    ) -> Meeting:
        return await self._run(self._create_meeting, title, host_emp_id, scheduled_at)

    def _create_meeting(
        self, title: str, host_emp_id: str, scheduled_at: dt.datetime | None
    ) -> Meeting:
        # PostgreSQL enforces column lengths and SQLite does not: check here, for both.
        if len(title) > meetings.c.title.type.length:  # type: ignore[attr-defined]
            raise ValueError(f"a title has at most {meetings.c.title.type.length} characters")  # type: ignore[attr-defined]
        if len(host_emp_id) > meetings.c.host_emp_id.type.length:  # type: ignore[attr-defined]
            raise ValueError("an employee id has at most 128 characters")
        for _attempt in range(8):
            values = {
                "id": str(uuid.uuid4()),
                "title": title,
                "room_code": new_room_code(),
                "host_emp_id": host_emp_id,
                "status": MeetingStatus.SCHEDULED.value,
                "scheduled_at": scheduled_at,
                "created_at": utcnow(),
            }
            try:
                with self.engine.begin() as conn:
                    conn.execute(meetings.insert().values(**values))
            except IntegrityError:
                continue  # room code collision: draw another
            return _meeting({**values, "started_at": None, "ended_at": None})
        raise StoreUnavailable("could not allocate a unique room code")

    async def get_meeting(self, meeting_id: str) -> Meeting | None:
        return await self._run(self._get_meeting, meetings.c.id == meeting_id)

    async def get_meeting_by_code(self, room_code: str) -> Meeting | None:
        return await self._run(self._get_meeting, meetings.c.room_code == room_code)

    def _get_meeting(self, where: Any) -> Meeting | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(meetings).where(where)).mappings().first()
        return _meeting(row) if row else None

    async def list_meetings(
        self, *, status: MeetingStatus | None = None, limit: int = 50, offset: int = 0
    ) -> tuple[list[Meeting], int]:
        return await self._run(self._list_meetings, status, limit, offset)

    async def ended_among(self, meeting_ids: Sequence[str]) -> set[str]:
        if not meeting_ids:
            return set()
        return await self._run(self._ended_among, list(meeting_ids))

    def _ended_among(self, ids: list[str]) -> set[str]:
        ended: set[str] = set()
        with self.engine.connect() as conn:
            for start in range(0, len(ids), _CHUNK):
                ended.update(
                    conn.execute(
                        sa.select(meetings.c.id).where(
                            meetings.c.id.in_(ids[start : start + _CHUNK])
                            & (meetings.c.status == MeetingStatus.ENDED.value)
                        )
                    ).scalars()
                )
        return ended

    def _list_meetings(
        self, status: MeetingStatus | None, limit: int, offset: int
    ) -> tuple[list[Meeting], int]:
        query = sa.select(meetings)
        count = sa.select(sa.func.count()).select_from(meetings)
        if status is not None:
            query = query.where(meetings.c.status == status.value)
            count = count.where(meetings.c.status == status.value)
        query = query.order_by(meetings.c.created_at.desc(), meetings.c.id)
        with self.engine.connect() as conn:
            rows = conn.execute(query.limit(limit).offset(offset)).mappings().all()
            total = conn.execute(count).scalar_one()
        return [_meeting(r) for r in rows], int(total)

    async def transition(
        self, meeting_id: str, to: MeetingStatus, *, by: str | None = None
    ) -> Meeting:
        return await self._run(self._transition, meeting_id, to, by)

    def _transition(self, meeting_id: str, to: MeetingStatus, by: str | None) -> Meeting:
        now = utcnow()
        with self._begin() as conn:
            targets = self._webhook_targets(conn)
            row = (
                conn.execute(
                    sa.select(meetings).where(meetings.c.id == meeting_id).with_for_update()
                )
                .mappings()
                .first()
            )
            if row is None:
                raise MeetingNotFound(meeting_id)
            current = MeetingStatus(row["status"])
            if to not in _TRANSITIONS[current]:
                raise InvalidTransition(current, to)
            values: dict[str, Any] = {"status": to.value}
            events: list[OutboxEvent] = []
            if to is MeetingStatus.LIVE:
                values["started_at"] = now
            else:
                values["ended_at"] = now
                # Whoever is still recorded as present leaves with the meeting.
                for closed in self._close_open_rows(conn, meeting_id, now, "meeting-ended"):
                    events.extend(outbox.row_closed(closed))
            conn.execute(meetings.update().where(meetings.c.id == meeting_id).values(**values))
            meeting = _meeting({**row, **values})
            if targets:
                if to is MeetingStatus.LIVE:
                    events.append(outbox.meeting_started(meeting))
                else:
                    events.append(outbox.meeting_ended(meeting, by))
                self._write_events(conn, targets, events)
        return meeting

    # Joining and leaving

    async def admit(
        self, *, meeting_id: str, emp_id: str, display_name: str, role: Role, at: dt.datetime
    ) -> Admission:
        """Group commit: joins that arrive while a batch is being written share the next one.

        Flat combining, no background task: the request joins ``_admit_queue``; if no
        batch is being written, this call writes one itself (everything queued, its own
        request included), else it waits until a writer settles its request or hands
        it the slot. A refusal (not found, not live, banned) is the request's own; a
        failure of the transaction (StoreUnavailable, anything) is every request's
        of that batch.
        """
        request = _AdmitRequest(meeting_id, emp_id, display_name, role, at)
        self._admit_queue.append(request)
        started = trio.current_time()
        try:
            while request.outcome is None:
                if not self._admit_writing:
                    await self._write_admissions(request)
                else:
                    request.wake = trio.Event()
                    await request.wake.wait()
        except trio.Cancelled:
            if not request.taken:
                # Never written: withdraw it, nothing to undo.
                self._admit_queue.remove(request)
                self._hand_admit_slot_on()
                raise
            # Its batch is in flight and may commit an attendance row that nobody would
            # close. So behave as a thread call that cannot be abandoned (what admit was
            # before batching): wait for the outcome and return it. Trio's cancellation
            # is level-triggered: the caller's next checkpoint raises Cancelled, and the
            # caller, who now holds the attendance id, closes the row (the hub's
            # _admit_and_attach does, shielded).
            with trio.CancelScope(shield=True):
                await request.settled.wait()
        finally:
            if self.on_call is not None:
                self.on_call("admit", trio.current_time() - started)
        if isinstance(request.outcome, BaseException):
            raise request.outcome
        assert request.outcome is not None
        return request.outcome

    async def _write_admissions(self, own: _AdmitRequest) -> None:
        """Hold the admission slot and write batches until ``own`` is settled."""
        self._admit_writing = True
        try:
            while own.outcome is None:
                # Cancellable: nothing is taken from the queue until a worker is ours.
                async with self._limiter:
                    batch = self._admit_queue[:ADMIT_BATCH_MAX]
                    del self._admit_queue[:ADMIT_BATCH_MAX]
                    for request in batch:
                        request.taken = True
                    outcomes: list[Admission | Exception] | None = None
                    failure: BaseException | None = None
                    try:
                        # Shielded: once taken, a batch is written to the end and every
                        # waiter told, whatever happens to this task meanwhile.
                        with trio.CancelScope(shield=True):
                            outcomes = await self._run_holding_worker(self._admit_batch, batch)
                    except BaseException as exc:  # every waiter of the batch gets it
                        failure = exc
                    for i, request in enumerate(batch):
                        request.outcome = failure if outcomes is None else outcomes[i]
                        request.settled.set()
                        request.wake.set()
        finally:
            self._admit_writing = False
            self._hand_admit_slot_on()

    def _hand_admit_slot_on(self) -> None:
        """The slot is free: the oldest waiting request writes the next batch."""
        if not self._admit_writing and self._admit_queue:
            self._admit_queue[0].wake.set()

    def _admit_batch(self, batch: Sequence[_AdmitRequest]) -> list[Admission | Exception]:
        """One transaction for every join of the batch: a few statements, not four per join.

        Returns each request's outcome, in order: its Admission, or the refusal it raises.
        """
        outcomes: dict[int, Admission | Exception] = {}
        with self._begin() as conn:
            targets = self._webhook_targets(conn)
            # FOR SHARE (PostgreSQL): concurrent joins do not block one another, but a
            # concurrent end (FOR UPDATE) waits for these rows, or this batch for the end,
            # so no open row can slip in after the end closed them all. With webhooks,
            # FOR UPDATE: batches touching a meeting take turns, so its events commit in
            # the order of their sequence numbers (the worker's per-meeting order relies
            # on it). One statement, locking in id order like every writer here: no
            # deadlock with another process's batch or an end.
            meeting_ids = sorted({request.meeting_id for request in batch})
            rows = conn.execute(
                sa.select(meetings)
                .where(meetings.c.id.in_(meeting_ids))
                .order_by(meetings.c.id)
                .with_for_update(read=not targets)
            ).mappings()
            meetings_by_id = {row["id"]: _meeting(row) for row in rows}
            keys = sorted(
                {
                    (request.meeting_id, request.emp_id)
                    for request in batch
                    if request.meeting_id in meetings_by_id
                }
            )
            people: dict[tuple[str, str], _Person] = {}
            if keys:
                found = conn.execute(
                    sa.select(
                        participants.c.meeting_id,
                        participants.c.emp_id,
                        participants.c.banned,
                        participants.c.role_override,
                    ).where(
                        # Not a row-value IN of the keys: PostgreSQL scans the whole table
                        # for that. These two use the primary key; the few extra rows (this
                        # employee in another meeting of the batch) are dropped below.
                        participants.c.meeting_id.in_(sorted({m for m, _ in keys}))
                        & participants.c.emp_id.in_(sorted({e for _, e in keys}))
                    )
                )
                wanted = set(keys)
                for row in found:
                    key = (row.meeting_id, row.emp_id)
                    if key in wanted:
                        people[key] = _Person(
                            banned=bool(row.banned), role_override=row.role_override
                        )
            # Decided in batch order, in Python: a second join of the same employee sees
            # the first as this transaction will have written it.
            new_people: dict[tuple[str, str], dict[str, Any]] = {}
            seen_again: dict[tuple[str, str], dict[str, Any]] = {}
            admitted: list[tuple[int, _AdmitRequest, Meeting, Role]] = []
            for index, request in enumerate(batch):
                meeting = meetings_by_id.get(request.meeting_id)
                if meeting is None:
                    outcomes[index] = MeetingNotFound(request.meeting_id)
                    continue
                if meeting.status is not MeetingStatus.LIVE:
                    outcomes[index] = MeetingNotLive(meeting.status)
                    continue
                key = (request.meeting_id, request.emp_id)
                person = people.get(key)
                if person is not None and person.banned:
                    outcomes[index] = EmployeeBanned(request.emp_id)
                    continue
                effective = request.role
                if request.role is not Role.HOST and person is not None and person.role_override:
                    effective = Role(person.role_override)
                if person is None:
                    people[key] = _Person(banned=False, role_override=None)
                    new_people[key] = {
                        "meeting_id": request.meeting_id,
                        "emp_id": request.emp_id,
                        "banned": False,
                    }
                values = new_people[key] if key in new_people else seen_again.setdefault(key, {})
                values.update(display_name=request.display_name, last_role=effective.value)
                admitted.append((index, request, meeting, effective))
            if new_people:
                conn.execute(
                    _insert_ignoring_conflict(self.engine, participants),
                    [new_people[key] for key in sorted(new_people)],
                )
            if seen_again:
                conn.execute(
                    _UPDATE_PARTICIPANT,
                    [
                        {"key_meeting": m, "key_emp": e, **seen_again[(m, e)]}
                        for m, e in sorted(seen_again)
                    ],
                )
            opened = [
                {
                    "meeting_id": request.meeting_id,
                    "emp_id": request.emp_id,
                    "display_name": request.display_name,
                    "role": effective.value,
                    "joined_at": request.at,
                }
                for _, request, _, effective in admitted
            ]
            attendance_ids = (
                [int(i) for i in conn.execute(_INSERT_ATTENDANCE, opened).scalars()]
                if opened
                else []
            )
            events: list[OutboxEvent] = []
            for attendance_id, (index, request, meeting, effective) in zip(
                attendance_ids, admitted, strict=True
            ):
                outcomes[index] = Admission(
                    meeting=meeting, attendance_id=attendance_id, role=effective
                )
                if targets:
                    events.append(
                        outbox.participant_joined(
                            meeting_id=request.meeting_id,
                            attendance_id=attendance_id,
                            emp_id=request.emp_id,
                            display_name=request.display_name,
                            role=effective,
                            joined_at=request.at,
                        )
                    )
            if events:
                self._write_events(conn, targets, events)
        return [outcomes[index] for index in range(len(batch))]

    def _insert_participant(
        self,
        conn: Connection,
        meeting_id: str,
        emp_id: str,
        display_name: str,
        role: Role,
        **extra: Any,
    ) -> None:
        values = {
            "meeting_id": meeting_id,
            "emp_id": emp_id,
            "display_name": display_name,
            "last_role": role.value,
            "banned": False,
            **extra,
        }
        conn.execute(_insert_ignoring_conflict(self.engine, participants), values)

    async def record_leaves(self, leaves: Sequence[Leave]) -> int:
        if not leaves:
            return 0
        return await self._run(self._record_leaves, list(leaves))

    def _record_leaves(self, leaves: list[Leave]) -> int:
        by_id: dict[int, Leave] = {}
        for leave in leaves:
            by_id.setdefault(leave.attendance_id, leave)  # the first leave of a row wins
        ids = sorted(by_id)  # one lock order for every writer: no deadlock between batches
        closed = 0
        with self._begin() as conn:
            targets = self._webhook_targets(conn)
            if targets:
                self._lock_meetings_of_open_rows(conn, ids)
            events: list[OutboxEvent] = []
            for start in range(0, len(ids), _CHUNK):
                open_rows = conn.execute(
                    sa.select(*_CLOSING_COLUMNS)
                    .where(
                        attendance.c.id.in_(ids[start : start + _CHUNK])
                        & attendance.c.left_at.is_(None)
                    )
                    .order_by(attendance.c.id)
                ).all()
                closing = []
                for row in open_rows:
                    leave = by_id[row.id]
                    joined = _utc_required(row.joined_at)
                    left_at = max(leave.left_at, joined)
                    seconds = (left_at - joined).total_seconds()
                    closing.append((row.id, left_at, leave.reason, seconds))
                    if targets:
                        events.extend(outbox.row_closed(_closed_row(row, left_at, leave.reason)))
                closed += self._close_rows(conn, closing)
            if targets:
                self._write_events(conn, targets, events)
        return closed

    def _close_rows(self, conn: Connection, rows: list[tuple[int, dt.datetime, str, float]]) -> int:
        """Close attendance rows still open, in one executemany round trip."""
        if not rows:
            return 0
        statement = (
            attendance.update()
            .where((attendance.c.id == sa.bindparam("row_id")) & attendance.c.left_at.is_(None))
            .values(
                left_at=sa.bindparam("at"),
                leave_reason=sa.bindparam("why"),
                duration_seconds=sa.bindparam("seconds"),
            )
        )
        result = conn.execute(
            statement,
            [{"row_id": r, "at": at, "why": why, "seconds": s} for r, at, why, s in rows],
        )
        if self.engine.dialect.supports_sane_multi_rowcount:
            return int(result.rowcount)
        return len(rows)

    async def touch_attendance(self, attendance_ids: Sequence[int], at: dt.datetime) -> int:
        if not attendance_ids:
            return 0
        return await self._run(self._touch_attendance, sorted(set(attendance_ids)), at)

    def _touch_attendance(self, ids: list[int], at: dt.datetime) -> int:
        touched = 0
        with self.engine.begin() as conn:
            for start in range(0, len(ids), _CHUNK):
                result = conn.execute(
                    attendance.update()
                    .where(
                        attendance.c.id.in_(ids[start : start + _CHUNK])
                        & attendance.c.left_at.is_(None)
                    )
                    .values(last_seen_at=at)
                )
                touched += result.rowcount
        return touched

    async def recover_open_attendance(self, *, stale_before: dt.datetime | None = None) -> int:
        return await self._run(self._recover_open_attendance, stale_before)

    def _recover_open_attendance(self, stale_before: dt.datetime | None) -> int:
        closed = 0
        open_rows: sa.ColumnElement[bool] = attendance.c.left_at.is_(None)
        if stale_before is not None:
            # Only rows nobody has stamped for a while: in a cluster, the other nodes'
            # live rows are stamped every heartbeat and must stay open.
            seen = sa.func.coalesce(attendance.c.last_seen_at, attendance.c.joined_at)
            open_rows = open_rows & (seen < stale_before)
        with self._begin() as conn:
            targets = self._webhook_targets(conn)
            if targets:
                open_meetings = conn.execute(
                    sa.select(attendance.c.meeting_id).where(open_rows).distinct()
                ).scalars()
                self._lock_meetings(conn, open_meetings)
            rows = conn.execute(
                sa.select(*_CLOSING_COLUMNS).where(open_rows).order_by(attendance.c.id)
            ).all()
            events: list[OutboxEvent] = []
            for row in rows:
                joined = _utc_required(row.joined_at)
                left_at = max(joined, _utc(row.last_seen_at) or joined)
                result = conn.execute(
                    attendance.update()
                    .where((attendance.c.id == row.id) & attendance.c.left_at.is_(None))
                    .values(
                        left_at=left_at,
                        leave_reason=RECOVERED_LEAVE_REASON,
                        duration_seconds=(left_at - joined).total_seconds(),
                        closed_by_recovery=True,
                    )
                )
                closed += result.rowcount
                if targets and result.rowcount:
                    recovered = _closed_row(row, left_at, RECOVERED_LEAVE_REASON, recovered=True)
                    events.extend(outbox.row_closed(recovered))
            if targets:
                self._write_events(conn, targets, events)
        return closed

    def _close_open_rows(
        self, conn: Connection, meeting_id: str, at: dt.datetime, reason: str
    ) -> list[ClosedRow]:
        """Close the meeting's open rows (its row lock held); what was closed, by row id."""
        rows = conn.execute(
            sa.select(*_CLOSING_COLUMNS)
            .where((attendance.c.meeting_id == meeting_id) & attendance.c.left_at.is_(None))
            .order_by(attendance.c.id)
        ).all()
        closed = [_closed_row(row, at, reason) for row in rows]
        self._close_rows(conn, [(c.attendance_id, at, reason, c.duration_seconds) for c in closed])
        return closed

    # Moderation

    async def ban(
        self, *, meeting_id: str, emp_id: str, by: str | None, reason: str | None, at: dt.datetime
    ) -> None:
        await self._run(self._ban, meeting_id, emp_id, by, reason, at)

    def _ban(
        self, meeting_id: str, emp_id: str, by: str | None, reason: str | None, at: dt.datetime
    ) -> None:
        ban_values = {"banned": True, "banned_at": at, "banned_by": by, "ban_reason": reason}
        with self._begin() as conn:
            targets = self._webhook_targets(conn)
            meeting = sa.select(meetings.c.id).where(meetings.c.id == meeting_id)
            if targets:
                meeting = meeting.with_for_update()
            if not conn.execute(meeting).first():
                raise MeetingNotFound(meeting_id)
            key = (participants.c.meeting_id == meeting_id) & (participants.c.emp_id == emp_id)
            was_banned = bool(
                targets and conn.execute(sa.select(participants.c.banned).where(key)).scalar()
            )
            updated = conn.execute(participants.update().where(key).values(**ban_values))
            if updated.rowcount == 0:
                # Banning someone who never joined (pre-emptive ban from the API).
                values = {k: v for k, v in ban_values.items() if k != "banned"}
                self._insert_participant(
                    conn, meeting_id, emp_id, emp_id, Role.PARTICIPANT, **values
                )
                conn.execute(participants.update().where(key).values(**ban_values))
            if targets and not was_banned:  # a ban taking effect, not a ban renewed
                event = outbox.banned(
                    meeting_id=meeting_id, emp_id=emp_id, by=by, reason=reason, at=at
                )
                self._write_events(conn, targets, [event])

    async def unban(self, *, meeting_id: str, emp_id: str, by: str | None = None) -> bool:
        return await self._run(self._unban, meeting_id, emp_id, by)

    def _unban(self, meeting_id: str, emp_id: str, by: str | None) -> bool:
        key = (
            (participants.c.meeting_id == meeting_id)
            & (participants.c.emp_id == emp_id)
            & participants.c.banned.is_(True)
        )
        with self._begin() as conn:
            targets = self._webhook_targets(conn)
            if targets:
                self._lock_meetings(conn, [meeting_id])
            result = conn.execute(
                participants.update()
                .where(key)
                .values(banned=False, banned_at=None, banned_by=None, ban_reason=None)
            )
            if targets and result.rowcount:
                event = outbox.unbanned(meeting_id=meeting_id, emp_id=emp_id, by=by, at=utcnow())
                self._write_events(conn, targets, [event])
        return bool(result.rowcount)

    async def list_bans(self, meeting_id: str) -> list[Ban]:
        return await self._run(self._list_bans, meeting_id)

    def _list_bans(self, meeting_id: str) -> list[Ban]:
        query = (
            sa.select(participants)
            .where((participants.c.meeting_id == meeting_id) & participants.c.banned.is_(True))
            .order_by(participants.c.banned_at, participants.c.emp_id)
        )
        with self.engine.connect() as conn:
            rows = conn.execute(query).mappings().all()
        return [
            Ban(
                meeting_id=r["meeting_id"],
                emp_id=r["emp_id"],
                banned_at=_utc_required(r["banned_at"]),
                banned_by=r["banned_by"],
                reason=r["ban_reason"],
            )
            for r in rows
        ]

    async def set_role_override(
        self,
        *,
        meeting_id: str,
        emp_id: str,
        role: Role | None,
        reason: str | None = None,
        by: str | None = None,
    ) -> None:
        await self._run(self._set_role_override, meeting_id, emp_id, role, reason, by)

    def _set_role_override(
        self, meeting_id: str, emp_id: str, role: Role | None, reason: str | None, by: str | None
    ) -> None:
        key = (participants.c.meeting_id == meeting_id) & (participants.c.emp_id == emp_id)
        values: dict[str, Any] = {"role_override": role.value if role else None}
        if role is not None:
            values["last_role"] = role.value
        with self._begin() as conn:
            targets = self._webhook_targets(conn)
            person = None
            if targets:
                self._lock_meetings(conn, [meeting_id])
                person = conn.execute(
                    sa.select(
                        participants.c.display_name,
                        participants.c.last_role,
                        participants.c.role_override,
                    ).where(key)
                ).first()
            conn.execute(participants.update().where(key).values(**values))
            if targets and person is not None and role is not None:
                previous = Role(person.role_override or person.last_role)
                if previous is not role:
                    event = outbox.role_changed(
                        meeting_id=meeting_id,
                        emp_id=emp_id,
                        display_name=person.display_name,
                        role=role,
                        previous=previous,
                        reason=reason,
                        by=by,
                        at=utcnow(),
                    )
                    self._write_events(conn, targets, [event])

    # Attendance

    async def attendance_for_meeting(self, meeting_id: str) -> list[AttendanceRecord]:
        return await self._run(self._attendance, attendance.c.meeting_id == meeting_id)

    async def attendance_for_employee(
        self, emp_id: str, *, since: dt.datetime | None = None, until: dt.datetime | None = None
    ) -> list[AttendanceRecord]:
        where = attendance.c.emp_id == emp_id
        if since is not None:
            where &= attendance.c.joined_at >= since
        if until is not None:
            where &= attendance.c.joined_at < until
        return await self._run(self._attendance, where)

    def _attendance(self, where: Any) -> list[AttendanceRecord]:
        query = sa.select(attendance).where(where).order_by(attendance.c.joined_at, attendance.c.id)
        with self.engine.connect() as conn:
            rows = conn.execute(query).mappings().all()
        return [
            AttendanceRecord(
                id=r["id"],
                meeting_id=r["meeting_id"],
                emp_id=r["emp_id"],
                display_name=r["display_name"],
                role=Role(r["role"]),
                joined_at=_utc_required(r["joined_at"]),
                left_at=_utc(r["left_at"]),
                duration_seconds=r["duration_seconds"],
                leave_reason=r["leave_reason"],
                last_seen_at=_utc(r["last_seen_at"]),
                closed_by_recovery=bool(r["closed_by_recovery"]),
            )
            for r in rows
        ]

    # The webhook outbox, written by the transactions above

    def _webhook_targets(self, conn: Connection) -> _Targets:
        """The enabled endpoints, read in the writing transaction (none: nothing is written).

        While there are none, that is remembered for NO_ENDPOINTS_TTL, so a server without
        webhooks does not pay a query per join; while there are some, they are read in
        every transaction, so events go to exactly the endpoints enabled at its commit.
        """
        if time.monotonic() < self._no_endpoints_until:
            return []
        targets = [(row.id, _event_types(row.event_types)) for row in conn.execute(_TARGETS)]
        if not targets:
            self._no_endpoints_until = time.monotonic() + NO_ENDPOINTS_TTL
        return targets

    def _lock_meetings(self, conn: Connection, meeting_ids: Iterable[str]) -> None:
        """Hold these meetings' rows (PostgreSQL; SQLite has one writer) until commit.

        Every transaction that writes events of a meeting holds its row first, in id
        order, so the events of one meeting commit in the order of their ``seq``.
        """
        ids = sorted(set(meeting_ids))
        for start in range(0, len(ids), _CHUNK):
            conn.execute(
                sa.select(meetings.c.id)
                .where(meetings.c.id.in_(ids[start : start + _CHUNK]))
                .order_by(meetings.c.id)
                .with_for_update()
            ).all()

    def _lock_meetings_of_open_rows(self, conn: Connection, attendance_ids: list[int]) -> None:
        meeting_ids: set[str] = set()
        for start in range(0, len(attendance_ids), _CHUNK):
            meeting_ids.update(
                conn.execute(
                    sa.select(attendance.c.meeting_id)
                    .where(
                        attendance.c.id.in_(attendance_ids[start : start + _CHUNK])
                        & attendance.c.left_at.is_(None)
                    )
                    .distinct()
                ).scalars()
            )
        self._lock_meetings(conn, meeting_ids)

    def _write_events(
        self, conn: Connection, targets: _Targets, events: Sequence[OutboxEvent]
    ) -> None:
        """Insert the events, in order, with one pending delivery per endpoint that wants each."""
        now = utcnow()
        rows: list[dict[str, Any]] = []
        wanted: list[tuple[OutboxEvent, list[str]]] = []
        for event in events:
            endpoint_ids = [eid for eid, types in targets if types is None or event.type in types]
            if not endpoint_ids:
                continue
            rows.append(
                {
                    "id": outbox.new_event_id(),
                    "type": event.type.value,
                    "meeting_id": event.meeting_id,
                    "occurred_at": event.occurred_at,
                    "data": orjson.dumps(event.data).decode(),
                }
            )
            wanted.append((event, endpoint_ids))
        if not rows:
            return
        # One statement for all of them; sort_by_parameter_order makes the returned seqs
        # line up with the rows, which are numbered in the order given.
        seqs = [int(seq) for seq in conn.execute(_INSERT_EVENTS, rows).scalars()]
        conn.execute(
            _INSERT_DELIVERIES,
            [
                {
                    "event_seq": seq,
                    "endpoint_id": endpoint_id,
                    "meeting_id": event.meeting_id,
                    "status": DeliveryStatus.PENDING.value,
                    "attempts": 0,
                    "next_attempt_at": now,
                }
                for seq, (event, endpoint_ids) in zip(seqs, wanted, strict=True)
                for endpoint_id in endpoint_ids
            ],
        )
        conn.info[_OUTBOX_WRITTEN] = True

    # Webhooks: endpoints (WebhookStore)

    async def list_webhook_endpoints(self) -> list[WebhookEndpoint]:
        return await self._run(self._list_webhook_endpoints)

    def _list_webhook_endpoints(self) -> list[WebhookEndpoint]:
        query = sa.select(webhook_endpoints).order_by(
            webhook_endpoints.c.created_at, webhook_endpoints.c.id
        )
        with self.engine.connect() as conn:
            rows = conn.execute(query).mappings().all()
        return [_endpoint(row) for row in rows]

    async def put_webhook_endpoint(self, endpoint: WebhookEndpoint) -> None:
        await self._run(self._put_webhook_endpoint, endpoint)

    def _put_webhook_endpoint(self, endpoint: WebhookEndpoint) -> None:
        values = {
            "url": endpoint.url,
            "secret": endpoint.secret,
            "event_types": (
                None
                if endpoint.event_types is None
                else ",".join(sorted(t.value for t in endpoint.event_types))
            ),
            "source": endpoint.source.value,
            "enabled": endpoint.enabled,
            "description": endpoint.description,
        }
        where = webhook_endpoints.c.id == endpoint.id
        self._no_endpoints_until = 0.0
        with self._begin() as conn:
            if not conn.execute(webhook_endpoints.update().where(where).values(**values)).rowcount:
                conn.execute(
                    webhook_endpoints.insert().values(
                        id=endpoint.id, created_at=endpoint.created_at, **values
                    )
                )
            # An endpoint enabled again has deliveries that are due: look now.
            conn.info[_OUTBOX_WRITTEN] = endpoint.enabled

    async def delete_webhook_endpoint(self, endpoint_id: str) -> bool:
        return await self._run(self._delete_webhook_endpoint, endpoint_id)

    def _delete_webhook_endpoint(self, endpoint_id: str) -> bool:
        with self._begin() as conn:
            conn.execute(
                webhook_deliveries.delete().where(webhook_deliveries.c.endpoint_id == endpoint_id)
            )
            result = conn.execute(
                webhook_endpoints.delete().where(webhook_endpoints.c.id == endpoint_id)
            )
        return bool(result.rowcount)

    # Webhooks: deliveries (WebhookStore)

    async def claim_webhook_deliveries(
        self,
        *,
        limit_per_endpoint: int,
        in_flight: Mapping[str, int],
        now: dt.datetime,
        lease: dt.timedelta,
    ) -> Claim:
        return await self._run(
            self._claim_webhook_deliveries, limit_per_endpoint, dict(in_flight), now, lease
        )

    def _claim_webhook_deliveries(
        self, limit: int, in_flight: dict[str, int], now: dt.datetime, lease: dt.timedelta
    ) -> Claim:
        d = webhook_deliveries.alias("d")
        earlier = webhook_deliveries.alias("earlier")
        # Per-meeting order: a delivery waits while an earlier event of its meeting is
        # still pending for the same endpoint (in flight, or waiting for its retry).
        blocked = (
            sa.select(earlier.c.id)
            .where(
                (earlier.c.endpoint_id == d.c.endpoint_id)
                & (earlier.c.meeting_id == d.c.meeting_id)
                & (earlier.c.status == DeliveryStatus.PENDING.value)
                & (earlier.c.event_seq < d.c.event_seq)
            )
            .exists()
        )
        unleased = d.c.lease_until.is_(None) | (d.c.lease_until <= now)
        claimed: list[tuple[int, str]] = []
        with self._begin() as conn:
            endpoint_ids = conn.execute(
                sa.select(webhook_endpoints.c.id)
                .where(webhook_endpoints.c.enabled.is_(True))
                .order_by(webhook_endpoints.c.id)
            ).scalars()
            for endpoint_id in list(endpoint_ids):
                free = limit - in_flight.get(endpoint_id, 0)
                if free <= 0:
                    continue
                candidates = conn.execute(
                    sa.select(d.c.id)
                    .where(
                        (d.c.endpoint_id == endpoint_id)
                        & (d.c.status == DeliveryStatus.PENDING.value)
                        & (d.c.next_attempt_at <= now)
                        & unleased
                        & ~blocked
                    )
                    .order_by(d.c.event_seq)
                    .limit(free)
                ).scalars()
                for delivery_id in list(candidates):
                    token = secrets.token_hex(16)
                    # Conditional: of two workers that picked the same row, one wins.
                    taken = conn.execute(
                        webhook_deliveries.update()
                        .where(
                            (webhook_deliveries.c.id == delivery_id)
                            & (webhook_deliveries.c.status == DeliveryStatus.PENDING.value)
                            & (
                                webhook_deliveries.c.lease_until.is_(None)
                                | (webhook_deliveries.c.lease_until <= now)
                            )
                        )
                        .values(
                            lease_until=now + lease,
                            lease_token=token,
                            attempts=webhook_deliveries.c.attempts + 1,
                        )
                    )
                    if taken.rowcount:
                        claimed.append((delivery_id, token))
            deliveries = self._deliveries(
                conn, webhook_deliveries.c.id.in_([i for i, _ in claimed])
            )
            endpoints = {
                row.id: row
                for row in conn.execute(
                    sa.select(
                        webhook_endpoints.c.id, webhook_endpoints.c.url, webhook_endpoints.c.secret
                    )
                )
            }
            pending = webhook_deliveries.c.status == DeliveryStatus.PENDING.value
            retry_due = conn.execute(
                sa.select(sa.func.min(webhook_deliveries.c.next_attempt_at)).where(
                    pending & (webhook_deliveries.c.next_attempt_at > now)
                )
            ).scalar()
            lease_ends = conn.execute(
                sa.select(sa.func.min(webhook_deliveries.c.lease_until)).where(
                    pending & (webhook_deliveries.c.lease_until > now)
                )
            ).scalar()
        tokens = dict(claimed)
        by_id = {delivery.id: delivery for delivery in deliveries}
        due = [_utc(t) for t in (retry_due, lease_ends) if t is not None]
        return Claim(
            deliveries=[
                ClaimedDelivery(
                    delivery=by_id[delivery_id],
                    lease_token=tokens[delivery_id],
                    url=endpoints[by_id[delivery_id].endpoint_id].url,
                    secret=endpoints[by_id[delivery_id].endpoint_id].secret,
                )
                for delivery_id, _ in claimed  # per endpoint, oldest event first
            ],
            next_due=min((t for t in due if t is not None), default=None),
        )

    async def finish_webhook_delivery(self, result: AttemptResult) -> bool:
        return await self._run(self._finish_webhook_delivery, result)

    def _finish_webhook_delivery(self, result: AttemptResult) -> bool:
        values: dict[str, Any] = {"lease_until": None, "lease_token": None}
        if result.outcome is AttemptOutcome.RELEASED:
            values["attempts"] = webhook_deliveries.c.attempts - 1
        else:
            values.update(
                last_attempt_at=result.at,
                last_status_code=result.status_code,
                last_error=result.error[:500] if result.error else None,
            )
        if result.outcome is AttemptOutcome.DELIVERED:
            values.update(status=DeliveryStatus.DELIVERED.value, delivered_at=result.at)
        elif result.outcome is AttemptOutcome.DEAD:
            values["status"] = DeliveryStatus.DEAD.value
        elif result.outcome is AttemptOutcome.RETRY:
            assert result.next_attempt_at is not None
            values["next_attempt_at"] = result.next_attempt_at
        with self._begin() as conn:
            updated = conn.execute(
                webhook_deliveries.update()
                .where(
                    (webhook_deliveries.c.id == result.delivery_id)
                    & (webhook_deliveries.c.lease_token == result.lease_token)
                    & (webhook_deliveries.c.status == DeliveryStatus.PENDING.value)
                )
                .values(**values)
            )
        return bool(updated.rowcount)

    async def list_webhook_deliveries(
        self,
        *,
        status: DeliveryStatus | None = None,
        endpoint_id: str | None = None,
        meeting_id: str | None = None,
        delivery_ids: Sequence[int] | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> tuple[list[WebhookDelivery], int]:
        where: Any = sa.true()
        if status is not None:
            where &= webhook_deliveries.c.status == status.value
        if endpoint_id is not None:
            where &= webhook_deliveries.c.endpoint_id == endpoint_id
        if meeting_id is not None:
            where &= webhook_deliveries.c.meeting_id == meeting_id
        if delivery_ids is not None:
            where &= webhook_deliveries.c.id.in_(list(delivery_ids))
        return await self._run(self._list_webhook_deliveries, where, limit, offset)

    def _list_webhook_deliveries(
        self, where: Any, limit: int, offset: int
    ) -> tuple[list[WebhookDelivery], int]:
        count = sa.select(sa.func.count()).select_from(webhook_deliveries).where(where)
        with self.engine.connect() as conn:
            rows = self._deliveries(conn, where, newest_first=True, limit=limit, offset=offset)
            total = conn.execute(count).scalar_one()
        return rows, int(total)

    def _deliveries(
        self,
        conn: Connection,
        where: Any,
        *,
        newest_first: bool = False,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[WebhookDelivery]:
        query = (
            sa.select(
                webhook_deliveries,
                webhook_events.c.id.label("event_id"),
                webhook_events.c.type.label("event_type"),
                webhook_events.c.occurred_at,
                webhook_events.c.data,
            )
            .join(webhook_events, webhook_events.c.seq == webhook_deliveries.c.event_seq)
            .where(where)
            .order_by(webhook_deliveries.c.id.desc() if newest_first else webhook_deliveries.c.id)
            .offset(offset)
        )
        if limit is not None:
            query = query.limit(limit)
        return [_delivery(row) for row in conn.execute(query).mappings()]

    async def retry_webhook_deliveries(
        self,
        *,
        delivery_ids: Sequence[int] | None = None,
        endpoint_id: str | None = None,
        now: dt.datetime,
    ) -> int:
        where: Any
        if delivery_ids is not None:
            # Not one a worker is attempting right now: that attempt decides it.
            where = webhook_deliveries.c.id.in_(list(delivery_ids)) & (
                webhook_deliveries.c.lease_until.is_(None)
                | (webhook_deliveries.c.lease_until <= now)
            )
        else:
            where = webhook_deliveries.c.status == DeliveryStatus.DEAD.value
        if endpoint_id is not None:
            where &= webhook_deliveries.c.endpoint_id == endpoint_id
        return await self._run(self._retry_webhook_deliveries, where, now)

    def _retry_webhook_deliveries(self, where: Any, now: dt.datetime) -> int:
        with self._begin() as conn:
            result = conn.execute(
                webhook_deliveries.update()
                .where(where)
                .values(
                    status=DeliveryStatus.PENDING.value,
                    attempts=0,
                    next_attempt_at=now,
                    lease_until=None,
                    lease_token=None,
                    delivered_at=None,
                )
            )
            conn.info[_OUTBOX_WRITTEN] = bool(result.rowcount)
        return int(result.rowcount)

    async def prune_webhook_deliveries(self, *, delivered_before: dt.datetime) -> int:
        return await self._run(self._prune_webhook_deliveries, delivered_before)

    def _prune_webhook_deliveries(self, before: dt.datetime) -> int:
        with self._begin() as conn:
            result = conn.execute(
                webhook_deliveries.delete().where(
                    (webhook_deliveries.c.status == DeliveryStatus.DELIVERED.value)
                    & (webhook_deliveries.c.delivered_at < before)
                )
            )
            conn.execute(
                webhook_events.delete().where(
                    ~sa.select(webhook_deliveries.c.id)
                    .where(webhook_deliveries.c.event_seq == webhook_events.c.seq)
                    .exists()
                )
            )
        return int(result.rowcount)


def _utc_required(value: dt.datetime) -> dt.datetime:
    result = _utc(value)
    assert result is not None
    return result


# Built once: these run in every writing transaction (the first one even without webhooks).
_TARGETS = sa.select(webhook_endpoints.c.id, webhook_endpoints.c.event_types).where(
    webhook_endpoints.c.enabled.is_(True)
)
_INSERT_EVENTS = webhook_events.insert().returning(
    webhook_events.c.seq, sort_by_parameter_order=True
)
_INSERT_DELIVERIES = webhook_deliveries.insert()

_INSERT_ATTENDANCE = attendance.insert().returning(attendance.c.id, sort_by_parameter_order=True)
# SET display_name, last_role: the columns named in each row's parameters.
_UPDATE_PARTICIPANT = participants.update().where(
    (participants.c.meeting_id == sa.bindparam("key_meeting"))
    & (participants.c.emp_id == sa.bindparam("key_emp"))
)

# What closing an attendance row reads of it (for the webhook events that describe it).
_CLOSING_COLUMNS = (
    attendance.c.id,
    attendance.c.meeting_id,
    attendance.c.emp_id,
    attendance.c.display_name,
    attendance.c.role,
    attendance.c.joined_at,
    attendance.c.last_seen_at,
)


def _closed_row(
    row: Any, left_at: dt.datetime, reason: str, *, recovered: bool = False
) -> ClosedRow:
    joined = _utc_required(row.joined_at)
    return ClosedRow(
        attendance_id=row.id,
        meeting_id=row.meeting_id,
        emp_id=row.emp_id,
        display_name=row.display_name,
        role=row.role,
        joined_at=joined,
        left_at=left_at,
        reason=reason,
        duration_seconds=max(0.0, (left_at - joined).total_seconds()),
        last_seen_at=_utc(row.last_seen_at),
        closed_by_recovery=recovered,
    )


def _event_types(value: str | None) -> frozenset[str] | None:
    return None if value is None else frozenset(t for t in value.split(",") if t)


def _endpoint(row: Any) -> WebhookEndpoint:
    types = _event_types(row["event_types"])
    return WebhookEndpoint(
        id=row["id"],
        url=row["url"],
        secret=row["secret"],
        event_types=None if types is None else frozenset(WebhookEventType(t) for t in types),
        source=EndpointSource(row["source"]),
        enabled=bool(row["enabled"]),
        description=row["description"],
        created_at=_utc_required(row["created_at"]),
    )


def _delivery(row: Any) -> WebhookDelivery:
    return WebhookDelivery(
        id=row["id"],
        endpoint_id=row["endpoint_id"],
        event_id=row["event_id"],
        event_type=WebhookEventType(row["event_type"]),
        meeting_id=row["meeting_id"],
        occurred_at=_utc_required(row["occurred_at"]),
        data=orjson.loads(row["data"]),
        status=DeliveryStatus(row["status"]),
        attempts=row["attempts"],
        next_attempt_at=_utc_required(row["next_attempt_at"]),
        last_attempt_at=_utc(row["last_attempt_at"]),
        last_status_code=row["last_status_code"],
        last_error=row["last_error"],
        delivered_at=_utc(row["delivered_at"]),
    )


def _meeting(row: Any) -> Meeting:
    return Meeting(
        id=row["id"],
        title=row["title"],
        room_code=row["room_code"],
        host_emp_id=row["host_emp_id"],
        status=MeetingStatus(row["status"]),
        scheduled_at=_utc(row["scheduled_at"]),
        created_at=_utc_required(row["created_at"]),
        started_at=_utc(row["started_at"]),
        ended_at=_utc(row["ended_at"]),
    )


def _insert_ignoring_conflict(engine: Engine, table: sa.Table) -> Any:
    """An INSERT (values given at execution, one row or many) that skips rows already there."""
    if engine.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(table).on_conflict_do_nothing()
    if engine.dialect.name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert(table).on_conflict_do_nothing()
    return table.insert()


def _translate_errors(fn: Callable[P, T]) -> Callable[P, T]:
    """Map driver failures to StoreUnavailable at the one boundary where they occur."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return fn(*args, **kwargs)
        except (OperationalError, sa.exc.TimeoutError) as exc:
            log.warning("database unavailable: %s", str(exc).split("\n", 1)[0])
            raise StoreUnavailable(str(exc).split("\n", 1)[0]) from exc
        except DBAPIError as exc:
            if exc.connection_invalidated:
                raise StoreUnavailable(str(exc).split("\n", 1)[0]) from exc
            raise

    return wrapper
