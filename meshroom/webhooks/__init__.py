"""Webhooks: signed (Standard Webhooks) notifications of meetings, participants and attendance.

* :mod:`.payloads` — the body of every event type (pydantic models, for the OpenAPI
  document and receivers), and the bytes sent.
* :mod:`.signing` — ``webhook-id`` / ``webhook-timestamp`` / ``webhook-signature``.
* :mod:`.endpoints` — endpoints from settings (``MESHROOM_WEBHOOKS``), synced at start.
* :mod:`.policy` — timeouts, retries with backoff, concurrency: the delivery settings.
* :mod:`.delivery` — the worker: retries, per-meeting order, dead letters.
* :mod:`.service` — what the API and the CLI do with endpoints and deliveries.

The events themselves are written by the store, in the transaction of the change
they describe (the transactional outbox: :mod:`meshroom.store.outbox`); the room
core knows nothing of webhooks. ``WebhookDeliverer`` is loaded on first use: it
needs the HTTP client (httpx), which the CLI's other commands do not.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .endpoints import ConfiguredEndpoint as ConfiguredEndpoint
from .endpoints import WebhookConfigError as WebhookConfigError
from .endpoints import parse_configured_endpoints as parse_configured_endpoints
from .endpoints import sync_configured_endpoints as sync_configured_endpoints
from .policy import Attempt as Attempt
from .policy import DeliveryConfig as DeliveryConfig
from .service import DeliveryInFlight as DeliveryInFlight
from .service import EndpointManagedBySettings as EndpointManagedBySettings
from .service import WebhookService as WebhookService
from .signing import generate_secret as generate_secret

if TYPE_CHECKING:
    from .delivery import WebhookDeliverer as WebhookDeliverer


def __getattr__(name: str) -> Any:
    if name == "WebhookDeliverer":
        from .delivery import WebhookDeliverer

        return WebhookDeliverer
    raise AttributeError(f"module 'meshroom.webhooks' has no attribute {name!r}")
