"""Operations endpoints: liveness, readiness and Prometheus metrics. No API key needed."""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio
from quart import Blueprint, Response, current_app
from quart_schema import hide, validate_response

from ..metrics import CONTENT_TYPE
from ..store import StoreError
from .schemas import Health

if TYPE_CHECKING:
    from .extension import Meshroom

ops = Blueprint("meshroom_ops", __name__)

READY_TIMEOUT = 2.0


def _meshroom() -> Meshroom:
    return current_app.extensions["meshroom"]  # type: ignore[no-any-return]


@ops.get("/healthz")
@validate_response(Health)
async def healthz() -> Health:
    """Liveness: the process answers."""
    return Health(status="ok")


@ops.get("/readyz")
@validate_response(Health)
@validate_response(Health, 503)
async def readyz() -> Health | tuple[Health, int]:
    """Readiness: the database answers within two seconds (and, in a cluster, this node is
    registered in Redis and not draining)."""
    meshroom = _meshroom()
    cluster = meshroom.runtime.cluster
    if cluster is not None and (problem := cluster.problem) is not None:
        return Health(status="unavailable", detail=problem), 503
    with trio.move_on_after(READY_TIMEOUT):
        try:
            await meshroom.store.ping()
        except StoreError as exc:
            return Health(status="unavailable", detail=f"database: {exc}"), 503
        return Health(status="ok")
    return Health(status="unavailable", detail="database: no answer within 2 s"), 503


@ops.get("/metrics")
@hide
async def metrics() -> Response:
    """Prometheus text exposition."""
    return Response(_meshroom().metrics.render(), content_type=CONTENT_TYPE)
