"""The delivery worker against a real receiver on loopback: signatures, retries,
timeouts, dead letters, per-meeting order under concurrency, a receiver down and back."""

from __future__ import annotations

import random

import pytest
import trio

from meshroom.store.base import DeliveryStatus
from meshroom.webhooks import DeliveryConfig, WebhookService

from .helpers import FAST, SECRET, endpoint, receiving, running_outbox
from .receiver import Received, Receiver, hang

TIMEOUT = 30


async def test_each_event_is_delivered_signed_and_an_off_the_shelf_verifier_accepts_it(
    db_url,
):
    with trio.fail_after(TIMEOUT):
        async with receiving() as receiver, running_outbox(db_url, receiver) as outbox:
            meeting = await outbox.live_meeting()
            attendance_id = await outbox.visit(meeting, "bob")
            await outbox.settled()
    types = [r.type for r in receiver.requests]
    assert types == [
        "meeting.started",
        "participant.joined",
        "participant.left",
        "attendance.closed",
    ]
    for request in receiver.requests:
        assert request.verify(SECRET) == request.json  # standardwebhooks.Webhook.verify
        assert request.headers["content-type"] == "application/json"
        assert request.id.startswith("msg_")
        assert request.json["data"]["meetingId"] == meeting.id
    assert len({r.id for r in receiver.requests}) == 4
    assert receiver.requests[2].data["attendanceId"] == attendance_id
    # A signature made with another secret, or over other bytes, does not verify.
    tampered = Received(0, receiver.requests[0].headers, receiver.requests[0].body + b" ")
    with pytest.raises(Exception, match="signature"):
        tampered.verify(SECRET)
    from meshroom.webhooks.signing import generate_secret

    with pytest.raises(Exception, match="signature"):
        receiver.requests[0].verify(generate_secret())


async def test_a_500_is_retried_until_the_receiver_takes_it(sqlite_url):
    answers = iter([500, 503, 200])
    receiver = Receiver(lambda _request: next(answers, 200))
    with trio.fail_after(TIMEOUT):
        async with receiving(receiver), running_outbox(sqlite_url, receiver) as outbox:
            meeting = await outbox.live_meeting()
            await outbox.settled()
            deliveries, _ = await outbox.store.list_webhook_deliveries()
    assert [r.status for r in receiver.requests] == [500, 503, 200]
    assert len({r.id for r in receiver.requests}) == 1  # the same webhook-id every time
    assert all(r.verify(SECRET) == r.json for r in receiver.requests)  # each attempt signed
    (delivery,) = deliveries
    assert delivery.status is DeliveryStatus.DELIVERED and delivery.attempts == 3
    assert delivery.last_status_code == 200 and delivery.last_error is None
    assert delivery.meeting_id == meeting.id
    assert [a.outcome for a in outbox.attempts] == ["failed", "failed", "delivered"]


async def test_a_receiver_that_does_not_answer_in_time_is_retried(sqlite_url):
    answers = iter([hang, hang])

    async def respond(request: Received) -> int:
        policy = next(answers, None)
        if policy is not None:
            return await policy(request)
        return 204

    receiver = Receiver(respond)
    config = DeliveryConfig(timeout=0.3, max_attempts=5, retry_initial=0.01, retry_max=0.05)
    with trio.fail_after(TIMEOUT):
        async with receiving(receiver), running_outbox(sqlite_url, receiver, config) as outbox:
            await outbox.live_meeting()
            await outbox.settled()
            (delivery,), _ = await outbox.store.list_webhook_deliveries()
    assert [r.status for r in receiver.requests] == [None, None, 204]
    assert delivery.status is DeliveryStatus.DELIVERED and delivery.attempts == 3
    failed = [a for a in outbox.attempts if a.outcome == "failed"]
    assert len(failed) == 2 and all(a.seconds >= 0.3 for a in failed)


async def test_dead_after_max_attempts_then_a_retry_sends_it_again(db_url):
    receiver = Receiver(lambda _request: 500)
    with trio.fail_after(TIMEOUT):
        async with receiving(receiver), running_outbox(db_url, receiver) as outbox:
            await outbox.live_meeting()
            await outbox.settled()
            (dead,), _ = await outbox.store.list_webhook_deliveries()
            assert dead.status is DeliveryStatus.DEAD
            assert dead.attempts == FAST.max_attempts == len(receiver.requests)
            assert dead.last_status_code == 500
            assert dead.last_error == "HTTP 500: receiver says no"
            assert [a.outcome for a in outbox.attempts][-2:] == ["failed", "dead"]

            receiver.respond = lambda _request: 200
            retried = await WebhookService(outbox.store).retry(dead.id)
            assert retried.status is DeliveryStatus.PENDING and retried.attempts == 0
            await outbox.settled()
            (delivered,), _ = await outbox.store.list_webhook_deliveries()
    assert delivered.status is DeliveryStatus.DELIVERED and delivered.attempts == 1
    assert receiver.requests[-1].ok and receiver.requests[-1].id == dead.event_id


def check_meeting_order(receiver: Receiver, dead_ids: set[str]) -> None:
    """Per meeting: every attempt of an event came after the event before it was settled
    (answered 2xx, or its last attempt failed and it went dead), and every event settled."""
    last_attempt = {request.id: request.index for request in receiver.requests}
    by_meeting: dict[str, list[str]] = {}
    for request in receiver.requests:
        ids = by_meeting.setdefault(request.data["meetingId"], [])
        if request.id not in ids:
            ids.append(request.id)
    for meeting_id, order in by_meeting.items():
        settled_at = {event_id: last_attempt[event_id] for event_id in dead_ids & set(order)}
        for request in receiver.requests:
            if request.data["meetingId"] != meeting_id:
                continue
            position = order.index(request.id)
            for earlier in order[:position]:
                assert settled_at.get(earlier, request.index) < request.index, (
                    f"{request.id} attempted (#{request.index}) before {earlier} was settled"
                )
            if request.ok:
                settled_at.setdefault(request.id, request.index)
        for event_id in order:
            assert event_id in settled_at, f"{event_id} was never delivered"


async def test_per_meeting_order_holds_with_concurrent_deliveries_and_failures(db_url):
    rng = random.Random(7)
    in_flight = 0
    most_in_flight = 0

    async def respond(request: Received) -> int:
        nonlocal in_flight, most_in_flight
        in_flight += 1
        most_in_flight = max(most_in_flight, in_flight)
        try:
            await trio.sleep(rng.uniform(0, 0.02))  # answers overlap and finish out of order
            return 500 if rng.random() < 0.3 else 200
        finally:
            in_flight -= 1

    receiver = Receiver(respond)
    config = DeliveryConfig(
        timeout=2, max_attempts=50, retry_initial=0.01, retry_max=0.05, concurrency=4
    )
    with trio.fail_after(60):
        async with receiving(receiver), running_outbox(db_url, receiver, config) as outbox:
            meetings = [await outbox.live_meeting(f"m{i}") for i in range(4)]
            async with trio.open_nursery() as nursery:
                for meeting in meetings:
                    for emp in ("ann", "bob", "cy"):
                        nursery.start_soon(outbox.visit, meeting, emp)
            await outbox.settled()
            deliveries, total = await outbox.store.list_webhook_deliveries(limit=500)
    assert total == 4 * (1 + 3 * 3)
    assert all(d.status is DeliveryStatus.DELIVERED for d in deliveries)
    assert 1 < most_in_flight <= 4  # concurrent across meetings, bounded per endpoint
    check_meeting_order(receiver, dead_ids=set())
    # Within a meeting, the first deliveries are in the order the store wrote the events.
    written = {d.event_id: d.id for d in deliveries}
    by_meeting: dict[str, list[int]] = {}
    for request in receiver.first_deliveries():
        by_meeting.setdefault(request.data["meetingId"], []).append(written[request.id])
    assert all(ids == sorted(ids) for ids in by_meeting.values())


async def test_a_dead_event_lets_the_next_one_of_its_meeting_go(sqlite_url):
    """Order waits for an earlier event until it is delivered *or dead*, not forever."""
    receiver = Receiver(lambda request: 500 if request.type == "meeting.started" else 200)
    with trio.fail_after(TIMEOUT):
        async with receiving(receiver), running_outbox(sqlite_url, receiver) as outbox:
            meeting = await outbox.live_meeting()
            await outbox.visit(meeting, "bob")
            await outbox.settled()
            deliveries, _ = await outbox.store.list_webhook_deliveries()
    started = [r for r in receiver.requests if r.type == "meeting.started"]
    assert len(started) == FAST.max_attempts
    later = [r for r in receiver.requests if r.type != "meeting.started"]
    assert [r.type for r in later] == [
        "participant.joined",
        "participant.left",
        "attendance.closed",
    ]
    assert min(r.index for r in later) > max(r.index for r in started)
    statuses = {d.event_type.value: d.status for d in deliveries}
    assert statuses["meeting.started"] is DeliveryStatus.DEAD
    check_meeting_order(receiver, dead_ids={started[0].id})


async def test_a_receiver_down_for_a_while_then_back_gets_everything_in_order(db_url):
    """Connections refused for a stretch of retries: nothing lost, meetings in order."""
    receiver = Receiver()
    config = DeliveryConfig(
        timeout=1, max_attempts=1000, retry_initial=0.01, retry_max=0.1, concurrency=4
    )
    with trio.fail_after(60):
        async with receiving(receiver), running_outbox(db_url, receiver, config) as outbox:
            first = await outbox.live_meeting("first")
            await outbox.settled()
            await receiver.go_down()
            second = await outbox.live_meeting("second")
            for emp in ("ann", "bob"):
                await outbox.visit(first, emp)
                await outbox.visit(second, emp)
            # The worker keeps trying while the receiver is down: wait for a few refusals.
            while sum(a.outcome == "failed" for a in outbox.attempts) < 10:
                await outbox._attempted.wait()
            assert len(receiver.requests) == 1
            await receiver.come_up()
            await outbox.settled()
            deliveries, total = await outbox.store.list_webhook_deliveries(limit=100)
    assert total == 2 + 2 * 2 * 3
    assert all(d.status is DeliveryStatus.DELIVERED for d in deliveries)
    assert {r.id for r in receiver.first_deliveries()} == {d.event_id for d in deliveries}
    check_meeting_order(receiver, dead_ids=set())


async def test_a_disabled_endpoint_gets_nothing_and_an_event_filter_is_honoured(sqlite_url):
    from meshroom.store.base import WebhookEventType

    async with receiving() as receiver:
        endpoints = [
            endpoint(receiver.url, "joins-only", event_types=[WebhookEventType.PARTICIPANT_JOINED]),
            endpoint(receiver.url + "?off", "off", enabled=False),
        ]
        with trio.fail_after(TIMEOUT):
            async with running_outbox(sqlite_url, receiver, endpoints=endpoints) as outbox:
                meeting = await outbox.live_meeting()
                await outbox.visit(meeting, "bob")
                await outbox.settled()
                deliveries, _ = await outbox.store.list_webhook_deliveries()
    assert [r.type for r in receiver.requests] == ["participant.joined"]
    assert [(d.endpoint_id, d.event_type.value) for d in deliveries] == [
        ("joins-only", "participant.joined")
    ]


async def test_an_unusable_endpoint_fails_on_its_own_and_the_others_still_get_theirs(sqlite_url):
    """A secret or URL edited into nonsense (the API refuses both; a database edit does not)
    makes that endpoint's deliveries fail and go dead; the worker and the rest go on."""
    async with receiving() as receiver:
        endpoints = [
            endpoint(receiver.url, "good"),
            endpoint(receiver.url, "bad-secret", secret="whsec_not base64!"),
            endpoint("http://127.0.0.1:99999/hooks", "bad-port"),
        ]
        with trio.fail_after(TIMEOUT):
            async with running_outbox(sqlite_url, receiver, endpoints=endpoints) as outbox:
                await outbox.live_meeting()
                await outbox.settled()
                deliveries, _ = await outbox.store.list_webhook_deliveries()
    outcome = {d.endpoint_id: (d.status, d.attempts, d.last_error) for d in deliveries}
    assert outcome["good"] == (DeliveryStatus.DELIVERED, 1, None)
    status, attempts, error = outcome["bad-secret"]
    assert (status, attempts) == (DeliveryStatus.DEAD, FAST.max_attempts)
    assert error is not None and error.startswith("cannot sign:")
    status, attempts, error = outcome["bad-port"]
    assert (status, attempts) == (DeliveryStatus.DEAD, FAST.max_attempts)
    assert error is not None and error.startswith("ConnectError: ")
    assert [r.type for r in receiver.requests] == ["meeting.started"]


async def test_a_worker_stopped_mid_attempt_hands_the_delivery_back(sqlite_url):
    """A clean shutdown while an endpoint has not answered: the delivery is pending again at
    once, that attempt uncounted, not left leased until the lease runs out."""
    import datetime as dt

    receiver = Receiver(hang)
    async with receiving(receiver):
        with trio.fail_after(TIMEOUT):
            async with running_outbox(sqlite_url, receiver) as outbox:
                await outbox.live_meeting()
                await receiver.until(lambda r: len(r.requests) == 1)
            # The worker was cancelled with its attempt in flight.
            store = outbox.store
            await store.open()
            try:
                (delivery,), _ = await store.list_webhook_deliveries()
                assert delivery.status is DeliveryStatus.PENDING and delivery.attempts == 0
                claim = await store.claim_webhook_deliveries(
                    limit_per_endpoint=1,
                    in_flight={},
                    now=dt.datetime.now(dt.UTC),
                    lease=dt.timedelta(seconds=30),
                )
                assert [c.delivery.id for c in claim.deliveries] == [delivery.id]
            finally:
                await store.close()
