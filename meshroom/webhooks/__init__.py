"""Webhooks: signed (Standard Webhooks) notifications of meetings, participants and attendance.

* :mod:`.payloads` — the body of every event type (pydantic models, for the OpenAPI
  document and receivers), and the bytes sent.
* :mod:`.signing` — ``webhook-id`` / ``webhook-timestamp`` / ``webhook-signature``.
* :mod:`.endpoints` — endpoints from settings (``MESHROOM_WEBHOOKS``), synced at start.
* :mod:`.delivery` — the worker: retries with backoff, per-meeting order, dead letters.
* :mod:`.service` — what the API and the CLI do with endpoints and deliveries.

The events themselves are written by the store, in the transaction of the change
they describe (the transactional outbox: :mod:`meshroom.store.outbox`); the room
core knows nothing of webhooks.
"""

from .delivery import Attempt as Attempt
from .delivery import DeliveryConfig as DeliveryConfig
from .delivery import WebhookDeliverer as WebhookDeliverer
from .endpoints import ConfiguredEndpoint as ConfiguredEndpoint
from .endpoints import WebhookConfigError as WebhookConfigError
from .endpoints import parse_configured_endpoints as parse_configured_endpoints
from .endpoints import sync_configured_endpoints as sync_configured_endpoints
from .service import DeliveryInFlight as DeliveryInFlight
from .service import EndpointManagedBySettings as EndpointManagedBySettings
from .service import WebhookService as WebhookService
from .signing import generate_secret as generate_secret
