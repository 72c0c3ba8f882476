"""A connection to the cluster's Redis: calls to other nodes, and lookups of who runs a room.

:class:`ClusterClient` is what every participant of the cluster has: a node
(:mod:`meshroom.cluster.node`) and the CLI alike. It owns one Redis client and
one subscription to its own channel (``P:to:<id>``), and hands each envelope
that arrives there to a handler; replies to its own calls it resolves itself.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import coredis
import coredis.exceptions
import trio
from coredis.retry import (
    CompositeRetryPolicy,
    ConstantRetryPolicy,
    ExponentialBackoffRetryPolicy,
)

from .leases import split_lease
from .wire import WireError, pack, unpack

log = logging.getLogger(__name__)

# Redis calls that do not answer within this long count as Redis being unreachable.
REDIS_CALL_TIMEOUT = 2.0
# Waits between attempts to subscribe again after the subscription's connection broke.
RESUBSCRIBE_FIRST_DELAY = 0.05
RESUBSCRIBE_MAX_DELAY = 1.0
# coredis makes a lost subscription again by itself; its default waits grow to 16 s, and
# a node is unreachable while it waits. These grow to 1 s.
RESUBSCRIBE_POLICY = CompositeRetryPolicy(
    ExponentialBackoffRetryPolicy(
        (coredis.exceptions.ConnectionError,),
        retries=None,
        base_delay=RESUBSCRIBE_FIRST_DELAY,
        max_delay=RESUBSCRIBE_MAX_DELAY,
        jitter=True,
    ),
    ConstantRetryPolicy((TimeoutError,), retries=2, delay=0.1),
)

Handler = Callable[[dict[str, Any], list[bytes]], None]


class ClusterUnavailable(Exception):
    """Redis cannot be reached (or did not answer in time); the message says which."""


class RemoteError(Exception):
    """A call to another node failed there: ``kind`` names the error it raised."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


class ClusterClient:
    def __init__(
        self, redis: coredis.Redis[bytes], prefix: str, client_id: str, url: str = ""
    ) -> None:
        self.redis = redis
        self.url = url
        self.prefix = prefix
        self.id = client_id
        self.handler: Handler | None = None
        self._calls: dict[str, trio.MemorySendChannel[dict[str, Any]]] = {}
        self._call_ids = itertools.count(1)

    # Names

    def node_key(self, node: str) -> str:
        return f"{self.prefix}:node:{node}"

    def room_key(self, meeting_id: str) -> str:
        return f"{self.prefix}:room:{meeting_id}"

    def epoch_key(self, meeting_id: str) -> str:
        return f"{self.prefix}:epoch:{meeting_id}"

    @property
    def boot_key(self) -> str:
        return f"{self.prefix}:boot"

    def channel(self, node: str) -> str:
        return f"{self.prefix}:to:{node}"

    # Redis, with one error type and a deadline

    async def command(self, what: str, call: Callable[[], Any]) -> Any:
        try:
            with trio.fail_after(REDIS_CALL_TIMEOUT):
                return await call()
        except trio.TooSlowError:
            raise ClusterUnavailable(
                f"Redis did not answer {what} within {REDIS_CALL_TIMEOUT:g} s"
            ) from None
        except (coredis.exceptions.RedisError, OSError) as exc:
            raise ClusterUnavailable(f"Redis failed {what}: {exc}") from None

    async def publish(self, node: str, header: dict[str, Any], payloads: list[bytes] = []) -> None:  # noqa: B006
        """Send an envelope to ``node``.

        Raises:
            ClusterUnavailable: Redis is unreachable, or nobody listens on the node's
                channel (dead, or its subscription is being made again): pub/sub would
                drop the envelope silently.
        """
        data = pack(header, payloads)
        receivers = await self.command(
            "a publish", lambda: self.redis.publish(self.channel(node), data)
        )
        if not receivers:
            raise ClusterUnavailable(f"node {node} is not listening")

    # Lookups

    async def owner_of(self, meeting_id: str) -> tuple[str, int] | None:
        """The live node running the room and its epoch, or None if no live node runs it."""
        value = await self.command("a lookup", lambda: self.redis.get(self.room_key(meeting_id)))
        if value is None:
            return None
        node, epoch = split_lease(value.decode())
        return (node, epoch) if await self.alive(node) else None

    async def alive(self, node: str) -> bool:
        found = await self.command("a lookup", lambda: self.redis.exists([self.node_key(node)]))
        return bool(found)

    async def nodes(self) -> dict[str, dict[str, Any]]:
        """The registered nodes: id → what each registered (pid, host, draining)."""
        pattern = self.node_key("*")
        found: dict[str, dict[str, Any]] = {}

        async def scan() -> None:
            async for key in self.redis.scan_iter(match=pattern, count=500):
                value = await self.redis.get(key)
                if value is None:
                    continue  # expired between the scan and the read
                try:
                    info = json.loads(value)
                except ValueError:
                    info = {}
                found[key.decode().removeprefix(self.node_key(""))] = (
                    info if isinstance(info, dict) else {}
                )

        await self.command("a scan", scan)
        return dict(sorted(found.items()))

    # Calls: a command to the node running a room, answered on our own channel

    async def call(self, node: str, op: str, args: dict[str, Any], *, wait: float = 10.0) -> Any:
        """Run ``op`` on ``node`` and return its result.

        Raises:
            RemoteError: it failed there (``kind`` names the error).
            ClusterUnavailable: Redis is unreachable, or no answer came within ``wait`` seconds.
        """
        call_id = f"{self.id}:{next(self._call_ids)}"
        send, receive = trio.open_memory_channel[dict[str, Any]](1)
        self._calls[call_id] = send
        try:
            await self.publish(
                node, {"k": "cmd", "id": call_id, "from": self.id, "op": op, "args": args}
            )
            with trio.move_on_after(wait):
                reply = await receive.receive()
                if reply.get("ok"):
                    return reply.get("result")
                raise RemoteError(str(reply.get("error")), str(reply.get("message")))
            raise ClusterUnavailable(f"node {node} did not answer {op!r} within {wait:g} s")
        finally:
            del self._calls[call_id]

    async def reply(
        self, header: dict[str, Any], *, result: Any = None, error: BaseException | None = None
    ) -> None:
        answer: dict[str, Any] = {"k": "reply", "id": header["id"]}
        if error is None:
            answer.update(ok=True, result=result)
        else:
            answer.update(ok=False, error=type(error).__name__, message=str(error))
        await self.publish(str(header["from"]), answer)

    # The subscription

    async def listen(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Receive what is published to this client's channel until cancelled.

        A subscription lost with its connection (Redis restarted, say) is made again;
        what was published meanwhile is lost, which the relay's sequence numbers and
        the calls' deadlines notice.
        """
        started = False
        delay = RESUBSCRIBE_FIRST_DELAY
        while True:
            try:
                async with self.redis.pubsub(
                    channels=[self.channel(self.id)], retry_policy=RESUBSCRIBE_POLICY
                ) as subscription:
                    if not started:
                        task_status.started()
                        started = True
                    delay = RESUBSCRIBE_FIRST_DELAY
                    async for message in subscription:
                        self._take(message)
            except BaseException as exc:
                cause = _redis_failure(exc)
                if cause is None or not started:
                    raise
                log.warning("cluster: lost the subscription (%s); subscribing again", cause)
            await trio.sleep(delay)
            delay = min(delay * 2, RESUBSCRIBE_MAX_DELAY)

    def _take(self, message: Any) -> None:
        if message["type"] != "message":
            return
        data = message["data"]
        if not isinstance(data, bytes):
            return
        try:
            header, payloads = unpack(data)
        except WireError as exc:
            log.warning("dropped an envelope that does not parse: %s", exc)
            return
        if header["k"] == "reply":
            waiting = self._calls.get(str(header.get("id")))
            if waiting is not None:
                waiting.send_nowait(header)
        elif self.handler is not None:
            self.handler(header, payloads)


def redis_client(url: str) -> coredis.Redis[bytes]:
    return coredis.Redis.from_url(
        url, decode_responses=False, connect_timeout=REDIS_CALL_TIMEOUT, stream_timeout=math.inf
    )


# Longest wait for the Redis client to close, once the block using it is over.
CLOSE_TIMEOUT = 5.0


@asynccontextmanager
async def open_client(
    url: str, prefix: str, client_id: str | None = None
) -> AsyncIterator[ClusterClient]:
    """A client subscribed to its own channel, for the block.

    Raises:
        ClusterUnavailable: Redis cannot be reached now.
    """
    client_id = client_id or f"cli-{uuid.uuid4().hex[:12]}"
    done = trio.Event()
    failure: BaseException | None = None
    async with trio.open_nursery() as nursery:
        try:
            client = await nursery.start(_own_client, url, prefix, client_id, done)
        except BaseException as exc:
            # coredis connects inside task groups of its own: a refused connection
            # comes as a group.
            failure = _redis_failure(exc)
            if failure is None:
                raise
        if failure is None:
            try:
                yield client
            finally:
                done.set()
    if failure is not None:
        raise ClusterUnavailable(f"cannot reach Redis at {safe_redis_url(url)}: {failure}")


async def _own_client(
    url: str,
    prefix: str,
    client_id: str,
    done: trio.Event,
    *,
    task_status: trio.TaskStatus[ClusterClient] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Hold the Redis client and its subscription until ``done``.

    Shielded: coredis's pool and subscription live in task groups of their own, and
    cancelling them from outside at the same time (an error in the block) makes the
    subscription's clean-up write to a connection already closed. Here they end in
    order, the subscription first, within CLOSE_TIMEOUT of ``done``.
    """
    with trio.CancelScope(shield=True) as guard:
        async with redis_client(url) as redis:
            client = ClusterClient(redis, prefix, client_id, url)
            await client.command("a ping", redis.ping)
            async with trio.open_nursery() as nursery:
                await nursery.start(client.listen)
                task_status.started(client)
                await done.wait()
                guard.deadline = trio.current_time() + CLOSE_TIMEOUT
                nursery.cancel_scope.cancel()


def _redis_failure(exc: BaseException) -> BaseException | None:
    """The Redis or network error ``exc`` is (or a group holds only), else None."""
    if isinstance(exc, ClusterUnavailable):
        return exc
    if isinstance(exc, coredis.exceptions.RedisError | OSError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        causes = [_redis_failure(e) for e in exc.exceptions]
        if causes and all(c is not None for c in causes):
            return causes[0]
    return None


def safe_redis_url(url: str) -> str:
    """A Redis URL fit for logs: any password hidden."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = "***@" + rest.rsplit("@", 1)[1]
    return f"{scheme}{sep}{rest}"
