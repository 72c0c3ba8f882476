"""Prometheus metrics. One registry per hub, so several hubs (tests, embedding) never collide."""

from __future__ import annotations

from collections import deque

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from .protocol import LeaveReason

CONTENT_TYPE = CONTENT_TYPE_LATEST

_SIGNALS = ("signal:offer", "signal:answer", "signal:ice")


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.rooms = Gauge("meshroom_rooms", "Live rooms", registry=r)
        self.peers = Gauge("meshroom_peers", "Connected, admitted peers", registry=r)
        self.joins = Counter("meshroom_joins", "Peers admitted to a room", registry=r)
        self.rejections = Counter(
            "meshroom_join_rejections", "Join attempts refused, by reason", ["reason"], registry=r
        )
        self.leaves = Counter(
            "meshroom_leaves", "Peers that left a room, by reason", ["reason"], registry=r
        )
        self.messages = Counter(
            "meshroom_messages_relayed", "Signals relayed, by event", ["event"], registry=r
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
        self.resumes = Counter(
            "meshroom_resumes",
            "Resume attempts: resumed (a peer kept its place) or refused (joined afresh)",
            ["result"],
            registry=r,
        )
        # Resolved once: labelled children are looked up per message otherwise.
        self._relayed = {event: self.messages.labels(event) for event in _SIGNALS}
        self._left = {reason: self.leaves.labels(reason.value) for reason in LeaveReason}
        self._relay_count = 0

    def room_opened(self) -> None:
        self.rooms.inc()

    def room_closed(self) -> None:
        self.rooms.dec()

    def admitted(self) -> None:
        self.joins.inc()

    def peer_joined(self) -> None:
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

    def relayed(self, event: str) -> int:
        """Count one relayed signal; returns the running count, used to sample latency."""
        self._relayed[event].inc()
        self._relay_count += 1
        return self._relay_count

    def observe_relay(self, samples: deque[float], count: int, now: float) -> None:
        for _ in range(count):
            self.relay_latency.observe(now - samples.popleft())

    def db_call(self, operation: str, seconds: float) -> None:
        self.db_latency.labels(operation).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
