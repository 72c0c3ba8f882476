"""The standalone server: store + hub + WebSocket listener, with graceful shutdown.

Task tree (every task has an owner)::

    Server.run
    ├── Hub.run                       rooms, each a nursery of its peers' tasks
    ├── connection handlers           one per client connection (Hub.serve)
    └── accept loop                   serve_websocket
"""

from __future__ import annotations

import logging
import math
import signal
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from .config import ConfigError, Settings
from .core import Hub
from .store import SqlStore, StoreError
from .transports.websocket import Heartbeat, Upgrade, WebSocketConnection, serve_websocket

log = logging.getLogger(__name__)

SIGNALING_PATH = "/meetings"


class Server:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.hub: Hub | None = None
        self.port: int | None = None
        self.http_port: int | None = None
        self._http_done = trio.Event()
        self._stop = trio.Event()

    @property
    def url(self) -> str:
        host = self.settings.host
        host = f"[{host}]" if ":" in host else host
        scheme = "wss" if self.settings.tls_cert else "ws"
        return f"{scheme}://{host}:{self.port}{SIGNALING_PATH}"

    def request_shutdown(self) -> None:
        self._stop.set()

    async def run(
        self,
        *,
        shutdown_trigger: Callable[[], Awaitable[None]] | None = None,
        task_status: trio.TaskStatus[Server] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve until ``shutdown_trigger`` returns or :meth:`request_shutdown` is called.

        Raises:
            ConfigError: a setting, the database or the port is unusable (one-line message).
        """
        settings = self.settings
        hub_config = settings.hub_config()
        attendance = settings.attendance_config()
        keys = settings.token_keys()
        tls = settings.ssl_context()
        origins = settings.origin_policy()
        heartbeat = (
            Heartbeat(settings.heartbeat_interval, settings.heartbeat_timeout)
            if settings.heartbeat_interval > 0
            else None
        )
        store = open_store(settings)
        try:
            await store.open()
        except StoreError as exc:
            await store.close()
            raise ConfigError(
                f"cannot open the database {_safe_url(settings.database_url)}: {exc}"
            ) from None
        try:
            listeners = await trio.open_tcp_listeners(settings.port, host=settings.host)
        except OSError as exc:
            await store.close()
            raise ConfigError(
                f"cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc}"
            ) from None
        # Only now that the port is ours: a second server started by mistake must not
        # close the first one's rows. (Two servers on one database are not supported.)
        await _recover_attendance(store)
        self.port = listeners[0].socket.getsockname()[1]
        hub = self.hub = Hub(store, keys, hub_config, attendance=attendance)
        served: list[trio.abc.Listener[Any]] = list(listeners)
        if tls is not None:
            # https_compatible: browsers hang up without TLS close_notify; that is no error.
            served = [trio.SSLListener(lst, tls, https_compatible=True) for lst in listeners]

        async def handle(conn: WebSocketConnection, upgrade: Upgrade) -> None:
            await hub.serve(conn, token=upgrade.token, resume_token=upgrade.resume_token)

        http_stop = trio.Event()
        if not settings.http_port:
            self._http_done.set()
        try:
            async with trio.open_nursery() as root:
                await root.start(hub.run)
                if settings.http_port:
                    await self._start_http(root, hub, http_stop)
                async with trio.open_nursery() as handlers:
                    async with trio.open_nursery() as acceptor:
                        await acceptor.start(
                            lambda task_status: serve_websocket(
                                handle,
                                served,
                                path=SIGNALING_PATH,
                                max_message_bytes=settings.max_message_bytes,
                                handshake_timeout=settings.auth_timeout,
                                heartbeat=heartbeat,
                                origins=origins,
                                slots=hub.slots,
                                handler_nursery=handlers,
                                task_status=task_status,
                            )
                        )
                        log.info(
                            "meshroom signaling on %s, HTTP API on %s (database %s)",
                            self.url,
                            self.http_url or "(off)",
                            _safe_url(settings.database_url),
                        )
                        task_status.started(self)
                        async with trio.open_nursery() as waiter:
                            waiter.start_soon(_set_when_done, shutdown_trigger, self._stop)
                            await self._stop.wait()
                            waiter.cancel_scope.cancel()
                        log.info("shutting down: closing every peer")
                        acceptor.cancel_scope.cancel()  # stop accepting first
                    with trio.move_on_after(settings.close_timeout + 5):
                        await hub.shutdown()
                    handlers.cancel_scope.cancel()
                http_stop.set()
                with trio.move_on_after(settings.close_timeout):
                    await self._http_done.wait()
                root.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                await store.close()

    async def _start_http(self, nursery: trio.Nursery, hub: Hub, stop: trio.Event) -> None:
        from hypercorn.config import Config
        from hypercorn.trio import serve

        from .http import create_app

        settings = self.settings
        config = Config()
        host = f"[{settings.host}]" if ":" in settings.host else settings.host
        config.bind = [f"{host}:{settings.http_port}"]
        config.accesslog = None
        config.errorlog = logging.getLogger("hypercorn.error")  # through meshroom's logging setup
        # By the time hypercorn is told to stop, the hub has closed every peer, so only
        # short HTTP requests can be in flight. Waiting longer would only wait for
        # hypercorn's WebSocket ping tasks, which outlive their closed connections.
        config.graceful_timeout = min(1.0, settings.close_timeout)
        # Hypercorn buffers a whole message before the app sees it; the app then
        # answers FRAME_TOO_LARGE for anything over max_message_bytes.
        config.websocket_max_message_size = max(4 * settings.max_message_bytes, 1 << 20)
        if settings.tls_cert:
            config.certfile, config.keyfile = settings.tls_cert, settings.tls_key
        if settings.heartbeat_interval > 0:
            # Hypercorn pings every interval but never looks at the pongs; its read_timeout
            # drops a connection from which nothing (a pong included) arrived for that long.
            # So a dead Quart-route client goes within interval + timeout, as "disconnected"
            # (the app cannot tell it from a drop). read_timeout covers every HTTP read too,
            # which also bounds slow uploads.
            config.websocket_ping_interval = settings.heartbeat_interval
            config.read_timeout = math.ceil(
                settings.heartbeat_interval + settings.heartbeat_timeout
            )
        app = create_app(settings, hub=hub)

        async def serve_http(task_status: trio.TaskStatus[list[str]]) -> None:
            try:
                await serve(app, config, shutdown_trigger=stop.wait, task_status=task_status)
            finally:
                self._http_done.set()

        try:
            bound = await nursery.start(serve_http)
        except OSError as exc:
            raise ConfigError(
                f"cannot listen on {settings.host}:{settings.http_port}: {exc.strerror or exc}"
            ) from None
        self.http_port = int(bound[0].rsplit(":", 1)[1])

    @property
    def http_url(self) -> str | None:
        if self.http_port is None:
            return None
        host = self.settings.host
        host = f"[{host}]" if ":" in host else host
        scheme = "https" if self.settings.tls_cert else "http"
        return f"{scheme}://{host}:{self.http_port}"


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


async def _recover_attendance(store: SqlStore) -> None:
    """Close the rows an unclean stop left open (no peer of this server is live yet)."""
    recovered = await store.recover_open_attendance()
    if recovered:
        log.warning(
            "crash recovery: closed %d attendance row(s) left open by an unclean stop, "
            "each at its last heartbeat (closed_by_recovery)",
            recovered,
        )
    else:
        log.info("crash recovery: no attendance rows were left open")


async def _set_when_done(trigger: Callable[[], Awaitable[None]] | None, event: trio.Event) -> None:
    if trigger is not None:
        await trigger()
        event.set()


async def wait_for_signal() -> None:
    """Return on the first SIGINT or SIGTERM."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            log.info("received %s", signal.Signals(signum).name)
            return


def _safe_url(url: str) -> str:
    try:
        import sqlalchemy as sa

        return sa.make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<invalid url>"
