"""Property: whatever the receiver does (500s, refused connections, timeouts, answers in
any order), every event is delivered at least once or goes dead after exactly
max_attempts, and no event of a meeting is attempted before every earlier event of
that meeting was delivered or went dead.

The receiver is an in-process httpx transport here (hundreds of examples, no
sockets); its failures are a function of the event and the attempt, drawn by
Hypothesis, so each example is reproducible however the attempts interleave.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass

import httpx
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshroom.roles import Role
from meshroom.store import MeetingStatus, SqlStore
from meshroom.store.base import DeliveryStatus, Leave
from meshroom.webhooks import Attempt, DeliveryConfig, WebhookDeliverer

from .helpers import endpoint

URL = "http://receiver.invalid/hooks"
MAX_ATTEMPTS = 3
FAILURES = ("500", "refused", "timeout")


# (meeting, event type, employee): names an event the same way in every run.
Key = tuple[int, str, str | None]


@dataclass
class Request:
    key: Key
    event_id: str
    meeting: int
    ok: bool


@st.composite
def scenarios(
    draw: st.DrawFn,
) -> tuple[list[int], dict[tuple[int, str, str | None], list[str]], int]:
    visits = draw(st.lists(st.integers(0, 3), min_size=1, max_size=3))  # per meeting
    keys = []
    for meeting, count in enumerate(visits):
        keys.append((meeting, "meeting.started", None))
        for visitor in range(count):
            emp = f"e{visitor}"
            keys += [
                (meeting, "participant.joined", emp),
                (meeting, "participant.left", emp),
                (meeting, "attendance.closed", emp),
            ]
    # Per event, what its successive attempts meet: failures, then (unless too many) a 2xx.
    outcomes = {
        key: draw(st.lists(st.sampled_from(FAILURES), max_size=MAX_ATTEMPTS)) for key in keys
    }
    latency = {key: draw(st.sampled_from([0.0, 0.001, 0.003])) for key in keys}
    concurrency = draw(st.integers(1, 4))
    return visits, outcomes, latency, concurrency


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(scenario=scenarios())
async def test_at_least_once_and_per_meeting_order_whatever_the_receiver_does(scenario):
    visits, outcomes, latency, concurrency = scenario
    log: list[Request] = []
    attempts_so_far: dict[str, int] = {}

    async def receive(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        data = body["data"]
        key = (titles[data["meetingId"]], body["type"], data.get("empId"))
        attempt = attempts_so_far.get(request.headers["webhook-id"], 0)
        attempts_so_far[request.headers["webhook-id"]] = attempt + 1
        # The receiver's latency: answers overlap and complete out of order.
        await trio.sleep(latency[key])
        failures = outcomes[key]
        failure = failures[attempt] if attempt < len(failures) else None
        log.append(Request(key, request.headers["webhook-id"], key[0], failure is None))
        if failure == "refused":
            raise httpx.ConnectError("connection refused", request=request)
        if failure == "timeout":
            raise httpx.ReadTimeout("no answer", request=request)
        return httpx.Response(500 if failure == "500" else 200)

    config = DeliveryConfig(
        timeout=5,
        max_attempts=MAX_ATTEMPTS,
        retry_initial=0.001,
        retry_max=0.004,
        concurrency=concurrency,
        poll_interval=1,
    )
    store = SqlStore("sqlite://")
    await store.open()
    attempted = trio.Event()

    def on_attempt(_attempt: Attempt) -> None:
        nonlocal attempted
        attempted.set()
        attempted = trio.Event()

    deliverer = WebhookDeliverer(
        store, config, on_attempt=on_attempt, transport=httpx.MockTransport(receive)
    )
    store.on_outbox_write = deliverer.wake
    titles: dict[str, int] = {}
    now = dt.datetime.now(dt.UTC)
    try:
        await store.put_webhook_endpoint(endpoint(URL))
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                await nursery.start(deliverer.run)
                for index, count in enumerate(visits):
                    meeting = await store.create_meeting(title=f"m{index}", host_emp_id="h")
                    titles[meeting.id] = index
                    await store.transition(meeting.id, MeetingStatus.LIVE)
                    for visitor in range(count):
                        admission = await store.admit(
                            meeting_id=meeting.id,
                            emp_id=f"e{visitor}",
                            display_name="E",
                            role=Role.PARTICIPANT,
                            at=now,
                        )
                        await store.record_leaves([Leave(admission.attendance_id, now, "left")])
                while True:
                    waiting = attempted
                    _, pending = await store.list_webhook_deliveries(status=DeliveryStatus.PENDING)
                    if not pending:
                        break
                    await waiting.wait()
                nursery.cancel_scope.cancel()
        deliveries, _ = await store.list_webhook_deliveries(limit=1000)
    finally:
        await store.close()

    # Every event settled: delivered exactly when a 2xx came within max_attempts.
    assert len(deliveries) == len(outcomes)
    key_of = {r.event_id: r.key for r in log}
    for delivery in deliveries:
        failures = outcomes[key_of[delivery.event_id]]
        if len(failures) < MAX_ATTEMPTS:
            assert delivery.status is DeliveryStatus.DELIVERED
            assert delivery.attempts == len(failures) + 1
        else:
            assert delivery.status is DeliveryStatus.DEAD
            assert delivery.attempts == MAX_ATTEMPTS
        assert attempts_so_far[delivery.event_id] == delivery.attempts

    # Per meeting: an attempt comes only after every earlier event settled (its first 2xx,
    # or its last attempt if it went dead).
    last_attempt = {request.event_id: position for position, request in enumerate(log)}
    settled_at: dict[str, int] = {}
    for position, request in enumerate(log):
        if request.ok:
            settled_at.setdefault(request.event_id, position)
    for delivery in deliveries:
        if delivery.status is DeliveryStatus.DEAD:
            settled_at[delivery.event_id] = last_attempt[delivery.event_id]
    written = {d.event_id: d.id for d in deliveries}  # delivery ids: the order written
    for position, request in enumerate(log):
        for earlier, earlier_written in written.items():
            if (
                key_of[earlier][0] == request.meeting
                and earlier_written < written[request.event_id]
            ):
                assert settled_at[earlier] < position, (
                    f"{request.key} attempted before {key_of[earlier]} settled"
                )
