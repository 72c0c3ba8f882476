"""One runtime: the store, crash recovery, the hub and metrics, assembled from settings.

``meshroom serve`` (:mod:`meshroom.server`) and ``Meshroom(app)``
(:mod:`meshroom.http.extension`) both run meshroom through
:func:`open_runtime`, so an embedded app gets exactly what the standalone
server gets: the same attendance settings, the same crash recovery, the same
metrics wiring.

With ``redis_url`` set, the process is also a cluster node
(:mod:`meshroom.cluster`): clients reach it through :attr:`Runtime.serve`, and
the service layer's host controls reach whichever node runs the room.

Task tree::

    open_runtime                 (a nursery of its own, for the block)
    ├── WebhookDeliverer.run     drains the webhook outbox (a nursery of attempts)
    ├── Hub.run                  the leave writer, heartbeats, and every room
    │   └── Room.run             a nursery of the room's peers' tasks
    └── ClusterNode.run          (with redis_url) leases, relay, commands, recovery
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import trio

from .config import ConfigError, Settings
from .core import Hub
from .metrics import Metrics
from .service import MeetingService
from .store import SqlStore, StoreError
from .store.journal import Journal, replay
from .webhooks import WebhookConfigError, WebhookService, sync_configured_endpoints

if TYPE_CHECKING:
    from .webhooks.delivery import WebhookDeliverer

if TYPE_CHECKING:
    from .cluster import ClusterNode

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Runtime:
    """Everything a running meshroom consists of; transports and the HTTP API use it."""

    settings: Settings
    store: SqlStore
    hub: Hub
    metrics: Metrics
    service: MeetingService
    webhooks: WebhookService
    deliverer: WebhookDeliverer
    cluster: ClusterNode | None = None

    async def shutdown(self) -> None:
        """Close every peer (a cluster node first sends them to other nodes); idempotent."""
        if self.cluster is not None:
            await self.cluster.drain()
        await self.hub.shutdown()
        if self.cluster is not None:
            await self.cluster.leave()

    @property
    def serve(self) -> Callable[..., Awaitable[None]]:
        """What transports hand each client connection to (``Hub.serve``'s signature)."""
        return self.cluster.serve if self.cluster is not None else self.hub.serve


@asynccontextmanager
async def open_runtime(settings: Settings) -> AsyncIterator[Runtime]:
    """Open the store, recover crashed attendance, run the hub; all closed on the way out.

    On exit every peer is told and closed (``server:shutdown``, 1001), queued
    leaves are written, and the store is closed.

    Raises:
        ConfigError: a setting or the database is unusable (a one-line message).
    """
    hub_config = settings.hub_config()
    attendance = settings.attendance_config()
    keys = settings.token_keys()
    store = open_store(settings)
    try:
        await store.open()
    except StoreError as exc:
        await store.close()
        raise ConfigError(
            f"cannot open the database {safe_url(settings.database_url)}: {exc}"
        ) from None
    journal = Journal(path) if (path := settings.journal_path()) else None
    try:
        # Before anything below writes events (the journal's leaves, crash recovery), so
        # that the configured endpoints get them.
        await _configure_webhooks(store, settings)
        if journal is not None:
            try:
                await journal.open()
            except Exception as exc:
                raise ConfigError(
                    f"cannot open the attendance journal {path} "
                    f"({settings.named('attendance_journal')}): {exc}"
                ) from None
            # What the database missed before the last stop goes in before recovery
            # closes dangling rows: their last-seen times and leaves are then right.
            await replay(journal, store)
        cluster = settings.cluster_config()
        # Alone, no peer can be live at start: every open row is a crash's. In a cluster,
        # only rows no node has stamped for a while are (their node died).
        stale_after = _stale_after(settings) if cluster is not None else None
        await recover_attendance(store, stale_after)
        hub = Hub(store, keys, hub_config, attendance=attendance, journal=journal)
        metrics = Metrics()
        metrics.observe(hub)
        store.on_call = metrics.db_call
        # Imported here: the CLI's one-shot commands import this module, not the HTTP client.
        from .webhooks.delivery import WebhookDeliverer

        deliverer = WebhookDeliverer(
            store, settings.delivery_config(), on_attempt=metrics.webhook_attempt
        )
        # Events this process commits wake the worker at once (others' are polled for).
        store.on_outbox_write = deliverer.wake
        async with AsyncExitStack() as stack:
            client = None
            if cluster is not None and settings.redis_url is not None:
                from .cluster import open_client, safe_redis_url

                try:
                    client = await stack.enter_async_context(
                        open_client(settings.redis_url, cluster.prefix, cluster.node_id)
                    )
                except Exception as exc:
                    raise ConfigError(
                        f"cannot join the cluster at {safe_redis_url(settings.redis_url)} "
                        f"({settings.named('redis_url')}): {exc}"
                    ) from None
            async with trio.open_nursery() as nursery:
                await nursery.start(deliverer.run)
                await nursery.start(hub.run)
                node = None
                rooms: Any = hub
                if cluster is not None and client is not None:
                    from .cluster import ClusterNode, ClusterRooms

                    node = ClusterNode(client, hub, cluster)
                    await nursery.start(node.run)
                    nursery.start_soon(_recover_dead_nodes_rows, store, stale_after)
                    rooms = ClusterRooms(client, store, hub)
                    log.info(
                        "cluster node %s (Redis %s)", cluster.node_id, safe_redis_url(client.url)
                    )
                runtime = Runtime(
                    settings,
                    store,
                    hub,
                    metrics,
                    MeetingService(store, keys, rooms),
                    WebhookService(store),
                    deliverer,
                    node,
                )
                try:
                    yield runtime
                finally:
                    with (
                        trio.CancelScope(shield=True),
                        trio.move_on_after(settings.close_timeout + 5),
                    ):
                        await runtime.shutdown()
                    nursery.cancel_scope.cancel()
    finally:
        store.on_outbox_write = None
        with trio.CancelScope(shield=True):
            if journal is not None:
                await journal.close()
            await store.close()


def open_store(settings: Settings) -> SqlStore:
    """The configured store, or a ConfigError naming what is wrong with the URL."""
    try:
        return SqlStore(
            settings.database_url,
            pool_size=settings.db_pool_size,
            auto_migrate=settings.auto_migrate,
        )
    except ModuleNotFoundError as exc:
        raise ConfigError(
            f"the database driver {exc.name!r} is not installed "
            "(for PostgreSQL: pip install 'meshroom[postgres]')"
        ) from None
    except Exception as exc:
        raise ConfigError(f"invalid database URL {settings.database_url!r}: {exc}") from None


async def _configure_webhooks(store: SqlStore, settings: Settings) -> None:
    """Sync the settings' webhook endpoints into the database (ConfigError if unusable)."""
    try:
        await sync_configured_endpoints(
            store, settings.webhook_endpoints(), now=dt.datetime.now(dt.UTC)
        )
    except WebhookConfigError as exc:
        raise ConfigError(f"{settings.named('webhooks')}: {exc}") from None


def _stale_after(settings: Settings) -> dt.timedelta:
    """How long a cluster's row may go unstamped before its node counts as dead."""
    return dt.timedelta(seconds=3 * settings.attendance_heartbeat + settings.node_ttl)


async def _recover_dead_nodes_rows(store: SqlStore, stale_after: dt.timedelta | None) -> None:
    """In a cluster, close the rows of nodes that died, as recovery at their start would."""
    assert stale_after is not None
    while True:
        await trio.sleep(stale_after.total_seconds() / 3)
        try:
            await recover_attendance(store, stale_after, quiet=True)
        except StoreError as exc:
            log.info("cluster: recovery of dead nodes' rows failed (%s); retrying", exc)


async def recover_attendance(
    store: SqlStore, stale_after: dt.timedelta | None = None, *, quiet: bool = False
) -> None:
    """Close the rows an unclean stop left open (no peer of this process is live yet)."""
    stale_before = dt.datetime.now(dt.UTC) - stale_after if stale_after is not None else None
    recovered = await store.recover_open_attendance(stale_before=stale_before)
    if recovered:
        log.warning(
            "crash recovery: closed %d attendance row(s) left open by an unclean stop, "
            "each at its last heartbeat (closed_by_recovery)",
            recovered,
        )
    elif not quiet:
        log.info("crash recovery: no attendance rows were left open")


def safe_url(url: str) -> str:
    """A database URL fit for logs: the password hidden."""
    try:
        import sqlalchemy as sa

        return sa.make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<invalid url>"
