"""``Meshroom``: the Quart extension that adds meshroom to a quart-trio application.

    app = QuartTrio(__name__)
    Meshroom(app, url_prefix="/meshroom")

registers the REST API (``/api``), the signaling WebSocket (``/meetings``),
``/healthz``, ``/readyz`` and ``/metrics`` under the prefix, an OpenAPI document
(``/openapi.json``, browsable at ``/docs``), and runs meshroom's runtime
(:func:`meshroom.runtime.open_runtime`: store, crash recovery, hub, metrics — the
same as ``meshroom serve``) in the application's nursery for as long as the app serves.
Settings come from ``app.config`` keys named like the environment variables
(``MESHROOM_DATABASE_URL``, ``MESHROOM_SECRET``, …), then the environment, then defaults.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import trio
from quart import Quart
from quart_schema import HttpSecurityScheme, QuartSchema

from ..config import Settings, env_name
from ..core import Hub
from ..metrics import Metrics
from ..runtime import Runtime, open_runtime
from ..service import MeetingService
from ..store import Store
from ..webhooks import WebhookService
from .api import api
from .docs import asset_urls, docs_assets
from .ops import ops
from .signaling import SignalingMiddleware
from .socketio import socketio_blueprint
from .web import web
from .webhooks import OpenAPIWithWebhooks  # importing it adds /api/webhooks/… to `api`

log = logging.getLogger(__name__)

EXTENSION_KEY = "meshroom"


class Meshroom:
    """Serve meshroom from a Quart (quart-trio) app.

    Args:
        app: the application; or call :meth:`init_app` later.
        settings: explicit settings; by default read from ``app.config`` and the environment.
        url_prefix: where everything is mounted (``""`` = the root).
        runtime: an already running runtime to serve (the app then owns none of it).
    """

    def __init__(
        self,
        app: Quart | None = None,
        *,
        settings: Settings | None = None,
        url_prefix: str = "",
        runtime: Runtime | None = None,
    ) -> None:
        self._settings = settings if runtime is None else runtime.settings
        self.url_prefix = url_prefix.rstrip("/")
        self._runtime = runtime
        self._owns_runtime = runtime is None
        self._stop_requested = trio.Event()
        self._stopped = trio.Event()
        self.api_keys: tuple[str, ...] = ()
        if app is not None:
            self.init_app(app)

    @property
    def settings(self) -> Settings:
        assert self._settings is not None, "Meshroom.init_app(app) has not run"
        return self._settings

    @property
    def runtime(self) -> Runtime:
        if self._runtime is None:
            raise RuntimeError("meshroom is not serving yet (the app has not started)")
        return self._runtime

    @property
    def hub(self) -> Hub:
        return self.runtime.hub

    @property
    def store(self) -> Store:
        return self.runtime.store

    @property
    def metrics(self) -> Metrics:
        return self.runtime.metrics

    @property
    def service(self) -> MeetingService:
        return self.runtime.service

    @property
    def webhooks(self) -> WebhookService:
        return self.runtime.webhooks

    def init_app(self, app: Quart) -> None:
        if self._settings is None:
            # The app's MESHROOM_* keys act as variables on top of the environment, so
            # an error names the key the embedder wrote.
            from_app = {
                env_name(name): str(app.config[env_name(name)])
                for name in Settings.model_fields
                if env_name(name) in app.config
            }
            self._settings = Settings.from_env({**os.environ, **from_app})
        self.api_keys = self.settings.api_key_list()
        app.extensions[EXTENSION_KEY] = self
        if "QUART_SCHEMA" not in app.extensions:
            # Swagger UI from meshroom's own files, unless the app chose others.
            for key, url in asset_urls(self.url_prefix).items():
                app.config.setdefault(key, url)
            QuartSchema(
                app,
                openapi_path=f"{self.url_prefix}/openapi.json",
                swagger_ui_path=f"{self.url_prefix}/docs",
                redoc_ui_path=None,
                scalar_ui_path=None,
                info={"title": "meshroom", "version": _version()},
                security_schemes={"bearer": {"type": "http", "scheme": "bearer"}},
                pydantic_dump_options={"by_alias": True},
                openapi_provider_class=OpenAPIWithWebhooks,
            )
        else:
            # The app's own document: declare the scheme meshroom's API operations name.
            schema = app.extensions["QUART_SCHEMA"]
            schemes = schema.security_schemes or {}
            schemes.setdefault("bearer", HttpSecurityScheme(type="http", scheme="bearer"))
            schema.security_schemes = schemes
        app.register_blueprint(api, url_prefix=f"{self.url_prefix}/api")
        app.register_blueprint(ops, url_prefix=self.url_prefix or None)
        app.register_blueprint(socketio_blueprint, url_prefix=self.url_prefix or None)
        app.register_blueprint(web, url_prefix=self.url_prefix or None)
        app.register_blueprint(docs_assets, url_prefix=self.url_prefix or None)
        # meshroom's WebSockets bypass Quart (see meshroom.http.signaling).
        app.asgi_app = SignalingMiddleware(app.asgi_app, self, app.extensions)  # type: ignore[method-assign,assignment]
        if self._owns_runtime:
            app.before_serving(self._start)
            app.after_serving(self._stop)

    async def _start(self) -> None:
        from quart import current_app

        # The app's nursery owns the runtime, and through it every room and peer.
        self._runtime = await current_app.nursery.start(self._run)  # type: ignore[attr-defined]
        log.info("meshroom serving under %r", self.url_prefix or "/")

    async def _run(self, *, task_status: trio.TaskStatus[Runtime]) -> None:
        try:
            async with open_runtime(self.settings) as runtime:
                task_status.started(runtime)
                await self._stop_requested.wait()
        finally:
            self._stopped.set()

    async def _stop(self) -> None:
        if self._runtime is not None:
            self._stop_requested.set()
            await self._stopped.wait()


def _version() -> str:
    from .. import __version__

    return __version__


def create_app(settings: Settings, *, runtime: Runtime | None = None, **options: Any) -> Quart:
    """meshroom's own HTTP application (what ``meshroom serve`` runs on the HTTP port)."""
    from quart_trio import QuartTrio

    app = QuartTrio("meshroom")
    app.config["MAX_CONTENT_LENGTH"] = 1024 * 1024
    Meshroom(app, settings=settings, runtime=runtime, **options)
    return app
