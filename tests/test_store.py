"""SqlStore on SQLite, in memory and in a file: meetings, admission, leaves, bans, attendance."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from meshroom.roles import Role
from meshroom.roomcode import normalize_room_code
from meshroom.store import (
    EmployeeBanned,
    InvalidTransition,
    Leave,
    MeetingNotFound,
    MeetingNotLive,
    MeetingStatus,
    SqlStore,
    StoreUnavailable,
)

UTC = dt.UTC
T0 = dt.datetime(2024, 3, 1, 9, 0, tzinfo=UTC)


@pytest.fixture(params=["memory", "file"])
async def store(request, tmp_path: Path) -> AsyncIterator[SqlStore]:
    url = "sqlite://" if request.param == "memory" else f"sqlite:///{tmp_path / 'store.db'}"
    store = SqlStore(url)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


async def live_meeting(store: SqlStore, title: str = "Standup", host: str = "boss"):
    meeting = await store.create_meeting(title=title, host_emp_id=host)
    return await store.transition(meeting.id, MeetingStatus.LIVE)


async def admit(store: SqlStore, meeting_id: str, emp_id: str, role=Role.PARTICIPANT, at=T0):
    return await store.admit(
        meeting_id=meeting_id, emp_id=emp_id, display_name=emp_id.title(), role=role, at=at
    )


# Lifecycle


async def test_open_is_idempotent_and_ping_answers(store):
    await store.open()
    await store.ping()


async def test_unreachable_database_is_store_unavailable(tmp_path):
    store = SqlStore(f"sqlite:///{tmp_path / 'no' / 'such' / 'dir.db'}")
    with pytest.raises(StoreUnavailable):
        await store.open()
    with pytest.raises(StoreUnavailable):
        await store.ping()
    await store.close()


async def test_file_database_survives_reopening(tmp_path):
    url = f"sqlite:///{tmp_path / 'm.db'}"
    first = SqlStore(url)
    await first.open()
    meeting = await first.create_meeting(title="T", host_emp_id="h")
    await first.close()
    second = SqlStore(url)
    await second.open()
    assert await second.get_meeting(meeting.id) == meeting
    await second.close()


# Meetings


async def test_create_and_get(store):
    scheduled = dt.datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    meeting = await store.create_meeting(title="Retro", host_emp_id="e1", scheduled_at=scheduled)
    assert meeting.status is MeetingStatus.SCHEDULED
    assert meeting.title == "Retro"
    assert meeting.host_emp_id == "e1"
    assert meeting.scheduled_at == scheduled
    assert meeting.started_at is None and meeting.ended_at is None
    assert normalize_room_code(meeting.room_code) == meeting.room_code
    assert meeting.created_at.tzinfo is not None
    assert await store.get_meeting(meeting.id) == meeting
    assert await store.get_meeting_by_code(meeting.room_code) == meeting


async def test_unknown_meeting_is_none(store):
    assert await store.get_meeting("nope") is None
    assert await store.get_meeting_by_code("abc-defg-hjk") is None


async def test_room_codes_and_ids_are_unique(store):
    meetings = [await store.create_meeting(title=f"m{i}", host_emp_id="h") for i in range(30)]
    assert len({m.id for m in meetings}) == 30
    assert len({m.room_code for m in meetings}) == 30


async def test_list_newest_first_with_pagination(store):
    created = [await store.create_meeting(title=f"m{i}", host_emp_id="h") for i in range(7)]
    page, total = await store.list_meetings(limit=3)
    assert total == 7
    assert [m.title for m in page] == ["m6", "m5", "m4"]
    page, total = await store.list_meetings(limit=3, offset=3)
    assert [m.title for m in page] == ["m3", "m2", "m1"]
    page, total = await store.list_meetings(limit=3, offset=6)
    assert [m.title for m in page] == ["m0"]
    page, total = await store.list_meetings(limit=3, offset=9)
    assert (page, total) == ([], 7)
    everything, _ = await store.list_meetings(limit=100)
    assert {m.id for m in everything} == {m.id for m in created}


async def test_list_filters_by_status(store):
    scheduled = await store.create_meeting(title="s", host_emp_id="h")
    live = await live_meeting(store, "l")
    ended = await store.transition((await live_meeting(store, "e")).id, MeetingStatus.ENDED)
    for status, expected in [
        (MeetingStatus.SCHEDULED, scheduled),
        (MeetingStatus.LIVE, live),
        (MeetingStatus.ENDED, ended),
    ]:
        page, total = await store.list_meetings(status=status)
        assert (total, [m.id for m in page]) == (1, [expected.id])
        assert page[0].status is status
    assert (await store.list_meetings())[1] == 3


# Transitions


async def test_scheduled_to_live_to_ended(store):
    meeting = await store.create_meeting(title="t", host_emp_id="h")
    live = await store.transition(meeting.id, MeetingStatus.LIVE)
    assert live.status is MeetingStatus.LIVE
    assert live.started_at is not None and live.ended_at is None
    ended = await store.transition(meeting.id, MeetingStatus.ENDED)
    assert ended.status is MeetingStatus.ENDED
    assert ended.started_at == live.started_at
    assert ended.ended_at is not None and ended.ended_at >= live.started_at
    assert await store.get_meeting(meeting.id) == ended


async def test_scheduled_meeting_may_be_cancelled(store):
    meeting = await store.create_meeting(title="t", host_emp_id="h")
    ended = await store.transition(meeting.id, MeetingStatus.ENDED)
    assert ended.status is MeetingStatus.ENDED and ended.started_at is None


@pytest.mark.parametrize(
    ("path", "wanted"),
    [
        ((), MeetingStatus.SCHEDULED),
        ((MeetingStatus.LIVE,), MeetingStatus.LIVE),
        ((MeetingStatus.LIVE,), MeetingStatus.SCHEDULED),
        ((MeetingStatus.ENDED,), MeetingStatus.LIVE),
        ((MeetingStatus.ENDED,), MeetingStatus.ENDED),
        ((MeetingStatus.LIVE, MeetingStatus.ENDED), MeetingStatus.SCHEDULED),
    ],
)
async def test_invalid_transitions(store, path, wanted):
    meeting = await store.create_meeting(title="t", host_emp_id="h")
    for status in path:
        meeting = await store.transition(meeting.id, status)
    with pytest.raises(InvalidTransition) as info:
        await store.transition(meeting.id, wanted)
    assert (info.value.current, info.value.wanted) == (meeting.status, wanted)
    assert await store.get_meeting(meeting.id) == meeting  # nothing changed


async def test_transition_of_unknown_meeting(store):
    with pytest.raises(MeetingNotFound):
        await store.transition("nope", MeetingStatus.LIVE)


# Admission


async def test_admit_opens_an_attendance_row(store):
    meeting = await live_meeting(store)
    admission = await admit(store, meeting.id, "alice", Role.COHOST)
    assert admission.meeting.id == meeting.id
    assert admission.role is Role.COHOST
    (row,) = await store.attendance_for_meeting(meeting.id)
    assert row.id == admission.attendance_id
    assert (row.emp_id, row.display_name, row.role) == ("alice", "Alice", Role.COHOST)
    assert row.joined_at == T0
    assert (row.left_at, row.duration_seconds, row.leave_reason) == (None, None, None)


async def test_each_admission_is_a_new_row(store):
    meeting = await live_meeting(store)
    first = await admit(store, meeting.id, "alice")
    second = await admit(store, meeting.id, "alice", at=T0 + dt.timedelta(minutes=1))
    assert first.attendance_id != second.attendance_id
    assert len(await store.attendance_for_meeting(meeting.id)) == 2


async def test_admit_to_unknown_meeting(store):
    with pytest.raises(MeetingNotFound):
        await admit(store, "nope", "alice")


@pytest.mark.parametrize("status", [MeetingStatus.SCHEDULED, MeetingStatus.ENDED])
async def test_admit_to_a_meeting_that_is_not_live(store, status):
    meeting = await store.create_meeting(title="t", host_emp_id="h")
    if status is MeetingStatus.ENDED:
        await store.transition(meeting.id, MeetingStatus.ENDED)
    with pytest.raises(MeetingNotLive) as info:
        await admit(store, meeting.id, "alice")
    assert info.value.status is status
    assert await store.attendance_for_meeting(meeting.id) == []


async def test_admit_banned_employee(store):
    meeting = await live_meeting(store)
    await admit(store, meeting.id, "troll")
    await store.ban(meeting_id=meeting.id, emp_id="troll", by="boss", reason="spam", at=T0)
    with pytest.raises(EmployeeBanned):
        await admit(store, meeting.id, "troll")
    assert len(await store.attendance_for_meeting(meeting.id)) == 1


async def test_ban_is_per_meeting(store):
    first, second = await live_meeting(store, "a"), await live_meeting(store, "b")
    await store.ban(meeting_id=first.id, emp_id="troll", by=None, reason=None, at=T0)
    await admit(store, second.id, "troll")
    with pytest.raises(EmployeeBanned):
        await admit(store, first.id, "troll")


@pytest.mark.parametrize(
    ("token_role", "override", "effective"),
    [
        (Role.PARTICIPANT, Role.COHOST, Role.COHOST),
        (Role.COHOST, Role.PARTICIPANT, Role.PARTICIPANT),
        (Role.PARTICIPANT, None, Role.PARTICIPANT),
        (Role.COHOST, None, Role.COHOST),
        (Role.HOST, Role.PARTICIPANT, Role.HOST),
        (Role.HOST, Role.COHOST, Role.HOST),
    ],
)
async def test_role_override_wins_except_for_host(store, token_role, override, effective):
    meeting = await live_meeting(store)
    await admit(store, meeting.id, "alice", token_role)
    await store.set_role_override(meeting_id=meeting.id, emp_id="alice", role=override)
    admission = await admit(store, meeting.id, "alice", token_role)
    assert admission.role is effective
    rows = await store.attendance_for_meeting(meeting.id)
    assert rows[-1].role is effective


async def test_clearing_an_override_restores_the_token_role(store):
    meeting = await live_meeting(store)
    await admit(store, meeting.id, "alice")
    await store.set_role_override(meeting_id=meeting.id, emp_id="alice", role=Role.COHOST)
    await store.set_role_override(meeting_id=meeting.id, emp_id="alice", role=None)
    assert (await admit(store, meeting.id, "alice")).role is Role.PARTICIPANT


async def test_override_for_someone_who_never_joined_is_harmless(store):
    meeting = await live_meeting(store)
    await store.set_role_override(meeting_id=meeting.id, emp_id="ghost", role=Role.COHOST)
    assert (await admit(store, meeting.id, "ghost")).role is Role.PARTICIPANT


# Leaves


async def test_record_leave_computes_the_duration(store):
    meeting = await live_meeting(store)
    admission = await admit(store, meeting.id, "alice")
    left = T0 + dt.timedelta(minutes=5, seconds=30)
    await store.record_leaves([Leave(admission.attendance_id, left, "left")])
    (row,) = await store.attendance_for_meeting(meeting.id)
    assert (row.left_at, row.duration_seconds, row.leave_reason) == (left, 330.0, "left")


async def test_record_leaves_is_idempotent(store):
    meeting = await live_meeting(store)
    admission = await admit(store, meeting.id, "alice")
    first = Leave(admission.attendance_id, T0 + dt.timedelta(seconds=10), "kicked")
    await store.record_leaves([first])
    await store.record_leaves([first])
    later = Leave(admission.attendance_id, T0 + dt.timedelta(hours=1), "disconnected")
    await store.record_leaves([later])
    (row,) = await store.attendance_for_meeting(meeting.id)
    assert (row.left_at, row.duration_seconds, row.leave_reason) == (first.left_at, 10.0, "kicked")


async def test_record_leaves_in_bulk_ignores_unknown_rows(store):
    meeting = await live_meeting(store)
    ids = [(await admit(store, meeting.id, f"e{i}")).attendance_id for i in range(4)]
    await store.record_leaves([])
    await store.record_leaves(
        [Leave(i, T0 + dt.timedelta(seconds=n), "left") for n, i in enumerate(ids[:3])]
        + [Leave(999_999, T0, "left")]
    )
    rows = {r.id: r for r in await store.attendance_for_meeting(meeting.id)}
    assert [rows[i].duration_seconds for i in ids] == [0.0, 1.0, 2.0, None]


async def test_leave_before_join_has_zero_duration(store):
    meeting = await live_meeting(store)
    admission = await admit(store, meeting.id, "alice")
    await store.record_leaves([Leave(admission.attendance_id, T0 - dt.timedelta(seconds=5), "x")])
    (row,) = await store.attendance_for_meeting(meeting.id)
    assert row.duration_seconds == 0.0


async def test_ending_a_meeting_closes_open_rows_only(store):
    meeting = await live_meeting(store)
    gone = await admit(store, meeting.id, "gone")
    await admit(store, meeting.id, "alice")
    await admit(store, meeting.id, "bob")
    left = T0 + dt.timedelta(seconds=1)
    await store.record_leaves([Leave(gone.attendance_id, left, "left")])
    other = await live_meeting(store, "other")
    await admit(store, other.id, "carol")

    ended = await store.transition(meeting.id, MeetingStatus.ENDED)
    rows = {r.emp_id: r for r in await store.attendance_for_meeting(meeting.id)}
    assert (rows["gone"].left_at, rows["gone"].leave_reason) == (left, "left")
    for emp in ("alice", "bob"):
        assert rows[emp].left_at == ended.ended_at
        assert rows[emp].leave_reason == "meeting-ended"
        assert rows[emp].duration_seconds is not None and rows[emp].duration_seconds > 0
    (carol,) = await store.attendance_for_meeting(other.id)
    assert carol.left_at is None  # another meeting's rows are untouched

    # A leave recorded after the meeting ended does not overwrite it.
    await store.record_leaves([Leave(rows["alice"].id, T0, "disconnected")])
    again = {r.emp_id: r for r in await store.attendance_for_meeting(meeting.id)}
    assert again["alice"].leave_reason == "meeting-ended"


# Bans


async def test_ban_unban_and_list(store):
    meeting = await live_meeting(store)
    await admit(store, meeting.id, "troll")
    await admit(store, meeting.id, "spammer")
    await store.ban(meeting_id=meeting.id, emp_id="troll", by="boss", reason="rude", at=T0)
    later = T0 + dt.timedelta(minutes=1)
    await store.ban(meeting_id=meeting.id, emp_id="spammer", by=None, reason=None, at=later)
    bans = await store.list_bans(meeting.id)
    assert [(b.emp_id, b.banned_by, b.reason, b.banned_at) for b in bans] == [
        ("troll", "boss", "rude", T0),
        ("spammer", None, None, later),
    ]
    assert all(b.meeting_id == meeting.id for b in bans)

    assert await store.unban(meeting_id=meeting.id, emp_id="troll") is True
    assert await store.unban(meeting_id=meeting.id, emp_id="troll") is False
    assert [b.emp_id for b in await store.list_bans(meeting.id)] == ["spammer"]
    await admit(store, meeting.id, "troll")


async def test_ban_someone_who_never_joined(store):
    meeting = await live_meeting(store)
    await store.ban(meeting_id=meeting.id, emp_id="stranger", by="boss", reason="r", at=T0)
    assert [b.emp_id for b in await store.list_bans(meeting.id)] == ["stranger"]
    with pytest.raises(EmployeeBanned):
        await admit(store, meeting.id, "stranger")
    assert await store.unban(meeting_id=meeting.id, emp_id="stranger") is True
    assert (await admit(store, meeting.id, "stranger")).role is Role.PARTICIPANT


async def test_ban_twice_keeps_one_ban_with_the_latest_details(store):
    meeting = await live_meeting(store)
    await store.ban(meeting_id=meeting.id, emp_id="x", by="a", reason="one", at=T0)
    await store.ban(meeting_id=meeting.id, emp_id="x", by="b", reason="two", at=T0)
    (ban,) = await store.list_bans(meeting.id)
    assert (ban.banned_by, ban.reason) == ("b", "two")


async def test_ban_in_unknown_meeting(store):
    with pytest.raises(MeetingNotFound):
        await store.ban(meeting_id="nope", emp_id="x", by=None, reason=None, at=T0)


async def test_unban_someone_never_banned(store):
    meeting = await live_meeting(store)
    await admit(store, meeting.id, "alice")
    assert await store.unban(meeting_id=meeting.id, emp_id="alice") is False
    assert await store.unban(meeting_id=meeting.id, emp_id="ghost") is False
    assert await store.list_bans(meeting.id) == []


async def test_ban_keeps_a_role_override(store):
    meeting = await live_meeting(store)
    await admit(store, meeting.id, "alice")
    await store.set_role_override(meeting_id=meeting.id, emp_id="alice", role=Role.COHOST)
    await store.ban(meeting_id=meeting.id, emp_id="alice", by=None, reason=None, at=T0)
    await store.unban(meeting_id=meeting.id, emp_id="alice")
    assert (await admit(store, meeting.id, "alice")).role is Role.COHOST


# Attendance by employee


async def test_attendance_for_employee_across_meetings_and_dates(store):
    first, second = await live_meeting(store, "a"), await live_meeting(store, "b")
    days = [T0 + dt.timedelta(days=d) for d in range(4)]
    for day in days:
        await admit(store, first.id, "alice", at=day)
    await admit(store, second.id, "alice", at=days[1] + dt.timedelta(hours=1))
    await admit(store, first.id, "bob", at=days[1])

    everything = await store.attendance_for_employee("alice")
    assert len(everything) == 5
    assert [r.joined_at for r in everything] == sorted(r.joined_at for r in everything)
    assert {r.emp_id for r in everything} == {"alice"}

    # since is inclusive, until exclusive.
    window = await store.attendance_for_employee("alice", since=days[1], until=days[3])
    assert [(r.meeting_id, r.joined_at) for r in window] == [
        (first.id, days[1]),
        (second.id, days[1] + dt.timedelta(hours=1)),
        (first.id, days[2]),
    ]
    assert len(await store.attendance_for_employee("alice", since=days[3])) == 1
    assert len(await store.attendance_for_employee("alice", until=days[1])) == 1
    assert await store.attendance_for_employee("nobody") == []


async def test_attendance_date_range_in_another_time_zone(store):
    meeting = await live_meeting(store)
    await admit(store, meeting.id, "alice", at=T0)  # 09:00 UTC
    plus_five = dt.timezone(dt.timedelta(hours=5))
    # 13:00+05:00 is 08:00 UTC, 15:00+05:00 is 10:00 UTC: the row is inside.
    since = dt.datetime(2024, 3, 1, 13, 0, tzinfo=plus_five)
    until = dt.datetime(2024, 3, 1, 15, 0, tzinfo=plus_five)
    assert len(await store.attendance_for_employee("alice", since=since, until=until)) == 1
    # 09:30+05:00 is 04:30 UTC, before the row.
    assert (
        await store.attendance_for_employee(
            "alice", until=since - dt.timedelta(hours=3, minutes=30)
        )
        == []
    )


async def test_many_concurrent_admissions(store):
    meeting = await live_meeting(store)
    ids: list[int] = []

    async def join(i: int) -> None:
        ids.append((await admit(store, meeting.id, f"e{i}")).attendance_id)

    async with trio.open_nursery() as nursery:
        for i in range(25):
            nursery.start_soon(join, i)
    assert len(set(ids)) == 25
    assert len(await store.attendance_for_meeting(meeting.id)) == 25
