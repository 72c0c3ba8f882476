"""The delivery policy (timeouts, retries, concurrency) and what an attempt came to.

Apart from the worker (:mod:`.delivery`), so that reading settings does not import
the HTTP client.
"""

from __future__ import annotations

import datetime as dt
import random
from dataclasses import dataclass

# Each retry delay is its nominal value times a random factor in [1 - JITTER, 1 + JITTER].
JITTER = 0.2


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True, slots=True)
class DeliveryConfig:
    # Seconds an endpoint has to answer (connection included); past it, the attempt failed.
    timeout: float = 10.0
    # Attempts per delivery; the last failure makes it dead.
    max_attempts: int = 20
    # Seconds before the first retry, then doubled per attempt up to retry_max.
    retry_initial: float = 5.0
    retry_max: float = 7200.0
    # Deliveries in flight at once per endpoint (in this process).
    concurrency: int = 4
    # Seconds between looks for deliveries other processes made due.
    poll_interval: float = 5.0
    # Seconds delivered deliveries are kept (for listing); 0 = forever.
    retention: float = 7 * 86400.0

    @property
    def lease(self) -> dt.timedelta:
        """How long a claim holds a delivery: an attempt, then recording its result."""
        return dt.timedelta(seconds=2 * self.timeout + 1)

    def retry_delay(self, attempts: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after the ``attempts``-th failed attempt (1-based), jittered."""
        nominal = min(self.retry_max, self.retry_initial * 2.0 ** min(attempts - 1, 60))
        return nominal * (rng or random).uniform(1 - JITTER, 1 + JITTER)


@dataclass(frozen=True, slots=True)
class Attempt:
    """What one attempt came to, for metrics and logs."""

    endpoint_id: str
    event_type: str
    outcome: str  # delivered | failed (will be retried) | dead
    seconds: float
    status_code: int | None
