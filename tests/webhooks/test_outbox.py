"""The transactional outbox on SQLite and PostgreSQL: events are written in the
transaction of their change (or not at all), match their published models, and are
claimed under leases, one meeting's events in order."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
from collections.abc import AsyncIterator

import pytest
import sqlalchemy as sa
import trio
import trio.testing

from meshroom.roles import Role
from meshroom.store import Meeting, MeetingStatus, SqlStore
from meshroom.store.base import (
    AttemptOutcome,
    AttemptResult,
    DeliveryStatus,
    EmployeeBanned,
    Leave,
    WebhookEventType,
)
from meshroom.webhooks import payloads

from .helpers import endpoint

T0 = dt.datetime(2026, 3, 2, 9, 0, tzinfo=dt.UTC)
LEASE = dt.timedelta(seconds=30)


@pytest.fixture
async def store(db_url: str) -> AsyncIterator[SqlStore]:
    store = SqlStore(db_url, pool_size=5)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


async def live(store: SqlStore, title: str = "Payroll") -> Meeting:
    meeting = await store.create_meeting(title=title, host_emp_id="alice")
    return await store.transition(meeting.id, MeetingStatus.LIVE)


async def admit(store: SqlStore, meeting: Meeting, emp_id: str, at: dt.datetime = T0) -> int:
    admission = await store.admit(
        meeting_id=meeting.id,
        emp_id=emp_id,
        display_name=emp_id.title(),
        role=Role.PARTICIPANT,
        at=at,
    )
    return admission.attendance_id


def event_rows(store: SqlStore) -> list[tuple[int, str, str]]:
    with store.engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT seq, type, meeting_id FROM webhook_events ORDER BY seq")
        )
        return [tuple(row) for row in rows]  # type: ignore[misc]


async def bodies(store: SqlStore) -> list[payloads._Event]:
    deliveries, _ = await store.list_webhook_deliveries(limit=1000)
    return [payloads.parse(payloads.body(d)) for d in reversed(deliveries)]


async def test_without_an_enabled_endpoint_nothing_is_written(store):
    await store.put_webhook_endpoint(endpoint("http://127.0.0.1:9/", enabled=False))
    meeting = await live(store)
    row = await admit(store, meeting, "bob")
    await store.record_leaves([Leave(row, T0, "left")])
    await store.transition(meeting.id, MeetingStatus.ENDED)
    assert event_rows(store) == []


async def test_every_event_type_is_written_as_its_published_model(store):
    await store.put_webhook_endpoint(endpoint("http://127.0.0.1:9/"))
    meeting = await live(store)
    bob = await admit(store, meeting, "bob", T0)
    await admit(store, meeting, "cy", T0)
    await store.set_role_override(
        meeting_id=meeting.id, emp_id="cy", role=Role.COHOST, reason="promote", by="alice"
    )
    await store.record_leaves([Leave(bob, T0 + dt.timedelta(seconds=90), "kicked")])
    await store.ban(meeting_id=meeting.id, emp_id="bob", by="alice", reason="spam", at=T0)
    await store.unban(meeting_id=meeting.id, emp_id="bob", by="api")
    ended = await store.transition(meeting.id, MeetingStatus.ENDED, by="alice")

    events = await bodies(store)
    assert [e.type for e in events] == [
        "meeting.started",
        "participant.joined",
        "participant.joined",
        "participant.role_changed",
        "participant.left",
        "attendance.closed",
        "participant.banned",
        "participant.unbanned",
        "participant.left",  # cy, still present when the meeting ended
        "attendance.closed",
        "meeting.ended",
    ]
    assert {e.type for e in events} == {t.value for t in WebhookEventType}
    started, joined, _, role, left, closed, banned, unbanned, cy_left, cy_closed, end = events
    assert started.data.meeting_id == meeting.id and started.data.status is MeetingStatus.LIVE
    assert started.timestamp == ended.started_at
    assert (joined.data.emp_id, joined.data.display_name, joined.data.role) == (
        "bob",
        "Bob",
        Role.PARTICIPANT,
    )
    assert joined.data.attendance_id == bob and joined.data.joined_at == T0
    assert (role.data.role, role.data.previous_role) == (Role.COHOST, Role.PARTICIPANT)
    assert (role.data.reason, role.data.by) == ("promote", "alice")
    assert (left.data.reason, left.data.duration_seconds) == ("kicked", 90.0)
    assert left.data.left_at == T0 + dt.timedelta(seconds=90) == left.timestamp
    assert closed.data.leave_reason == "kicked" and closed.data.duration_seconds == 90.0
    assert closed.data.closed_by_recovery is False and closed.data.attendance_id == bob
    assert (banned.data.emp_id, banned.data.by, banned.data.reason) == ("bob", "alice", "spam")
    assert (unbanned.data.emp_id, unbanned.data.by) == ("bob", "api")
    assert cy_left.data.emp_id == "cy" and cy_left.data.reason == "meeting-ended"
    assert cy_closed.data.role is Role.PARTICIPANT  # the row's role: cy joined a participant
    assert end.data.by == "alice" and end.data.ended_at == ended.ended_at
    assert end.data.status is MeetingStatus.ENDED


async def test_no_event_for_what_did_not_change(store):
    """A renewed ban, an unban of nobody, a role already held, a second leave, a refused
    join: no state changed, so no event."""
    await store.put_webhook_endpoint(endpoint("http://127.0.0.1:9/"))
    meeting = await live(store)
    row = await admit(store, meeting, "bob")
    before = len(event_rows(store))
    await store.ban(meeting_id=meeting.id, emp_id="eve", by="alice", reason=None, at=T0)
    await store.ban(meeting_id=meeting.id, emp_id="eve", by="alice", reason="again", at=T0)
    assert await store.unban(meeting_id=meeting.id, emp_id="zed") is False
    await store.set_role_override(meeting_id=meeting.id, emp_id="bob", role=Role.PARTICIPANT)
    await store.set_role_override(meeting_id=meeting.id, emp_id="ghost", role=Role.COHOST)
    assert await store.record_leaves([Leave(row, T0, "left")]) == 1
    assert await store.record_leaves([Leave(row, T0, "left")]) == 0
    with pytest.raises(EmployeeBanned):
        await admit(store, meeting, "eve")
    types = [t for _, t, _ in event_rows(store)[before:]]
    assert types == ["participant.banned", "participant.left", "attendance.closed"]


@pytest.mark.parametrize("failing", ["admit", "record_leaves", "transition", "ban", "recover"])
async def test_an_event_and_its_change_commit_together_or_not_at_all(store, monkeypatch, failing):
    """The events are written in the change's own transaction: if writing them fails,
    the change is rolled back too (and the other way round, nothing is half done)."""
    await store.put_webhook_endpoint(endpoint("http://127.0.0.1:9/"))
    meeting = await live(store)
    row = await admit(store, meeting, "bob")
    before_events = event_rows(store)
    before_rows = await store.attendance_for_meeting(meeting.id)
    original = SqlStore._write_events

    def write_then_fail(self, conn, targets, events):  # type: ignore[no-untyped-def]
        original(self, conn, targets, events)
        raise RuntimeError("the disk filled up right after the outbox insert")

    monkeypatch.setattr(SqlStore, "_write_events", write_then_fail)
    with pytest.raises(RuntimeError, match="disk filled up"):
        if failing == "admit":
            await admit(store, meeting, "cy")
        elif failing == "record_leaves":
            await store.record_leaves([Leave(row, T0, "left")])
        elif failing == "transition":
            await store.transition(meeting.id, MeetingStatus.ENDED)
        elif failing == "ban":
            await store.ban(meeting_id=meeting.id, emp_id="bob", by=None, reason=None, at=T0)
        else:
            await store.recover_open_attendance()
    monkeypatch.undo()
    assert event_rows(store) == before_events
    assert await store.attendance_for_meeting(meeting.id) == before_rows
    assert (await store.get_meeting(meeting.id)).status is MeetingStatus.LIVE  # type: ignore[union-attr]
    assert await store.list_bans(meeting.id) == []


async def test_crash_recovery_closes_rows_with_events_marked_as_recovered(store):
    await store.put_webhook_endpoint(endpoint("http://127.0.0.1:9/"))
    meeting = await live(store)
    row = await admit(store, meeting, "bob", T0)
    await store.touch_attendance([row], T0 + dt.timedelta(minutes=5))
    assert await store.recover_open_attendance() == 1
    left, closed = (await bodies(store))[-2:]
    assert left.type == "participant.left" and left.data.reason == "server-crash"
    assert closed.type == "attendance.closed"
    assert closed.data.closed_by_recovery is True
    assert closed.data.left_at == closed.data.last_seen_at == T0 + dt.timedelta(minutes=5)
    assert closed.data.duration_seconds == 300.0


async def test_claims_lease_the_head_of_each_meeting_up_to_the_limit(store):
    await store.put_webhook_endpoint(endpoint("http://127.0.0.1:9/", "a"))
    await store.put_webhook_endpoint(endpoint("http://127.0.0.1:9/", "b"))
    meetings = [await live(store, f"m{i}") for i in range(3)]
    for meeting in meetings:
        await admit(store, meeting, "bob")
    now = dt.datetime.now(dt.UTC)

    claim = await store.claim_webhook_deliveries(
        limit_per_endpoint=2, in_flight={"b": 1}, now=now, lease=LEASE
    )
    claimed = [(c.delivery.endpoint_id, c.delivery.event_type.value) for c in claim.deliveries]
    # Each meeting's first event only (meeting.started), two for a, one for b (one in flight).
    assert claimed == [("a", "meeting.started")] * 2 + [("b", "meeting.started")]
    assert all(c.delivery.attempts == 1 for c in claim.deliveries)
    assert claim.next_due is not None and claim.next_due > now  # the leases' end
    assert {c.url for c in claim.deliveries} == {"http://127.0.0.1:9/"}

    # Leased ones are not claimed again; the third meeting's head is, for a.
    again = await store.claim_webhook_deliveries(
        limit_per_endpoint=3, in_flight={}, now=now, lease=LEASE
    )
    heads = {(c.delivery.endpoint_id, c.delivery.meeting_id) for c in again.deliveries}
    first = {(c.delivery.endpoint_id, c.delivery.meeting_id) for c in claim.deliveries}
    assert heads.isdisjoint(first)
    assert {c.delivery.event_type.value for c in again.deliveries} == {"meeting.started"}

    # Delivering a head lets that meeting's next event go; a failed one holds it back.
    done, failed = claim.deliveries[0], claim.deliveries[1]
    assert await store.finish_webhook_delivery(
        AttemptResult(done.delivery.id, done.lease_token, AttemptOutcome.DELIVERED, now, None, 200)
    )
    retry_at = now + dt.timedelta(minutes=1)
    assert await store.finish_webhook_delivery(
        AttemptResult(
            failed.delivery.id, failed.lease_token, AttemptOutcome.RETRY, now, retry_at, 500, "no"
        )
    )
    after = await store.claim_webhook_deliveries(
        limit_per_endpoint=5, in_flight={}, now=now, lease=LEASE
    )
    assert [(c.delivery.meeting_id, c.delivery.event_type.value) for c in after.deliveries] == [
        (done.delivery.meeting_id, "participant.joined")
    ]
    assert after.next_due is not None and after.next_due <= retry_at

    # A lease that ran out (its worker died) is claimed again: another attempt, counted.
    later = now + LEASE + dt.timedelta(seconds=1)
    orphaned = await store.claim_webhook_deliveries(
        limit_per_endpoint=5, in_flight={}, now=later, lease=LEASE
    )
    retaken = {c.delivery.id: c for c in orphaned.deliveries}
    leased_before = claim.deliveries[2]
    assert retaken[leased_before.delivery.id].delivery.attempts == 2
    # The dead worker's late answer does not overwrite the new attempt's lease.
    assert not await store.finish_webhook_delivery(
        AttemptResult(
            leased_before.delivery.id, leased_before.lease_token, AttemptOutcome.DEAD, later
        )
    )
    (row,), _ = await store.list_webhook_deliveries(delivery_ids=[leased_before.delivery.id])
    assert row.status is DeliveryStatus.PENDING


async def test_released_retried_and_pruned(store):
    await store.put_webhook_endpoint(endpoint("http://127.0.0.1:9/"))
    await live(store)
    now = dt.datetime.now(dt.UTC)
    (claimed,) = (
        await store.claim_webhook_deliveries(
            limit_per_endpoint=1, in_flight={}, now=now, lease=LEASE
        )
    ).deliveries
    # Shutdown mid-attempt: handed back, the attempt not counted, claimable again now.
    assert await store.finish_webhook_delivery(
        AttemptResult(claimed.delivery.id, claimed.lease_token, AttemptOutcome.RELEASED, now)
    )
    (again,) = (
        await store.claim_webhook_deliveries(
            limit_per_endpoint=1, in_flight={}, now=now, lease=LEASE
        )
    ).deliveries
    assert again.delivery.id == claimed.delivery.id and again.delivery.attempts == 1
    # A delivery being attempted is not retried under its worker's feet.
    assert await store.retry_webhook_deliveries(delivery_ids=[again.delivery.id], now=now) == 0
    assert await store.finish_webhook_delivery(
        AttemptResult(again.delivery.id, again.lease_token, AttemptOutcome.DEAD, now, None, 410)
    )
    dead, total = await store.list_webhook_deliveries(status=DeliveryStatus.DEAD)
    assert total == 1 and dead[0].last_status_code == 410
    assert await store.retry_webhook_deliveries(now=now) == 1  # every dead one
    (pending,), _ = await store.list_webhook_deliveries()
    assert pending.status is DeliveryStatus.PENDING and pending.attempts == 0
    (taken,) = (
        await store.claim_webhook_deliveries(
            limit_per_endpoint=1, in_flight={}, now=now, lease=LEASE
        )
    ).deliveries
    assert await store.finish_webhook_delivery(
        AttemptResult(taken.delivery.id, taken.lease_token, AttemptOutcome.DELIVERED, now)
    )
    assert await store.prune_webhook_deliveries(delivered_before=now) == 0  # too recent
    assert await store.prune_webhook_deliveries(delivered_before=now + dt.timedelta(seconds=1)) == 1
    assert await store.list_webhook_deliveries() == ([], 0)
    assert event_rows(store) == []  # the event went with its last delivery


async def test_deleting_an_endpoint_deletes_its_deliveries(store):
    await store.put_webhook_endpoint(endpoint("http://127.0.0.1:9/", "keep"))
    await store.put_webhook_endpoint(endpoint("http://127.0.0.1:9/", "drop"))
    await live(store)
    assert await store.delete_webhook_endpoint("drop") is True
    assert await store.delete_webhook_endpoint("drop") is False
    deliveries, _ = await store.list_webhook_deliveries()
    assert [d.endpoint_id for d in deliveries] == ["keep"]
    assert [e.id for e in await store.list_webhook_endpoints()] == ["keep"]


async def test_an_endpoint_round_trips(store):
    original = dataclasses.replace(
        endpoint(
            "https://hooks.example.com/x?y=1",
            event_types=[WebhookEventType.MEETING_ENDED, WebhookEventType.ATTENDANCE_CLOSED],
        ),
        description="payroll",
    )
    await store.put_webhook_endpoint(original)
    assert await store.list_webhook_endpoints() == [original]
    changed = dataclasses.replace(original, enabled=False, event_types=None)
    await store.put_webhook_endpoint(changed)
    assert await store.list_webhook_endpoints() == [changed]
    assert "whsec" not in repr(changed)  # secrets stay out of logs


async def test_concurrent_joins_of_one_meeting_become_visible_in_seq_order(store):
    """What per-meeting order rests on: a meeting's events commit in seq order, so a
    reader never sees an event while an earlier one of the same meeting is still
    uncommitted (on PostgreSQL, where joins run in parallel, the meeting row lock does it)."""
    await store.put_webhook_endpoint(endpoint("http://127.0.0.1:9/"))
    meeting = await live(store)
    snapshots: list[list[int]] = []
    done = trio.Event()

    def seqs() -> list[int]:
        return [seq for seq, _, mid in event_rows(store) if mid == meeting.id]

    async def watch() -> None:
        while not done.is_set():
            snapshots.append(await trio.to_thread.run_sync(seqs))

    async def joins() -> None:
        async with trio.open_nursery() as nursery:
            for i in range(40):
                nursery.start_soon(admit, store, meeting, f"emp{i:02}")
        done.set()

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch)
            nursery.start_soon(joins)
    final = seqs()
    assert len(final) == 41
    for seen in snapshots:
        assert seen == final[: len(seen)], "a later event was visible before an earlier one"


async def test_a_batch_of_joins_writes_its_events_in_its_transaction_in_row_order(store):
    """Joins of several meetings written as one batch (group commit): one participant.joined
    per admitted join, none for a refused one, numbered in the order of the rows."""
    await store.put_webhook_endpoint(endpoint("http://127.0.0.1:9/"))
    first, second = await live(store, "First"), await live(store, "Second")
    await store.ban(meeting_id=first.id, emp_id="eve", by="alice", reason=None, at=T0)
    before = len(event_rows(store))
    joined: dict[str, int] = {}
    held = [object() for _ in range(int(store._limiter.total_tokens))]
    for holder in held:  # every worker busy: the joins below queue up into one batch
        await store._limiter.acquire_on_behalf_of(holder)

    async def join(meeting: Meeting, emp_id: str) -> None:
        with contextlib.suppress(EmployeeBanned):
            joined[emp_id] = await admit(store, meeting, emp_id)

    async with trio.open_nursery() as nursery:
        for i, (meeting, emp_id) in enumerate(
            [(first, "ann"), (second, "bob"), (first, "eve"), (first, "cy"), (second, "dee")]
        ):
            nursery.start_soon(join, meeting, emp_id, name=str(i))
            await trio.testing.wait_all_tasks_blocked()
        for holder in held:
            store._limiter.release_on_behalf_of(holder)
    assert sorted(joined) == ["ann", "bob", "cy", "dee"]
    rows = event_rows(store)[before:]
    assert [t for _, t, _ in rows] == ["participant.joined"] * 4
    events = (await bodies(store))[-4:]
    assert [e.data.emp_id for e in events] == ["ann", "bob", "cy", "dee"]
    assert [e.data.attendance_id for e in events] == sorted(joined.values())
    assert [mid for _, _, mid in rows] == [first.id, second.id, first.id, second.id]


async def test_two_workers_never_claim_the_same_delivery(db_url):
    """Two servers (or a server and a lingering one) on one database share the work."""
    first, second = SqlStore(db_url, pool_size=5), SqlStore(db_url, pool_size=5)
    await first.open()
    await second.open()
    try:
        await first.put_webhook_endpoint(endpoint("http://127.0.0.1:9/"))
        for i in range(20):
            await live(first, f"m{i}")
        now = dt.datetime.now(dt.UTC)
        claims: list[set[int]] = []

        async def claim(store: SqlStore) -> None:
            result = await store.claim_webhook_deliveries(
                limit_per_endpoint=20, in_flight={}, now=now, lease=LEASE
            )
            claims.append({c.delivery.id for c in result.deliveries})

        async with trio.open_nursery() as nursery:
            for store in (first, second, first, second):
                nursery.start_soon(claim, store)
        assert sum(len(c) for c in claims) == 20
        assert len(set().union(*claims)) == 20
    finally:
        await first.close()
        await second.close()
