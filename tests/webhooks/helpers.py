"""A store with an endpoint, the delivery worker on it, and ways to drive and observe both."""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import trio

from meshroom.roles import Role
from meshroom.store import Meeting, MeetingStatus, SqlStore
from meshroom.store.base import (
    DeliveryStatus,
    EndpointSource,
    Leave,
    WebhookEndpoint,
    WebhookEventType,
)
from meshroom.webhooks import Attempt, DeliveryConfig, WebhookDeliverer

from .receiver import Receiver

SECRET = "whsec_" + base64.b64encode(b"meshroom webhook tests secret 32").decode()
# Retries in tenths of a second: a test sees many attempts without waiting minutes.
FAST = DeliveryConfig(
    timeout=2.0, max_attempts=5, retry_initial=0.02, retry_max=0.1, poll_interval=0.5
)


def endpoint(
    url: str,
    endpoint_id: str = "ep-test",
    *,
    secret: str = SECRET,
    event_types: Sequence[WebhookEventType] | None = None,
    enabled: bool = True,
) -> WebhookEndpoint:
    return WebhookEndpoint(
        id=endpoint_id,
        url=url,
        secret=secret,
        event_types=None if event_types is None else frozenset(event_types),
        source=EndpointSource.API,
        enabled=enabled,
        description=None,
        created_at=dt.datetime.now(dt.UTC),
    )


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass
class Outbox:
    """A store whose outbox a running worker delivers to ``receiver``."""

    store: SqlStore
    deliverer: WebhookDeliverer
    receiver: Receiver
    attempts: list[Attempt] = field(default_factory=list)
    _attempted: trio.Event = field(default_factory=trio.Event)

    def _on_attempt(self, attempt: Attempt) -> None:
        self.attempts.append(attempt)
        self._attempted.set()
        self._attempted = trio.Event()

    async def settled(self) -> None:
        """Return once no delivery is pending (each delivered or dead); checked per attempt."""
        while True:
            waiting = self._attempted
            _, pending = await self.store.list_webhook_deliveries(
                status=DeliveryStatus.PENDING, limit=1
            )
            if not pending:
                return
            await waiting.wait()

    async def live_meeting(self, title: str = "Standup") -> Meeting:
        meeting = await self.store.create_meeting(title=title, host_emp_id="alice")
        return await self.store.transition(meeting.id, MeetingStatus.LIVE)

    async def visit(self, meeting: Meeting, emp_id: str, reason: str = "left") -> int:
        """An employee joins and leaves: three events (joined, left, attendance.closed)."""
        admission = await self.store.admit(
            meeting_id=meeting.id,
            emp_id=emp_id,
            display_name=emp_id.title(),
            role=Role.PARTICIPANT,
            at=utcnow(),
        )
        await self.store.record_leaves([Leave(admission.attendance_id, utcnow(), reason)])
        return admission.attendance_id


@asynccontextmanager
async def running_outbox(
    database_url: str,
    receiver: Receiver,
    config: DeliveryConfig = FAST,
    *,
    endpoints: Sequence[WebhookEndpoint] | None = None,
) -> AsyncIterator[Outbox]:
    """A store with the endpoints (default: one, the receiver), its worker running."""
    store = SqlStore(database_url, pool_size=5)
    await store.open()
    try:
        for item in endpoints if endpoints is not None else [endpoint(receiver.url)]:
            await store.put_webhook_endpoint(item)
        outbox = Outbox(store, WebhookDeliverer(store, config), receiver)
        outbox.deliverer.on_attempt = outbox._on_attempt
        store.on_outbox_write = outbox.deliverer.wake
        async with trio.open_nursery() as nursery:
            await nursery.start(outbox.deliverer.run)
            yield outbox
            nursery.cancel_scope.cancel()
    finally:
        await store.close()


@asynccontextmanager
async def receiving(receiver: Receiver | None = None) -> AsyncIterator[Receiver]:
    """A receiver listening on loopback for the block."""
    receiver = receiver or Receiver()
    async with trio.open_nursery() as nursery:
        await nursery.start(receiver.run)
        yield receiver
        nursery.cancel_scope.cancel()
