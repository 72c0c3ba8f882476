"""Prometheus metrics, fed by the core's events.

One registry per runtime, so several (tests, embedding) never collide. The core
knows nothing of this module: :meth:`Metrics.observe` subscribes to a hub's
:class:`~meshroom.core.events.EventBus`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from .core import Hub, events
from .protocol import LeaveReason
from .webhooks import Attempt

CONTENT_TYPE = CONTENT_TYPE_LATEST

_SIGNALS = ("signal:offer", "signal:answer", "signal:ice")


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.rooms = Gauge("meshroom_rooms", "Live rooms", registry=r)
        self.peers = Gauge("meshroom_peers", "Connected, admitted peers", registry=r)
        self.connections = Gauge(
            "meshroom_connections",
            "Connections holding a slot (max-connections), handshakes in the gate included",
            registry=r,
        )
        self.handshakes = Gauge(
            "meshroom_handshakes_in_progress",
            "Connections still sending their HTTP request head to the standalone listener",
            registry=r,
        )
        self.joins = Counter("meshroom_joins", "Peers admitted to a room", registry=r)
        self.rejections = Counter(
            "meshroom_join_rejections", "Join attempts refused, by reason", ["reason"], registry=r
        )
        self.leaves = Counter(
            "meshroom_leaves", "Peers that left a room, by reason", ["reason"], registry=r
        )
        self.relay_latency = Histogram(
            "meshroom_relay_latency_seconds",
            "Time from relaying a signal to writing it to the target's socket (sampled)",
            buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1),
            registry=r,
        )
        self.db_latency = Histogram(
            "meshroom_db_call_seconds",
            "Duration of database calls, by operation",
            ["operation"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5),
            registry=r,
        )
        self._db_latency_by_operation: dict[str, Histogram] = {}
        self.resumes = Counter(
            "meshroom_resumes",
            "Resume attempts: resumed (a peer kept its place) or refused (joined afresh)",
            ["result"],
            registry=r,
        )
        self.webhook_deliveries = Counter(
            "meshroom_webhook_deliveries",
            "Webhook delivery attempts, by endpoint, event type and outcome: delivered, "
            "failed (to be retried) or dead (the last attempt failed)",
            ["endpoint", "event_type", "outcome"],
            registry=r,
        )
        self.webhook_latency = Histogram(
            "meshroom_webhook_delivery_seconds",
            "Duration of webhook delivery attempts (until the endpoint answered or the "
            "attempt failed), by endpoint",
            ["endpoint"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        # Resolved once: labelled children are looked up per message otherwise.
        self._left = {reason: self.leaves.labels(reason.value) for reason in LeaveReason}

    def observe(self, hub: Hub) -> None:
        """Count what ``hub`` reports from now on.

        Relayed signals are the one hot path: the hub counts them in a plain dict and
        they are read at scrape time, rather than one event per signal.
        """
        self.registry.register(_RelayedCollector(hub.relay_counts))
        slots = hub.slots
        self.connections.set_function(lambda: slots.open + slots.handshaking)
        self.handshakes.set_function(lambda: slots.handshaking)
        bus = hub.events
        bus.on(events.RoomOpened, lambda _: self.rooms.inc())
        bus.on(events.RoomClosed, lambda _: self.rooms.dec())
        bus.on(events.PeerJoined, self._on_joined)
        bus.on(events.PeerLeft, lambda e: self.peer_left(e.reason))
        bus.on(events.JoinRejected, lambda e: self.rejected(e.reason))
        bus.on(events.PeerResumed, lambda _: self.resumed())
        bus.on(events.ResumeRefused, lambda _: self.resume_refused())
        bus.on(events.RelayLatency, lambda e: self.relay_latency.observe(e.seconds))

    def _on_joined(self, _: events.PeerJoined) -> None:
        self.joins.inc()
        self.peers.inc()

    def peer_left(self, reason: LeaveReason) -> None:
        self.peers.dec()
        self._left[reason].inc()

    def resumed(self) -> None:
        self.resumes.labels("resumed").inc()

    def resume_refused(self) -> None:
        self.resumes.labels("refused").inc()

    def rejected(self, reason: str) -> None:
        self.rejections.labels(reason).inc()

    def webhook_attempt(self, attempt: Attempt) -> None:
        self.webhook_deliveries.labels(
            attempt.endpoint_id, attempt.event_type, attempt.outcome
        ).inc()
        self.webhook_latency.labels(attempt.endpoint_id).observe(attempt.seconds)

    def db_call(self, operation: str, seconds: float) -> None:
        # Called for every join (and every admission batch): the labelled child is kept,
        # not looked up under the metric's lock each time.
        child = self._db_latency_by_operation.get(operation)
        if child is None:
            child = self._db_latency_by_operation[operation] = self.db_latency.labels(operation)
        child.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _RelayedCollector(Collector):
    """``meshroom_messages_relayed_total{event}``, read from the hub's counts when scraped."""

    def __init__(self, counts: Mapping[str, int]) -> None:
        self._counts = counts

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            "meshroom_messages_relayed", "Signals relayed, by event", labels=["event"]
        )
        for event in _SIGNALS:
            family.add_metric([event], self._counts.get(event, 0))
        yield family
