"""SIGKILL ``meshroom serve`` in the middle of a delivery: the next start delivers it
again (same webhook-id), then what waited behind it, then the rows crash recovery
closed — in order, on SQLite and PostgreSQL."""

from __future__ import annotations

import json

import trio
from store.helpers import ServerProcess, token

from meshroom import Role
from meshroom.client import connect
from meshroom.store import MeetingStatus, SqlStore

from .helpers import SECRET, receiving
from .receiver import Received, Receiver

TIMEOUT = 60


async def test_sigkill_mid_delivery_then_restart_redelivers_in_order(db_url, tmp_path):
    holding = True

    async def respond(request: Received) -> int:
        if holding and request.type == "meeting.started":
            await trio.sleep_forever()  # in flight when the server dies
        return 200

    receiver = Receiver(respond)
    store = SqlStore(db_url)
    await store.open()
    try:
        with trio.fail_after(TIMEOUT):
            async with receiving(receiver), trio.open_nursery() as nursery:
                endpoints = [{"url": receiver.url, "secret": SECRET, "id": "receiver"}]
                args = (
                    "--webhooks", json.dumps(endpoints), "--webhook-timeout", "1",
                    "--webhook-retry-initial", "0.05", "--webhook-retry-max", "0.2",
                    "--webhook-poll-interval", "0.2",
                )  # fmt: skip
                first = ServerProcess(db_url, tmp_path, *args)
                await first.start(nursery)
                # Made LIVE by this process, not the server's: found by its poll.
                meeting = await store.create_meeting(title="Payroll", host_emp_id="alice")
                meeting = await store.transition(meeting.id, MeetingStatus.LIVE)
                async with connect(first.url, token(meeting, "alice", Role.HOST)) as alice:
                    assert alice.emp_id == "alice"
                    await receiver.until(lambda r: len(r.requests) == 1)
                    await first.kill()
                assert receiver.requests[0].status is None  # never answered
                (pending_join,) = [
                    d
                    for d in (await store.list_webhook_deliveries())[0]
                    if d.event_type.value == "participant.joined"
                ]
                assert pending_join.attempts == 0  # waiting behind meeting.started

                holding = False
                second = ServerProcess(db_url, tmp_path, *args)
                await second.start(nursery)
                await receiver.until(lambda r: len(r.delivered()) == 4)
                assert await second.terminate() == 0
                nursery.cancel_scope.cancel()
        deliveries, _ = await store.list_webhook_deliveries()
    finally:
        await store.close()

    started = receiver.requests[0]
    redelivered = receiver.delivered()
    assert [r.type for r in redelivered] == [
        "meeting.started",
        "participant.joined",
        "participant.left",
        "attendance.closed",
    ]
    assert redelivered[0].id == started.id  # the same webhook-id: receivers deduplicate
    assert redelivered[0].body == started.body
    assert all(r.verify(SECRET) == r.json for r in redelivered)
    left, closed = redelivered[2].data, redelivered[3].data
    assert left["empId"] == closed["empId"] == "alice"
    assert left["reason"] == "server-crash"
    assert closed["closedByRecovery"] is True and closed["leaveReason"] == "server-crash"
    assert closed["leftAt"] == (closed["lastSeenAt"] or closed["joinedAt"])
    assert all(d.status.value == "delivered" for d in deliveries)
    by_type = {d.event_type.value: d for d in deliveries}
    # The killed server's attempt was counted (claimed), the second one delivered it.
    assert by_type["meeting.started"].attempts == 2
