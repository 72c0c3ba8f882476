"""Group commit of admissions, on SQLite and PostgreSQL: joins that wait together are
written in one transaction, and each still gets its own answer, its own row, and every
guarantee a join had when it was a transaction of its own."""

from __future__ import annotations

import collections
import datetime as dt
import random
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import sqlalchemy as sa
import trio
import trio.testing

from meshroom.roles import Role
from meshroom.store import Meeting, MeetingStatus, SqlStore
from meshroom.store.base import (
    Admission,
    EmployeeBanned,
    MeetingNotFound,
    MeetingNotLive,
    StoreUnavailable,
)

T0 = dt.datetime(2026, 12, 3, 9, 0, tzinfo=dt.UTC)


async def meeting(store: SqlStore, status: MeetingStatus = MeetingStatus.LIVE) -> Meeting:
    created = await store.create_meeting(title="Payroll", host_emp_id="host")
    if status is MeetingStatus.SCHEDULED:
        return created
    live = await store.transition(created.id, MeetingStatus.LIVE)
    if status is MeetingStatus.LIVE:
        return live
    return await store.transition(created.id, MeetingStatus.ENDED)


def recording_batches(store: SqlStore) -> list[int]:
    """Patch the store to note the size of every batch it writes."""
    sizes: list[int] = []
    write = store._admit_batch

    def recorded(batch: Any) -> Any:
        sizes.append(len(batch))
        return write(batch)

    store._admit_batch = recorded  # type: ignore[method-assign]
    return sizes


@asynccontextmanager
async def workers_held(store: SqlStore) -> AsyncIterator[None]:
    """Every database worker busy: admits queue up until the block ends."""
    holders = [object() for _ in range(int(store._limiter.total_tokens))]
    for holder in holders:
        await store._limiter.acquire_on_behalf_of(holder)
    try:
        yield
    finally:
        for holder in holders:
            store._limiter.release_on_behalf_of(holder)


class Outcomes:
    """Admit calls started together, and what each got."""

    def __init__(self) -> None:
        self.results: dict[str, Admission | BaseException] = {}

    async def start(
        self,
        nursery: trio.Nursery,
        store: SqlStore,
        name: str,
        meeting_id: str,
        emp_id: str,
        role: Role = Role.PARTICIPANT,
    ) -> None:
        async def call() -> None:
            try:
                self.results[name] = await store.admit(
                    meeting_id=meeting_id,
                    emp_id=emp_id,
                    display_name=f"{emp_id.title()} ({name})",
                    role=role,
                    at=T0,
                )
            except Exception as exc:
                self.results[name] = exc

        nursery.start_soon(call, name=name)
        # Queued in the order started (Trio does not promise to run new tasks in order).
        await trio.testing.wait_all_tasks_blocked()


async def open_rows(store: SqlStore, meeting_id: str) -> list[Any]:
    return [r for r in await store.attendance_for_meeting(meeting_id) if r.left_at is None]


async def test_joins_waiting_together_are_one_transaction_with_answers_of_their_own(store):
    """Several meetings, refusals of every kind, a role override, the same employee twice:
    one batch, and each join gets what it would have got alone."""
    live, other = await meeting(store), await meeting(store)
    scheduled = await meeting(store, MeetingStatus.SCHEDULED)
    ended = await meeting(store, MeetingStatus.ENDED)
    await store.ban(meeting_id=live.id, emp_id="eve", by="host", reason=None, at=T0)
    bobs_first = await store.admit(
        meeting_id=live.id, emp_id="bob", display_name="Bob", role=Role.PARTICIPANT, at=T0
    )
    await store.set_role_override(meeting_id=live.id, emp_id="bob", role=Role.COHOST)
    sizes = recording_batches(store)
    joins = Outcomes()
    async with trio.open_nursery() as nursery, workers_held(store):
        await joins.start(nursery, store, "bob", live.id, "bob")
        await joins.start(nursery, store, "eve", live.id, "eve")
        await joins.start(nursery, store, "cy-1", live.id, "cy")
        await joins.start(nursery, store, "cy-2", live.id, "cy")
        await joins.start(nursery, store, "cy-other", other.id, "cy")
        await joins.start(nursery, store, "dee-host", other.id, "dee", Role.HOST)
        await joins.start(nursery, store, "scheduled", scheduled.id, "cy")
        await joins.start(nursery, store, "ended", ended.id, "cy")
        await joins.start(nursery, store, "missing", "no-such-meeting", "cy")
        await trio.testing.wait_all_tasks_blocked()
    assert sizes == [9]
    r = joins.results
    assert isinstance(r["eve"], EmployeeBanned)
    assert isinstance(r["scheduled"], MeetingNotLive)
    assert r["scheduled"].status is MeetingStatus.SCHEDULED
    assert isinstance(r["ended"], MeetingNotLive) and r["ended"].status is MeetingStatus.ENDED
    assert isinstance(r["missing"], MeetingNotFound)
    admitted = {name: a for name, a in r.items() if isinstance(a, Admission)}
    assert set(admitted) == {"bob", "cy-1", "cy-2", "cy-other", "dee-host"}
    assert admitted["bob"].role is Role.COHOST  # the host's override, not the token's role
    assert admitted["dee-host"].role is Role.HOST
    assert admitted["cy-1"].meeting.id == live.id and admitted["cy-other"].meeting.id == other.id
    # Exactly one row per admitted join, as that join described it.
    rows = {
        row.id: row
        for m in (live, other)
        for row in await store.attendance_for_meeting(m.id)
        if row.id != bobs_first.attendance_id
    }
    assert sorted(rows) == sorted(a.attendance_id for a in admitted.values())
    for name, admission in admitted.items():
        row = rows[admission.attendance_id]
        assert row.meeting_id == admission.meeting.id and row.left_at is None
        assert row.role is admission.role and row.joined_at == T0
        assert row.display_name.endswith(f"({name})")
    with store.engine.connect() as conn:
        people = dict(
            conn.execute(
                sa.text("SELECT emp_id, display_name FROM participants WHERE meeting_id = :m"),
                {"m": live.id},
            ).all()
        )
    assert people["cy"] == "Cy (cy-2)"  # the later of two joins in one batch wins
    assert people["bob"] == "Bob (bob)"


async def test_a_failed_transaction_fails_every_join_of_its_batch(store, monkeypatch):
    live = await meeting(store)

    def database_away(self: SqlStore, batch: Any) -> Any:
        raise sa.exc.OperationalError("SELECT", {}, Exception("connection refused"))

    monkeypatch.setattr(SqlStore, "_admit_batch", database_away)
    joins = Outcomes()
    async with trio.open_nursery() as nursery, workers_held(store):
        for name in ("ann", "bob", "cy"):
            await joins.start(nursery, store, name, live.id, name)
        await trio.testing.wait_all_tasks_blocked()
    assert all(isinstance(r, StoreUnavailable) for r in joins.results.values()), joins.results
    monkeypatch.undo()
    assert await store.attendance_for_meeting(live.id) == []
    # The next batch goes through as if nothing happened.
    admission = await store.admit(
        meeting_id=live.id, emp_id="ann", display_name="Ann", role=Role.PARTICIPANT, at=T0
    )
    assert [r.id for r in await store.attendance_for_meeting(live.id)] == [admission.attendance_id]


async def test_a_join_cancelled_before_its_batch_is_taken_writes_nothing(store):
    live = await meeting(store)
    joins = Outcomes()
    async with trio.open_nursery() as nursery, workers_held(store):
        # "ann" holds the admission slot (waiting for a worker), "bob" waits behind her.
        ann_scope = trio.CancelScope()
        nursery.start_soon(_cancellable_admit, store, live.id, "ann", ann_scope, joins.results)
        await trio.testing.wait_all_tasks_blocked()
        await joins.start(nursery, store, "bob", live.id, "bob")
        await joins.start(nursery, store, "cy", live.id, "cy")
        await trio.testing.wait_all_tasks_blocked()
        ann_scope.cancel()  # the writer goes: the slot passes on to bob
        await trio.testing.wait_all_tasks_blocked()
        assert [r.emp_id for r in store._admit_queue] == ["bob", "cy"]
    assert "ann" not in joins.results
    assert {n for n, r in joins.results.items() if isinstance(r, Admission)} == {"bob", "cy"}
    assert sorted(r.emp_id for r in await store.attendance_for_meeting(live.id)) == ["bob", "cy"]
    assert store._admit_queue == [] and not store._admit_writing


async def _cancellable_admit(
    store: SqlStore,
    meeting_id: str,
    emp_id: str,
    scope: trio.CancelScope,
    results: dict[str, Any],
) -> None:
    with scope:
        results[emp_id] = await store.admit(
            meeting_id=meeting_id, emp_id=emp_id, display_name=emp_id, role=Role.PARTICIPANT, at=T0
        )


def blocking_batches(store: SqlStore) -> tuple[threading.Event, threading.Event]:
    """Patch the store so a batch, once in its worker thread, waits to be let go."""
    entered, release = threading.Event(), threading.Event()
    write = store._admit_batch

    def held(batch: Any) -> Any:
        entered.set()
        release.wait(10)
        return write(batch)

    store._admit_batch = held  # type: ignore[method-assign]
    return entered, release


async def wait_for(event: threading.Event) -> None:
    assert await trio.to_thread.run_sync(event.wait, 10)


@pytest.mark.parametrize("who", ["writer", "waiter"])
async def test_a_join_cancelled_while_its_batch_is_written_still_gets_its_row(store, who):
    """Cancelled once its batch is in flight: admit returns the admission (the row is
    committed) and the caller's next checkpoint raises Cancelled, so the caller, who holds
    the attendance id, can close the row. Whether it wrote the batch or waited for it."""
    live = await meeting(store)
    entered, release = blocking_batches(store)
    got: dict[str, Admission] = {}
    scopes = {"ann": trio.CancelScope(), "bob": trio.CancelScope()}
    reached_checkpoint: list[str] = []

    async def join(name: str) -> None:
        with scopes[name]:
            got[name] = await store.admit(
                meeting_id=live.id, emp_id=name, display_name=name, role=Role.PARTICIPANT, at=T0
            )
            reached_checkpoint.append(name)
            await trio.lowlevel.checkpoint()  # a cancellation lands here

    async with trio.open_nursery() as nursery:
        async with workers_held(store):
            nursery.start_soon(join, "ann")  # the writer
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(join, "bob")
            await trio.testing.wait_all_tasks_blocked()
        await wait_for(entered)  # one batch with both, in its thread
        scopes["ann" if who == "writer" else "bob"].cancel()
        await trio.testing.wait_all_tasks_blocked()
        release.set()
    assert set(got) == {"ann", "bob"} and sorted(reached_checkpoint) == ["ann", "bob"]
    cancelled = "ann" if who == "writer" else "bob"
    assert (
        scopes[cancelled].cancelled_caught
        and not scopes["bob" if cancelled == "ann" else "ann"].cancelled_caught
    )
    rows = await store.attendance_for_meeting(live.id)
    assert sorted(r.id for r in rows) == sorted(a.attendance_id for a in got.values())


async def test_the_hub_closes_the_row_of_a_join_cancelled_in_flight(store):
    """End to end: a connection whose join is cancelled (the server shuts down) while its
    batch is written ends with its attendance row closed, not dangling."""
    from .helpers import FakeConnection, running_hub, token

    entered, release = blocking_batches(store)
    async with running_hub(store) as h:
        live = await h.live_meeting()
        conn = FakeConnection("ann")
        scope = trio.CancelScope()
        h.nursery.start_soon(_serve_in, scope, h, conn, token(live, "ann"))
        await wait_for(entered)
        scope.cancel()
        await trio.testing.wait_all_tasks_blocked()
        release.set()
        with trio.fail_after(10):
            await conn.served.wait()
    rows = await store.attendance_for_meeting(live.id)
    assert len(rows) == 1 and rows[0].left_at is not None


async def _serve_in(scope: trio.CancelScope, h: Any, conn: Any, access_token: str) -> None:
    with scope:
        await h.serve(conn, access_token)
    conn.served.set()


async def test_a_ban_committed_before_a_join_is_never_bypassed_by_a_batch(store):
    live = await meeting(store)
    await store.ban(meeting_id=live.id, emp_id="eve", by="host", reason=None, at=T0)
    joins = Outcomes()
    async with trio.open_nursery() as nursery, workers_held(store):
        for i in range(20):
            await joins.start(nursery, store, f"p{i}", live.id, f"p{i}")
        await joins.start(nursery, store, "eve", live.id, "eve")
        await joins.start(nursery, store, "eve-host-token", live.id, "eve", Role.HOST)
        await trio.testing.wait_all_tasks_blocked()
    assert isinstance(joins.results["eve"], EmployeeBanned)
    assert isinstance(joins.results["eve-host-token"], EmployeeBanned)
    assert sum(isinstance(r, Admission) for r in joins.results.values()) == 20
    assert "eve" not in {r.emp_id for r in await store.attendance_for_meeting(live.id)}


async def test_batches_are_bounded(store, monkeypatch):
    monkeypatch.setattr("meshroom.store.sql.ADMIT_BATCH_MAX", 4)
    live = await meeting(store)
    sizes = recording_batches(store)
    joins = Outcomes()
    async with trio.open_nursery() as nursery, workers_held(store):
        for i in range(10):
            await joins.start(nursery, store, f"p{i}", live.id, f"p{i}")
        await trio.testing.wait_all_tasks_blocked()
    assert sizes == [4, 4, 2]
    ids = [joins.results[f"p{i}"].attendance_id for i in range(10)]  # type: ignore[union-attr]
    assert ids == sorted(ids)  # first come, first written


@pytest.mark.parametrize("seed", range(4))
async def test_random_storm_of_joins_bans_and_ends_keeps_every_invariant(store, seed):
    """Many concurrent joins over a few meetings while bans, unbans and ends land at
    random moments. Afterwards:

    * every admitted join has exactly one row, and every refused join none;
    * a join that started after a ban of its employee returned was refused;
    * a join that started after its meeting's end returned was refused, and an ended
      meeting has no open row (none slipped in after the end closed them all).
    """
    rng = random.Random(seed)
    meetings = [await meeting(store) for _ in range(3)]
    employees = [f"e{i}" for i in range(12)]
    banned_at: dict[tuple[str, str], float] = {}  # trio time the ban call returned
    ended_at: dict[str, float] = {}
    results: list[tuple[float, str, str, Admission | Exception]] = []

    async def joiner(delay: float) -> None:
        await trio.sleep(delay)
        m = rng.choice(meetings)
        emp = rng.choice(employees)
        started = trio.current_time()
        try:
            outcome: Admission | Exception = await store.admit(
                meeting_id=m.id, emp_id=emp, display_name=emp, role=Role.PARTICIPANT, at=T0
            )
        except (EmployeeBanned, MeetingNotLive) as exc:
            outcome = exc
        results.append((started, m.id, emp, outcome))

    async def banner(delay: float) -> None:
        await trio.sleep(delay)
        m, emp = rng.choice(meetings[:2]), rng.choice(employees)
        await store.ban(meeting_id=m.id, emp_id=emp, by="host", reason=None, at=T0)
        banned_at.setdefault((m.id, emp), trio.current_time())

    async def ender(delay: float, m: Meeting) -> None:
        await trio.sleep(delay)
        await store.transition(m.id, MeetingStatus.ENDED)
        ended_at[m.id] = trio.current_time()

    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            for _ in range(200):
                nursery.start_soon(joiner, rng.uniform(0, 0.3))
            for _ in range(6):
                nursery.start_soon(banner, rng.uniform(0, 0.3))
            nursery.start_soon(ender, rng.uniform(0.05, 0.25), meetings[2])

    rows = [row for m in meetings for row in await store.attendance_for_meeting(m.id)]
    admitted = [outcome for _, _, _, outcome in results if isinstance(outcome, Admission)]
    assert sorted(r.id for r in rows) == sorted(a.attendance_id for a in admitted)
    by_id = {r.id: r for r in rows}
    for started, meeting_id, emp, outcome in results:
        if isinstance(outcome, Admission):
            row = by_id[outcome.attendance_id]
            assert (row.meeting_id, row.emp_id) == (meeting_id, emp)
            assert started < banned_at.get((meeting_id, emp), float("inf"))
            assert started < ended_at.get(meeting_id, float("inf"))
        elif isinstance(outcome, EmployeeBanned):
            assert (meeting_id, emp) in banned_at  # maybe still in flight when refused
        else:
            assert meeting_id in ended_at
    assert await open_rows(store, meetings[2].id) == []
    counts = collections.Counter(a.attendance_id for a in admitted)
    assert set(counts.values()) <= {1}


async def test_many_concurrent_joins_are_fewer_transactions(store):
    live = await meeting(store)
    sizes = recording_batches(store)
    async with trio.open_nursery() as nursery:
        for i in range(64):
            nursery.start_soon(_admit, store, live.id, f"p{i}")
    assert sum(sizes) == 64 and len(sizes) < 64
    assert len(await store.attendance_for_meeting(live.id)) == 64


async def _admit(store: SqlStore, meeting_id: str, emp_id: str) -> None:
    await store.admit(
        meeting_id=meeting_id, emp_id=emp_id, display_name=emp_id, role=Role.PARTICIPANT, at=T0
    )


@pytest.mark.parametrize("seed", range(3))
async def test_a_ban_racing_a_storm_of_joins_ends_refused_or_removed(store, seed):
    """Through the hub: 30 peers join at once (so their admissions batch) while a host
    bans some of them at random moments. Each banned employee ends outside the room
    with every row of theirs closed: refused, or admitted and then removed."""
    from .helpers import FakeConnection, running_hub, token

    rng = random.Random(seed)
    async with running_hub(store) as h:
        live = await h.live_meeting()
        conns = [FakeConnection(f"emp{i:02}") for i in range(30)]
        victims = rng.sample([c.name for c in conns], 5)

        async def ban_later(emp_id: str) -> None:
            await trio.sleep(rng.uniform(0, 0.05))
            await h.hub.ban(live.id, emp_id, by="host")

        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                for conn in conns:
                    h.nursery.start_soon(h.serve, conn, token(live, conn.name))
                for emp_id in victims:
                    nursery.start_soon(ban_later, emp_id)
            for conn in conns:
                if conn.name not in victims:
                    await conn.wait_for("room:joined")
            for conn in conns:
                if conn.name in victims:
                    await conn.served.wait()
        room = h.hub.rooms[live.id]
        assert not set(victims) & set(room.peers)
        assert set(room.peers) == {c.name for c in conns} - set(victims)
        rows = await store.attendance_for_meeting(live.id)
        assert all(r.left_at is not None for r in rows if r.emp_id in victims)
        assert sorted(r.emp_id for r in rows if r.left_at is None) == sorted(room.peers)
