"""Webhook operations shared by the HTTP API and the CLI: endpoints, deliveries, retries."""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import uuid
from collections.abc import Iterable, Sequence
from typing import Any, Final, Literal

from ..store.base import (
    DeliveryNotFound,
    DeliveryStatus,
    EndpointNotFound,
    EndpointSource,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookEventType,
    WebhookStore,
)
from .endpoints import check_url
from .signing import check_secret, generate_secret


class EndpointManagedBySettings(Exception):
    """A settings endpoint cannot be changed through the API (change the settings)."""

    def __init__(self, endpoint_id: str) -> None:
        super().__init__(
            f"webhook endpoint {endpoint_id!r} is configured by MESHROOM_WEBHOOKS; "
            "change it there (and restart)"
        )
        self.endpoint_id = endpoint_id


class DeliveryInFlight(Exception):
    def __init__(self, delivery_id: int) -> None:
        super().__init__(
            f"delivery {delivery_id} is being attempted right now; retry it once that ends"
        )
        self.delivery_id = delivery_id


class _Unset(enum.Enum):
    UNSET = enum.auto()


# "Leave it as it is", where None means something (every event type, no description).
UNSET: Final = _Unset.UNSET


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class WebhookService:
    def __init__(self, store: WebhookStore) -> None:
        self.store = store

    # Endpoints

    async def endpoints(self) -> list[WebhookEndpoint]:
        return await self.store.list_webhook_endpoints()

    async def endpoint(self, endpoint_id: str) -> WebhookEndpoint:
        for endpoint in await self.store.list_webhook_endpoints():
            if endpoint.id == endpoint_id:
                return endpoint
        raise EndpointNotFound(endpoint_id)

    async def create_endpoint(
        self,
        *,
        url: str,
        secret: str | None = None,
        event_types: Iterable[WebhookEventType] | None = None,
        description: str | None = None,
        enabled: bool = True,
    ) -> WebhookEndpoint:
        """A new endpoint (with a generated secret unless one is given). ValueError if unusable."""
        endpoint = WebhookEndpoint(
            id="ep_" + uuid.uuid4().hex[:16],
            url=check_url(url),
            secret=check_secret(secret) if secret is not None else generate_secret(),
            event_types=None if event_types is None else frozenset(event_types),
            source=EndpointSource.API,
            enabled=enabled,
            description=description,
            created_at=utcnow(),
        )
        await self.store.put_webhook_endpoint(endpoint)
        return endpoint

    async def update_endpoint(
        self,
        endpoint_id: str,
        *,
        url: str | None = None,
        secret: str | None = None,
        event_types: Iterable[WebhookEventType] | Literal[_Unset.UNSET] | None = UNSET,
        description: str | Literal[_Unset.UNSET] | None = UNSET,
        enabled: bool | None = None,
    ) -> WebhookEndpoint:
        """Change what is given. EndpointNotFound, EndpointManagedBySettings, ValueError."""
        current = await self._api_endpoint(endpoint_id)
        changes: dict[str, Any] = {}
        if url is not None:
            changes["url"] = check_url(url)
        if secret is not None:
            changes["secret"] = check_secret(secret)
        if event_types is not UNSET:
            changes["event_types"] = None if event_types is None else frozenset(event_types)
        if description is not UNSET:
            changes["description"] = description
        if enabled is not None:
            changes["enabled"] = enabled
        endpoint = dataclasses.replace(current, **changes)
        await self.store.put_webhook_endpoint(endpoint)
        return endpoint

    async def delete_endpoint(self, endpoint_id: str) -> None:
        """Delete an endpoint and its deliveries (pending ones are dropped)."""
        await self._api_endpoint(endpoint_id)
        if not await self.store.delete_webhook_endpoint(endpoint_id):
            raise EndpointNotFound(endpoint_id)

    async def _api_endpoint(self, endpoint_id: str) -> WebhookEndpoint:
        endpoint = await self.endpoint(endpoint_id)
        if endpoint.source is EndpointSource.SETTINGS:
            raise EndpointManagedBySettings(endpoint_id)
        return endpoint

    # Deliveries

    async def deliveries(
        self,
        *,
        status: DeliveryStatus | None = None,
        endpoint_id: str | None = None,
        meeting_id: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> tuple[list[WebhookDelivery], int]:
        return await self.store.list_webhook_deliveries(
            status=status,
            endpoint_id=endpoint_id,
            meeting_id=meeting_id,
            limit=limit,
            offset=offset,
        )

    async def delivery(self, delivery_id: int) -> WebhookDelivery:
        found, _ = await self.store.list_webhook_deliveries(delivery_ids=[delivery_id], limit=1)
        if not found:
            raise DeliveryNotFound(delivery_id)
        return found[0]

    async def retry(self, delivery_id: int) -> WebhookDelivery:
        """Send one delivery again (whatever its status) with a fresh attempt count."""
        await self.delivery(delivery_id)
        if not await self.store.retry_webhook_deliveries(delivery_ids=[delivery_id], now=utcnow()):
            raise DeliveryInFlight(delivery_id)
        return await self.delivery(delivery_id)

    async def retry_many(
        self, *, delivery_ids: Sequence[int] | None = None, endpoint_id: str | None = None
    ) -> int:
        """Send again the deliveries named, else every dead one (of ``endpoint_id``); how many."""
        return await self.store.retry_webhook_deliveries(
            delivery_ids=delivery_ids, endpoint_id=endpoint_id, now=utcnow()
        )
