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
import uuid
from collections.abc import Callable, Sequence
from typing import Any, ParamSpec, TypeVar

import sqlalchemy as sa
import trio
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.pool import StaticPool

from ..roles import Role
from ..roomcode import new_room_code
from . import migrate
from .base import (
    RECOVERED_LEAVE_REASON,
    Admission,
    AttendanceRecord,
    Ban,
    EmployeeBanned,
    InvalidTransition,
    Leave,
    Meeting,
    MeetingNotFound,
    MeetingNotLive,
    MeetingStatus,
    SchemaError,
    SchemaOutOfDate,
    StoreUnavailable,
)
from .migrate import SchemaState, SchemaStatus
from .schema import attendance, meetings, participants

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

# Rows per statement when a call names many attendance rows (SQLite caps bound parameters).
_CHUNK = 1000
# Seconds a new PostgreSQL connection may take; past it the store is unavailable.
PG_CONNECT_TIMEOUT = 5

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
        # Told (operation, seconds) after every database call, waiting for a thread included.
        self.on_call: Callable[[str, float], None] | None = None

    async def _run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        call = functools.partial(_translate_errors(fn), *args, **kwargs)
        started = trio.current_time()
        try:
            return await trio.to_thread.run_sync(call, limiter=self._limiter)
        finally:
            if self.on_call is not None:
                self.on_call(fn.__name__.lstrip("_"), trio.current_time() - started)

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

    async def transition(self, meeting_id: str, to: MeetingStatus) -> Meeting:
        return await self._run(self._transition, meeting_id, to)

    def _transition(self, meeting_id: str, to: MeetingStatus) -> Meeting:
        now = utcnow()
        with self.engine.begin() as conn:
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
            if to is MeetingStatus.LIVE:
                values["started_at"] = now
            else:
                values["ended_at"] = now
                # Whoever is still recorded as present leaves with the meeting.
                self._close_open_rows(conn, meeting_id, now, "meeting-ended")
            conn.execute(meetings.update().where(meetings.c.id == meeting_id).values(**values))
        return _meeting({**row, **values})

    # Joining and leaving

    async def admit(
        self, *, meeting_id: str, emp_id: str, display_name: str, role: Role, at: dt.datetime
    ) -> Admission:
        return await self._run(self._admit, meeting_id, emp_id, display_name, role, at)

    def _admit(
        self, meeting_id: str, emp_id: str, display_name: str, role: Role, at: dt.datetime
    ) -> Admission:
        with self.engine.begin() as conn:
            # FOR SHARE (PostgreSQL): concurrent joins do not block one another, but a
            # concurrent end (FOR UPDATE) waits for this row, or this join for the end,
            # so no open row can slip in after the end closed them all.
            row = (
                conn.execute(
                    sa.select(meetings)
                    .where(meetings.c.id == meeting_id)
                    .with_for_update(read=True)
                )
                .mappings()
                .first()
            )
            if row is None:
                raise MeetingNotFound(meeting_id)
            meeting = _meeting(row)
            if meeting.status is not MeetingStatus.LIVE:
                raise MeetingNotLive(meeting.status)
            key = (participants.c.meeting_id == meeting_id) & (participants.c.emp_id == emp_id)
            person = conn.execute(sa.select(participants).where(key)).mappings().first()
            if person is not None and person["banned"]:
                raise EmployeeBanned(emp_id)
            effective = role
            if role is not Role.HOST and person is not None and person["role_override"]:
                effective = Role(person["role_override"])
            if person is None:
                self._insert_participant(conn, meeting_id, emp_id, display_name, effective)
            else:
                conn.execute(
                    participants.update()
                    .where(key)
                    .values(display_name=display_name, last_role=effective.value)
                )
            inserted = conn.execute(
                attendance.insert().values(
                    meeting_id=meeting_id,
                    emp_id=emp_id,
                    display_name=display_name,
                    role=effective.value,
                    joined_at=at,
                )
            )
            assert inserted.inserted_primary_key is not None
            attendance_id = int(inserted.inserted_primary_key[0])
        return Admission(meeting=meeting, attendance_id=attendance_id, role=effective)

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
        conn.execute(_insert_ignoring_conflict(self.engine, participants, values))

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
        with self.engine.begin() as conn:
            for start in range(0, len(ids), _CHUNK):
                open_rows = conn.execute(
                    sa.select(attendance.c.id, attendance.c.joined_at)
                    .where(
                        attendance.c.id.in_(ids[start : start + _CHUNK])
                        & attendance.c.left_at.is_(None)
                    )
                    .order_by(attendance.c.id)
                ).all()
                closing = []
                for row_id, joined_at in open_rows:
                    leave = by_id[row_id]
                    joined = _utc_required(joined_at)
                    left_at = max(leave.left_at, joined)
                    closing.append(
                        (row_id, left_at, leave.reason, (left_at - joined).total_seconds())
                    )
                closed += self._close_rows(conn, closing)
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
        with self.engine.begin() as conn:
            rows = conn.execute(
                sa.select(attendance.c.id, attendance.c.joined_at, attendance.c.last_seen_at)
                .where(open_rows)
                .order_by(attendance.c.id)
            ).all()
            for row_id, joined_at, last_seen_at in rows:
                joined = _utc_required(joined_at)
                left_at = max(joined, _utc(last_seen_at) or joined)
                result = conn.execute(
                    attendance.update()
                    .where((attendance.c.id == row_id) & attendance.c.left_at.is_(None))
                    .values(
                        left_at=left_at,
                        leave_reason=RECOVERED_LEAVE_REASON,
                        duration_seconds=(left_at - joined).total_seconds(),
                        closed_by_recovery=True,
                    )
                )
                closed += result.rowcount
        return closed

    def _close_open_rows(
        self, conn: Connection, meeting_id: str, at: dt.datetime, reason: str
    ) -> None:
        rows = conn.execute(
            sa.select(attendance.c.id, attendance.c.joined_at).where(
                (attendance.c.meeting_id == meeting_id) & attendance.c.left_at.is_(None)
            )
        ).all()
        self._close_rows(
            conn,
            [
                (row_id, at, reason, max(0.0, (at - _utc_required(joined_at)).total_seconds()))
                for row_id, joined_at in rows
            ],
        )

    # Moderation

    async def ban(
        self, *, meeting_id: str, emp_id: str, by: str | None, reason: str | None, at: dt.datetime
    ) -> None:
        await self._run(self._ban, meeting_id, emp_id, by, reason, at)

    def _ban(
        self, meeting_id: str, emp_id: str, by: str | None, reason: str | None, at: dt.datetime
    ) -> None:
        ban_values = {"banned": True, "banned_at": at, "banned_by": by, "ban_reason": reason}
        with self.engine.begin() as conn:
            if not conn.execute(
                sa.select(meetings.c.id).where(meetings.c.id == meeting_id)
            ).first():
                raise MeetingNotFound(meeting_id)
            key = (participants.c.meeting_id == meeting_id) & (participants.c.emp_id == emp_id)
            updated = conn.execute(participants.update().where(key).values(**ban_values))
            if updated.rowcount == 0:
                # Banning someone who never joined (pre-emptive ban from the API).
                values = {k: v for k, v in ban_values.items() if k != "banned"}
                self._insert_participant(
                    conn, meeting_id, emp_id, emp_id, Role.PARTICIPANT, **values
                )
                conn.execute(participants.update().where(key).values(**ban_values))

    async def unban(self, *, meeting_id: str, emp_id: str) -> bool:
        return await self._run(self._unban, meeting_id, emp_id)

    def _unban(self, meeting_id: str, emp_id: str) -> bool:
        key = (
            (participants.c.meeting_id == meeting_id)
            & (participants.c.emp_id == emp_id)
            & participants.c.banned.is_(True)
        )
        with self.engine.begin() as conn:
            result = conn.execute(
                participants.update()
                .where(key)
                .values(banned=False, banned_at=None, banned_by=None, ban_reason=None)
            )
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

    async def set_role_override(self, *, meeting_id: str, emp_id: str, role: Role | None) -> None:
        await self._run(self._set_role_override, meeting_id, emp_id, role)

    def _set_role_override(self, meeting_id: str, emp_id: str, role: Role | None) -> None:
        key = (participants.c.meeting_id == meeting_id) & (participants.c.emp_id == emp_id)
        values: dict[str, Any] = {"role_override": role.value if role else None}
        if role is not None:
            values["last_role"] = role.value
        with self.engine.begin() as conn:
            conn.execute(participants.update().where(key).values(**values))

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


def _utc_required(value: dt.datetime) -> dt.datetime:
    result = _utc(value)
    assert result is not None
    return result


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


def _insert_ignoring_conflict(engine: Engine, table: sa.Table, values: dict[str, Any]) -> Any:
    if engine.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(table).values(**values).on_conflict_do_nothing()
    if engine.dialect.name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert(table).values(**values).on_conflict_do_nothing()
    return table.insert().values(**values)


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
