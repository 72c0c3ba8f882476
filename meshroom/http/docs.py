"""The Swagger UI's files, served by meshroom itself, so ``/docs`` works without internet.

quart-schema's page loads Swagger UI from a CDN by default; an air-gapped host
would show a blank page. The files come from the ``flask-swagger-ui`` package,
which ships a current Swagger UI (5.x, which reads the OpenAPI 3.1 documents
quart-schema writes; the ``swagger-ui-bundle`` package's 4.x cannot) and costs
nothing more: Quart itself depends on Flask.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Final

from quart import Blueprint, Response, abort, send_from_directory
from quart_schema import hide

docs_assets = Blueprint("meshroom_docs_assets", __name__)

ASSETS_PATH: Final = "/docs/assets"
JS: Final = "swagger-ui-bundle.js"
CSS: Final = "swagger-ui.css"
# Only what the page loads: nothing else of the package is reachable.
_SERVED: Final = frozenset({JS, CSS})


def _dist() -> Path:
    # Located, not imported: the package's module would build a Flask blueprint.
    spec = importlib.util.find_spec("flask_swagger_ui")
    assert spec is not None and spec.origin is not None, "flask-swagger-ui is not installed"
    return Path(spec.origin).parent / "dist"


def asset_urls(url_prefix: str) -> dict[str, str]:
    """quart-schema's settings that point its page at the files served here."""
    base = f"{url_prefix}{ASSETS_PATH}"
    return {
        "QUART_SCHEMA_SWAGGER_JS_URL": f"{base}/{JS}",
        "QUART_SCHEMA_SWAGGER_CSS_URL": f"{base}/{CSS}",
    }


@docs_assets.get(f"{ASSETS_PATH}/<name>")
@hide
async def asset(name: str) -> Response:
    if name not in _SERVED:
        abort(404)
    response = await send_from_directory(str(_dist()), name)
    response.cache_control.max_age = 86400
    response.cache_control.public = True
    return response
