"""The standalone server: the runtime, the signaling listener and the HTTP app.

:meth:`Server.run` reads as what it does: open (validate settings, bind the
signaling port), start the runtime (store, recovery, hub), serve until
stopped, then drain (stop accepting, close every peer, stop HTTP).

Task tree (every task has an owner)::

    Server.run
    ├── open_runtime              store + Hub.run (rooms, each a nursery of its peers)
    └── serving
        ├── accept loop           serve_websocket, in a cancel scope of its own
        ├── connection handlers   one per client connection until it joins a room
        │                         (Hub.hand_over; the room's tasks own it from then on)
        └── HTTP                  hypercorn: REST API, Quart WebSocket, ops
"""

from __future__ import annotations

import gc
import logging
import math
import signal
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from .config import ConfigError, Settings
from .core import Hub
from .runtime import Runtime, open_runtime, safe_url
from .transports.frames import hard_message_limit
from .transports.socketio import SOCKETIO_PATH, endpoint_for
from .transports.websocket import Heartbeat, Upgrade, WebSocketConnection, serve_websocket

log = logging.getLogger(__name__)

SIGNALING_PATH = "/meetings"
# Container allocations (net of deallocations) between two young-generation collections;
# CPython's default is 700. See tune_gc.
GC_YOUNG_THRESHOLD = 20_000


def tune_gc() -> None:
    """Make the cyclic garbage collector cheap for a process holding thousands of peers.

    Measured (``python -m bench idle 5000 --cpu``): with CPython's defaults a third of
    the idle server's CPU went to the collector. Every read a peer waits on is a chain of
    coroutines that lives for seconds, long enough to be promoted to the oldest
    generation, so full collections of the whole heap (~0.4 s each at 5,000 peers) kept
    coming. Collecting the young generation every 20,000 allocations instead of 700
    lets most of those chains die before a collection sees them. And ``gc.freeze()``
    moves what start-up built (modules, the app, the store) out of every later scan.
    Cycles of garbage then wait a little longer to be freed: at most ~20,000 objects.
    The standalone server calls this; an application embedding meshroom keeps its own.
    """
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)


class Server:
    def __init__(self, settings: Settings, *, tune_gc: bool = True) -> None:
        """``tune_gc``: tune the process's garbage collector for many peers (see tune_gc);
        a process that runs more than this server (a test suite) may say no."""
        self.settings = settings
        self._tune_gc = tune_gc
        self.runtime: Runtime | None = None
        self.port: int | None = None
        self.http_port: int | None = None
        self._http_done = trio.Event()
        self._stop = trio.Event()

    @property
    def hub(self) -> Hub | None:
        return self.runtime.hub if self.runtime is not None else None

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
            ConfigError: a setting, the database or a port is unusable (one-line message).
        """
        settings = self.settings
        listeners = await self._listen()
        # The runtime starts only now that the port is ours: a second server started by
        # mistake must not run crash recovery over the first one's live rows.
        async with open_runtime(settings) as runtime:
            self.runtime = runtime
            if self._tune_gc:
                tune_gc()
            async with trio.open_nursery() as serving:
                http_stop = trio.Event()
                if settings.http_port is not None:
                    await self._start_http(serving, runtime, http_stop)
                else:
                    self._http_done.set()
                accepting = trio.CancelScope()
                await serving.start(self._accept, runtime, listeners, serving, accepting)
                log.info(
                    "meshroom signaling on %s, HTTP API on %s (database %s)",
                    self.url,
                    self.http_url or "(off)",
                    safe_url(settings.database_url),
                )
                task_status.started(self)
                await self._wait_for_stop(shutdown_trigger)
                log.info("shutting down: closing every peer")
                accepting.cancel()  # stop accepting first
                with trio.move_on_after(settings.close_timeout + 5):
                    await runtime.shutdown()
                http_stop.set()
                with trio.move_on_after(settings.close_timeout):
                    await self._http_done.wait()
                serving.cancel_scope.cancel()

    async def _listen(self) -> list[trio.abc.Listener[Any]]:
        settings = self.settings
        tls = settings.ssl_context()
        try:
            if settings.reuse_port:
                listeners = await _reuse_port_listeners(settings.host, settings.port)
            else:
                listeners = await trio.open_tcp_listeners(settings.port, host=settings.host)
        except OSError as exc:
            raise ConfigError(
                f"cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc}"
            ) from None
        self.port = listeners[0].socket.getsockname()[1]
        if tls is None:
            return list(listeners)
        # https_compatible: browsers hang up without TLS close_notify; that is no error.
        return [trio.SSLListener(lst, tls, https_compatible=True) for lst in listeners]

    async def _accept(
        self,
        runtime: Runtime,
        listeners: list[trio.abc.Listener[Any]],
        handlers: trio.Nursery,
        scope: trio.CancelScope,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        settings = self.settings
        heartbeat = (
            Heartbeat(settings.heartbeat_interval, settings.heartbeat_timeout)
            if settings.heartbeat_interval > 0
            else None
        )

        hub, cluster = runtime.hub, runtime.cluster

        async def handle(conn: WebSocketConnection, upgrade: Upgrade) -> bool:
            if cluster is not None:
                # A cluster node may relay the client to another node: it serves it here
                # to the end, and the listener closes what is left (not handed over).
                await cluster.serve(
                    conn,
                    token=upgrade.token,
                    resume_token=upgrade.resume_token,
                    last_seq=upgrade.last_seq,
                )
                return False
            # Handed over: the room owns the connection from here (no task waits for it).
            return await hub.hand_over(
                conn,
                token=upgrade.token,
                resume_token=upgrade.resume_token,
                last_seq=upgrade.last_seq,
                done=conn.release,
            )

        # Socket.IO clients (/socket.io/) on the same port; their Engine.IO sessions
        # live in the handlers' nursery, so they outlast the accept loop at shutdown.
        socketio = endpoint_for(settings, runtime.serve)
        await handlers.start(socketio.run)
        with scope:
            await serve_websocket(
                handle,
                listeners,
                path=SIGNALING_PATH,
                max_message_bytes=settings.max_message_bytes,
                handshake_timeout=settings.auth_timeout,
                heartbeat=heartbeat,
                origins=settings.origin_policy(),
                slots=hub.slots,
                handler_nursery=handlers,
                extra_route=(SOCKETIO_PATH, socketio.serve_stream),
                task_status=task_status,
            )

    async def _wait_for_stop(self, trigger: Callable[[], Awaitable[None]] | None) -> None:
        async with trio.open_nursery() as waiter:
            if trigger is not None:
                waiter.start_soon(_set_when_done, trigger, self._stop)
            await self._stop.wait()
            waiter.cancel_scope.cancel()

    async def _start_http(self, nursery: trio.Nursery, runtime: Runtime, stop: trio.Event) -> None:
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
        # For the WebSockets hypercorn frames itself (Socket.IO's; the signaling route
        # frames its own, with the same limit): it buffers a whole message before the
        # app sees it, and the app answers FRAME_TOO_LARGE for one over max_message_bytes.
        config.websocket_max_message_size = hard_message_limit(settings.max_message_bytes)
        if settings.tls_cert:
            config.certfile, config.keyfile = settings.tls_cert, settings.tls_key
        if settings.reuse_port:
            # Hypercorn binds with SO_REUSEPORT when it is told of several workers; the
            # workers here are meshroom's own processes (meshroom.workers).
            config.workers = 2
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
        app = create_app(settings, runtime=runtime)

        async def serve_http(task_status: trio.TaskStatus[list[str]]) -> None:
            try:
                await serve(app, config, shutdown_trigger=stop.wait, task_status=task_status)
            finally:
                self._http_done.set()

        try:
            bound = await nursery.start(serve_http)
        except* OSError as group:
            # hypercorn binds inside nurseries of its own: the error comes as a group.
            exc = group.exceptions[0]
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            where = f"{settings.host}:{settings.http_port}"
            raise ConfigError(
                f"cannot listen on {where} ({settings.named('http_port')}): {reason}"
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


async def _reuse_port_listeners(host: str, port: int) -> list[trio.SocketListener]:
    """Like trio.open_tcp_listeners, with SO_REUSEPORT: several processes share the port
    and the kernel spreads new connections over them."""
    import socket as stdlib_socket

    addresses = await trio.socket.getaddrinfo(
        host, port, type=stdlib_socket.SOCK_STREAM, flags=stdlib_socket.AI_PASSIVE
    )
    listeners = []
    for family, kind, proto, _, address in addresses:
        sock = trio.socket.socket(family, kind, proto)
        try:
            sock.setsockopt(stdlib_socket.SOL_SOCKET, stdlib_socket.SO_REUSEADDR, 1)
            sock.setsockopt(stdlib_socket.SOL_SOCKET, stdlib_socket.SO_REUSEPORT, 1)
            if family == stdlib_socket.AF_INET6:
                sock.setsockopt(stdlib_socket.IPPROTO_IPV6, stdlib_socket.IPV6_V6ONLY, 1)
            await sock.bind(address)
            sock.listen(stdlib_socket.SOMAXCONN)
        except BaseException:
            sock.close()
            raise
        listeners.append(trio.SocketListener(sock))
    return listeners


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
