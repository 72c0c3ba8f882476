"""The delivery worker: drains the outbox to the endpoints, signed, in order, with retries.

One :class:`WebhookDeliverer` runs per server, in the runtime's nursery. Each turn
of its loop *claims* what may be attempted now (one database call,
:meth:`~meshroom.store.base.WebhookStore.claim_webhook_deliveries`) and starts one
task per claimed delivery in a nursery of its own; then it sleeps until something
changes:

* this process committed new events or retries (the store's ``on_outbox_write``
  hook calls :meth:`wake`), or an attempt of its own finished (a slot is free, or
  the next event of that meeting may go now);
* a retry falls due, or a lease of a worker that died runs out;
* ``poll_interval`` passed: rows written by other processes (``meshroom webhooks
  retry``) are found this way.

What the database guarantees and the worker relies on:

* **Per-meeting order**: a delivery is claimable only when no earlier event of the
  same meeting is still pending for the same endpoint, so a meeting's events reach
  an endpoint one at a time, in order; the next goes once the previous one was
  delivered or went dead. Meetings are independent; up to ``concurrency``
  deliveries per endpoint are in flight at once.
* **At-least-once**: a claimed delivery is leased for ``2 * timeout + 1`` seconds.
  An attempt's result is recorded after the endpoint answered; a worker killed in
  between leaves the lease to run out, and the delivery is attempted again with
  the same ``webhook-id`` (receivers deduplicate on it).

Retries: a failed attempt (no 2xx within ``timeout``, or no connection) is retried
after ``retry_initial`` seconds, doubling up to ``retry_max``, each delay jittered
by ±20%; after ``max_attempts`` attempts the delivery is *dead*: kept, listed, and
sent again only when retried from the CLI or the API.
"""

from __future__ import annotations

import collections
import datetime as dt
import logging
import random
from collections.abc import Callable

import httpx
import trio

from .. import __version__
from ..store.base import AttemptOutcome, AttemptResult, ClaimedDelivery, WebhookStore
from . import payloads
from .policy import Attempt, DeliveryConfig, utcnow
from .signing import signed_headers

log = logging.getLogger(__name__)

# Seconds an attempt's result may take to be recorded once the worker is cancelled.
RECORD_GRACE = 5.0
# Characters of a failing endpoint's answer kept as the delivery's last_error.
ERROR_SNIPPET = 200
# How often delivered deliveries older than the retention are forgotten, seconds.
PRUNE_EVERY = 3600.0


class WebhookDeliverer:
    """Delivers the outbox until cancelled. Run :meth:`run` in a nursery (the runtime's)."""

    def __init__(
        self,
        store: WebhookStore,
        config: DeliveryConfig | None = None,
        *,
        on_attempt: Callable[[Attempt], None] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.store = store
        self.config = config or DeliveryConfig()
        self.on_attempt = on_attempt
        self._transport = transport
        self._rng = rng or random.Random()
        self._wake = trio.Event()
        self._in_flight: collections.Counter[str] = collections.Counter()
        self._store_failing = False

    def wake(self) -> None:
        """Look for claimable deliveries now (new events were committed, say)."""
        self._wake.set()

    @property
    def in_flight(self) -> int:
        return sum(self._in_flight.values())

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        config = self.config
        client = httpx.AsyncClient(
            timeout=httpx.Timeout(config.timeout),
            follow_redirects=False,  # a redirect is not a delivery (Standard Webhooks)
            headers={"user-agent": f"meshroom-webhooks/{__version__}"},
            transport=self._transport,
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=20),
        )
        try:
            async with trio.open_nursery() as attempts:
                task_status.started()
                next_prune = trio.current_time()
                while True:
                    # A fresh event before looking: a wake-up during the claim is kept.
                    self._wake = trio.Event()
                    wait = await self._claim_and_start(client, attempts)
                    if config.retention > 0 and trio.current_time() >= next_prune:
                        await self._prune()
                        next_prune = trio.current_time() + PRUNE_EVERY
                    with trio.move_on_after(wait):
                        await self._wake.wait()
        finally:
            with trio.CancelScope(shield=True):
                await client.aclose()

    async def _claim_and_start(self, client: httpx.AsyncClient, attempts: trio.Nursery) -> float:
        """Start an attempt per claimable delivery; seconds until the next look."""
        try:
            claim = await self.store.claim_webhook_deliveries(
                limit_per_endpoint=self.config.concurrency,
                in_flight=self._in_flight,
                now=utcnow(),
                lease=self.config.lease,
            )
        except Exception as exc:
            if not self._store_failing:
                log.warning("webhooks: cannot read the outbox (retrying): %s", exc)
            self._store_failing = True
            return self.config.poll_interval
        if self._store_failing:
            log.warning("webhooks: the outbox can be read again")
            self._store_failing = False
        for claimed in claim.deliveries:
            self._in_flight[claimed.delivery.endpoint_id] += 1
            attempts.start_soon(
                self._attempt, client, claimed, name=f"webhook delivery {claimed.delivery.id}"
            )
        wait = self.config.poll_interval
        if claim.next_due is not None:
            wait = min(wait, max(0.0, (claim.next_due - utcnow()).total_seconds()))
        return wait

    async def _attempt(self, client: httpx.AsyncClient, claimed: ClaimedDelivery) -> None:
        delivery = claimed.delivery
        try:
            started = trio.current_time()
            try:
                status_code, error = await self._post(client, claimed)
            except trio.Cancelled:
                # Shutting down mid-attempt: hand the delivery back, the attempt uncounted.
                # (If the endpoint got it anyway, it gets it again: at-least-once.)
                await self._record(claimed, AttemptOutcome.RELEASED, None, None)
                raise
            seconds = trio.current_time() - started
            if error is None:
                outcome = AttemptOutcome.DELIVERED
            elif delivery.attempts >= self.config.max_attempts:
                outcome = AttemptOutcome.DEAD
                log.warning(
                    "webhook %s (%s) to endpoint %s is dead after %d attempts: %s",
                    delivery.event_id,
                    delivery.event_type.value,
                    delivery.endpoint_id,
                    delivery.attempts,
                    error,
                )
            else:
                outcome = AttemptOutcome.RETRY
                log.info(
                    "webhook %s (%s) to endpoint %s failed (attempt %d of %d): %s",
                    delivery.event_id,
                    delivery.event_type.value,
                    delivery.endpoint_id,
                    delivery.attempts,
                    self.config.max_attempts,
                    error,
                )
            await self._record(claimed, outcome, status_code, error)
            if self.on_attempt is not None:
                name = "failed" if outcome is AttemptOutcome.RETRY else outcome.value
                attempt = Attempt(
                    delivery.endpoint_id, delivery.event_type.value, name, seconds, status_code
                )
                try:
                    self.on_attempt(attempt)
                except Exception:  # an observer's bug must not end the worker
                    log.exception("webhook attempt observer failed on %r", attempt)
        finally:
            self._in_flight[delivery.endpoint_id] -= 1
            if self._in_flight[delivery.endpoint_id] <= 0:
                del self._in_flight[delivery.endpoint_id]
            self.wake()

    async def _post(
        self, client: httpx.AsyncClient, claimed: ClaimedDelivery
    ) -> tuple[int | None, str | None]:
        """One POST; (status code, None) when delivered, else (status or None, why not)."""
        delivery = claimed.delivery
        try:
            content = payloads.body(delivery)
            headers = signed_headers(claimed.secret, delivery.event_id, utcnow(), content)
        except Exception as exc:  # a secret edited into something unusable, say
            log.exception(
                "webhook %s: cannot sign it for endpoint %s",
                delivery.event_id,
                delivery.endpoint_id,
            )
            return None, _one_line(f"cannot sign: {type(exc).__name__}: {exc}")
        headers["content-type"] = "application/json"
        # httpx's timeout bounds each read; this bounds the whole exchange (a receiver
        # dribbling its answer byte by byte cannot hold a slot past it).
        with trio.move_on_after(self.config.timeout):
            try:
                async with client.stream(
                    "POST", claimed.url, content=content, headers=headers
                ) as response:
                    if 200 <= response.status_code < 300:
                        return response.status_code, None
                    return response.status_code, await _describe_refusal(response)
            except httpx.TimeoutException:
                return None, f"no answer within {self.config.timeout:g} s"
            except httpx.HTTPError as exc:
                return None, _one_line(f"{type(exc).__name__}: {exc}")
            except Exception as exc:  # an unusable URL, say: an attempt must not end the worker
                log.exception("webhook %s: unexpected error", delivery.event_id)
                return None, _one_line(f"{type(exc).__name__}: {exc}")
        return None, f"no answer within {self.config.timeout:g} s"

    async def _record(
        self,
        claimed: ClaimedDelivery,
        outcome: AttemptOutcome,
        status_code: int | None,
        error: str | None,
    ) -> None:
        delivery = claimed.delivery
        now = utcnow()
        next_attempt_at = None
        if outcome is AttemptOutcome.RETRY:
            delay = self.config.retry_delay(delivery.attempts, self._rng)
            next_attempt_at = now + dt.timedelta(seconds=delay)
        result = AttemptResult(
            delivery_id=delivery.id,
            lease_token=claimed.lease_token,
            outcome=outcome,
            at=now,
            next_attempt_at=next_attempt_at,
            status_code=status_code,
            error=error,
        )
        # Shielded (briefly): a delivery that went through is worth recording even while
        # shutting down; one not recorded is attempted again once its lease runs out.
        with trio.CancelScope(shield=True), trio.move_on_after(RECORD_GRACE):
            try:
                if not await self.store.finish_webhook_delivery(result):
                    log.warning(
                        "webhook %s to endpoint %s: the lease ran out before the result was "
                        "recorded; it will be attempted again",
                        delivery.event_id,
                        delivery.endpoint_id,
                    )
            except Exception as exc:
                log.warning(
                    "webhook %s to endpoint %s: cannot record the attempt (%s); it will be "
                    "attempted again once its lease runs out",
                    delivery.event_id,
                    delivery.endpoint_id,
                    exc,
                )

    async def _prune(self) -> None:
        before = utcnow() - dt.timedelta(seconds=self.config.retention)
        try:
            pruned = await self.store.prune_webhook_deliveries(delivered_before=before)
        except Exception as exc:
            log.warning("webhooks: cannot prune delivered deliveries: %s", exc)
            return
        if pruned:
            log.info("webhooks: forgot %d delivery(ies) delivered before %s", pruned, before)


async def _describe_refusal(response: httpx.Response) -> str:
    """``HTTP 503: <the start of the answer>``, reading no more than that of it."""
    snippet = b""
    async for chunk in response.aiter_bytes():
        snippet += chunk
        if len(snippet) >= ERROR_SNIPPET:
            break
    text = _one_line(snippet[:ERROR_SNIPPET].decode(errors="replace"))
    return f"HTTP {response.status_code}" + (f": {text}" if text else "")


def _one_line(text: str) -> str:
    return " ".join(text.split())
