"""Limits a service open to the internet needs: rates, connection counts, Origins.

Pure bookkeeping, no I/O: the room core applies :class:`RateLimiter` to every
frame a peer sends, the transports apply :class:`ConnectionSlots` and
:class:`OriginPolicy` during the WebSocket handshake.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable
from urllib.parse import urlsplit

import trio

Clock = Callable[[], float]


class TokenBucket:
    """``burst`` tokens, refilled at ``rate`` per second; each event takes one."""

    __slots__ = ("_clock", "_last", "burst", "rate", "tokens")

    def __init__(self, rate: float, burst: float, *, clock: Clock = trio.current_time) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self._clock = clock
        self._last = clock()

    def take(self) -> bool:
        """Take a token if there is one; False (nothing taken) if the bucket is empty."""
        now = self._clock()
        self.tokens = min(self.burst, self.tokens + (now - self._last) * self.rate)
        self._last = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


class Verdict(enum.Enum):
    ALLOW = "allow"  # handle the frame
    DROP = "drop"  # answer RATE_LIMITED and drop the frame
    CLOSE = "close"  # sustained abuse: close the connection (4012)


class RateLimiter:
    """A per-connection token bucket, and a judge of sustained abuse.

    Frames over the bucket are dropped. The dropped frames fill a second bucket
    of the same size and rate: a client that keeps sending at more than twice
    the rate empties it, and is then disconnected. A client that merely bursts
    now and then loses a few frames and stays.
    """

    __slots__ = ("_abuse", "_frames")

    def __init__(self, rate: float, burst: float, *, clock: Clock = trio.current_time) -> None:
        self._frames = TokenBucket(rate, burst, clock=clock)
        self._abuse = TokenBucket(rate, burst, clock=clock)

    def check(self) -> Verdict:
        if self._frames.take():
            return Verdict.ALLOW
        return Verdict.DROP if self._abuse.take() else Verdict.CLOSE


def rate_limiter(rate: float, burst: float) -> RateLimiter | None:
    """A limiter, or None when ``rate`` is 0 (no limit)."""
    return RateLimiter(rate, max(burst, 1.0)) if rate > 0 else None


class ConnectionSlots:
    """How many connections this process holds, against a maximum (0 = no maximum).

    ``handshaking`` counts connections still sending their request head to the
    listener's handshake gate (written by the gate's thread alone); they hold a slot too.
    """

    __slots__ = ("handshaking", "limit", "open", "refused")

    def __init__(self, limit: int = 0) -> None:
        self.limit = limit
        self.open = 0
        self.handshaking = 0
        self.refused = 0

    @property
    def full(self) -> bool:
        return bool(self.limit) and self.open + self.handshaking >= self.limit

    def acquire(self) -> bool:
        """Take a slot; False (and counted as refused) if every slot is taken."""
        if self.full:
            self.refused += 1
            return False
        self.open += 1
        return True

    def release(self) -> None:
        self.open -= 1


class OriginPolicy:
    """The browser Origins allowed to open a signaling WebSocket.

    An empty allowlist allows every Origin. A request without an ``Origin``
    header is not from a browser page (browsers always send one with a
    WebSocket handshake) and is allowed: Origin checks protect browsers' users
    from other sites' pages, they do not authenticate anyone; the access token
    does that. Entries are ``scheme://host[:port]``; ``scheme://*.domain`` allows
    every subdomain of ``domain``; ``null`` must be listed to allow opaque origins.
    """

    def __init__(self, allowed: Iterable[str] = ()) -> None:
        self._exact: set[str] = set()
        self._suffixes: list[tuple[str, str]] = []  # (scheme, ".domain[:port]")
        for entry in allowed:
            entry = entry.strip()
            if not entry:
                continue
            if "://*." in entry:
                scheme, rest = entry.split("://*.", 1)
                self._suffixes.append((scheme.lower(), "." + _normalise_host(scheme, rest)))
            else:
                self._exact.add(normalise_origin(entry))

    @property
    def allows_all(self) -> bool:
        return not self._exact and not self._suffixes

    def allows(self, origin: str | None) -> bool:
        if origin is None or self.allows_all:
            return True
        normal = normalise_origin(origin)
        if normal in self._exact:
            return True
        scheme, _, host = normal.partition("://")
        return any(scheme == s and host.endswith(suffix) for s, suffix in self._suffixes)


_DEFAULT_PORTS = {"http": "80", "https": "443", "ws": "80", "wss": "443"}


def normalise_origin(origin: str) -> str:
    """``HTTPS://Example.com:443/`` -> ``https://example.com``; ``null`` stays ``null``."""
    origin = origin.strip()
    if origin.lower() == "null":
        return "null"
    parts = urlsplit(origin)
    if not parts.scheme or not parts.netloc:
        return origin.lower().rstrip("/")
    return f"{parts.scheme.lower()}://{_normalise_host(parts.scheme, parts.netloc)}"


def _normalise_host(scheme: str, netloc: str) -> str:
    netloc = netloc.lower().rstrip("/")
    host, sep, port = netloc.rpartition(":")
    if sep and port.isdigit() and port == _DEFAULT_PORTS.get(scheme.lower()):
        return host
    return netloc
