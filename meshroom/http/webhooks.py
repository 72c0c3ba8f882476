"""The webhook part of the REST API (``/api/webhooks``): endpoints, deliveries, retries.

Routes on the same blueprint as the rest of ``/api`` (its API-key check and error
shape); every handler is a few lines over :class:`meshroom.webhooks.WebhookService`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from quart import Response, current_app
from quart_schema import (
    OpenAPIProvider,
    document_response,
    tag,
    validate_querystring,
    validate_request,
    validate_response,
)

from ..store.base import DeliveryNotFound, EndpointNotFound, WebhookDelivery, WebhookEndpoint
from ..webhooks import DeliveryInFlight, EndpointManagedBySettings, WebhookService
from ..webhooks.payloads import EVENT_MODELS, envelope
from ..webhooks.service import UNSET
from .api import api, error
from .schemas import (
    CreateWebhookEndpoint,
    ErrorOut,
    ListDeliveriesQuery,
    RetriedOut,
    RetryDeliveries,
    UpdateWebhookEndpoint,
    WebhookDeliveryOut,
    WebhookDeliveryPage,
    WebhookEndpointCreated,
    WebhookEndpointList,
    WebhookEndpointOut,
)

if TYPE_CHECKING:
    from .extension import Meshroom

TAGS = ["webhooks"]


def _meshroom() -> Meshroom:
    return current_app.extensions["meshroom"]  # type: ignore[no-any-return]


def _webhooks() -> WebhookService:
    return _meshroom().webhooks


@api.errorhandler(EndpointNotFound)
async def endpoint_not_found(exc: EndpointNotFound) -> Response:
    return error(404, "ENDPOINT_NOT_FOUND", f"no webhook endpoint {exc}")


@api.errorhandler(DeliveryNotFound)
async def delivery_not_found(exc: DeliveryNotFound) -> Response:
    return error(404, "DELIVERY_NOT_FOUND", f"no webhook delivery {exc}")


@api.errorhandler(EndpointManagedBySettings)
async def managed_by_settings(exc: EndpointManagedBySettings) -> Response:
    return error(409, "ENDPOINT_MANAGED_BY_SETTINGS", str(exc))


@api.errorhandler(DeliveryInFlight)
async def delivery_in_flight(exc: DeliveryInFlight) -> Response:
    return error(409, "DELIVERY_IN_FLIGHT", str(exc))


def endpoint_out(endpoint: WebhookEndpoint) -> WebhookEndpointOut:
    return WebhookEndpointOut(
        id=endpoint.id,
        url=endpoint.url,
        event_types=None if endpoint.event_types is None else sorted(endpoint.event_types),
        source=endpoint.source,
        enabled=endpoint.enabled,
        description=endpoint.description,
        created_at=endpoint.created_at,
    )


def delivery_out(delivery: WebhookDelivery) -> WebhookDeliveryOut:
    return WebhookDeliveryOut.model_validate(
        {
            "id": delivery.id,
            "endpointId": delivery.endpoint_id,
            "eventId": delivery.event_id,
            "eventType": delivery.event_type,
            "meetingId": delivery.meeting_id,
            "status": delivery.status,
            "attempts": delivery.attempts,
            "nextAttemptAt": delivery.next_attempt_at,
            "lastAttemptAt": delivery.last_attempt_at,
            "lastStatusCode": delivery.last_status_code,
            "lastError": delivery.last_error,
            "deliveredAt": delivery.delivered_at,
            "payload": envelope(delivery),
        }
    )


# Endpoints


@api.get("/webhooks/endpoints")
@tag(TAGS)
@validate_response(WebhookEndpointList)
async def list_endpoints() -> WebhookEndpointList:
    """Webhook endpoints: from settings and created here (secrets are not shown)."""
    return WebhookEndpointList(items=[endpoint_out(e) for e in await _webhooks().endpoints()])


@api.post("/webhooks/endpoints")
@tag(TAGS)
@validate_request(CreateWebhookEndpoint)
@validate_response(WebhookEndpointCreated, 201)
@document_response(ErrorOut, 400)
async def create_endpoint(data: CreateWebhookEndpoint) -> tuple[WebhookEndpointCreated, int]:
    """Add an endpoint; events from now on are sent to it. The answer holds its secret."""
    endpoint = await _webhooks().create_endpoint(
        url=data.url,
        secret=data.secret,
        event_types=data.event_types,
        description=data.description,
        enabled=data.enabled,
    )
    out = endpoint_out(endpoint)
    return WebhookEndpointCreated(**out.model_dump(), secret=endpoint.secret), 201


@api.get("/webhooks/endpoints/<endpoint_id>")
@tag(TAGS)
@validate_response(WebhookEndpointOut)
@document_response(ErrorOut, 404)
async def get_endpoint(endpoint_id: str) -> WebhookEndpointOut:
    """One endpoint."""
    return endpoint_out(await _webhooks().endpoint(endpoint_id))


@api.patch("/webhooks/endpoints/<endpoint_id>")
@tag(TAGS)
@validate_request(UpdateWebhookEndpoint)
@validate_response(WebhookEndpointOut)
@document_response(ErrorOut, 409)
async def update_endpoint(endpoint_id: str, data: UpdateWebhookEndpoint) -> WebhookEndpointOut:
    """Change an endpoint created here (the fields given). Disabled, it gets no new events
    and its pending deliveries wait; enabled again, they go."""
    given = data.model_fields_set  # null and absent differ for these two
    endpoint = await _webhooks().update_endpoint(
        endpoint_id,
        url=data.url,
        secret=data.secret,
        enabled=data.enabled,
        event_types=data.event_types if "event_types" in given else UNSET,
        description=data.description if "description" in given else UNSET,
    )
    return endpoint_out(endpoint)


@api.delete("/webhooks/endpoints/<endpoint_id>")
@tag(TAGS)
@document_response(ErrorOut, 409)
async def delete_endpoint(endpoint_id: str) -> Response:
    """Delete an endpoint created here, and its deliveries (pending ones are dropped)."""
    await _webhooks().delete_endpoint(endpoint_id)
    return Response(b"", status=204)


# Deliveries


@api.get("/webhooks/deliveries")
@tag(TAGS)
@validate_querystring(ListDeliveriesQuery)
@validate_response(WebhookDeliveryPage)
async def list_deliveries(query_args: ListDeliveriesQuery) -> WebhookDeliveryPage:
    """Deliveries, newest first: status, attempts, last error, and the body sent."""
    meeting_id = None
    if query_args.meeting is not None:
        meeting_id = (await _meshroom().service.find(query_args.meeting)).id
    deliveries, total = await _webhooks().deliveries(
        status=query_args.status,
        endpoint_id=query_args.endpoint_id,
        meeting_id=meeting_id,
        limit=query_args.limit,
        offset=query_args.offset,
    )
    return WebhookDeliveryPage(
        items=[delivery_out(d) for d in deliveries],
        total=total,
        limit=query_args.limit,
        offset=query_args.offset,
    )


@api.get("/webhooks/deliveries/<int:delivery_id>")
@tag(TAGS)
@validate_response(WebhookDeliveryOut)
@document_response(ErrorOut, 404)
async def get_delivery(delivery_id: int) -> WebhookDeliveryOut:
    """One delivery."""
    return delivery_out(await _webhooks().delivery(delivery_id))


@api.post("/webhooks/deliveries/<int:delivery_id>/retry")
@tag(TAGS)
@validate_response(WebhookDeliveryOut)
@document_response(ErrorOut, 409)
async def retry_delivery(delivery_id: int) -> WebhookDeliveryOut:
    """Send a delivery again now (dead, delivered or waiting), with a fresh attempt count.
    Later events of its meeting wait for it, as they would have the first time."""
    return delivery_out(await _webhooks().retry(delivery_id))


@api.post("/webhooks/deliveries/retry")
@tag(TAGS)
@validate_request(RetryDeliveries)
@validate_response(RetriedOut)
async def retry_deliveries(data: RetryDeliveries) -> RetriedOut:
    """Send again the deliveries named, or every dead one (of one endpoint)."""
    retried = await _webhooks().retry_many(
        delivery_ids=data.delivery_ids, endpoint_id=data.endpoint_id
    )
    return RetriedOut(retried=retried)


# The OpenAPI document's top-level `webhooks` (OpenAPI 3.1): what meshroom POSTs to an
# endpoint, one operation per event type, each body a schema in components.

_SIGNATURE_HEADERS = [
    ("webhook-id", "the event's id (msg_…): the same on every attempt; deduplicate on it"),
    ("webhook-timestamp", "when this attempt was signed, Unix seconds"),
    ("webhook-signature", "v1,<base64 HMAC-SHA256 of id.timestamp.body> (Standard Webhooks)"),
]


class OpenAPIWithWebhooks(OpenAPIProvider):
    """quart-schema's document, plus the webhooks meshroom sends."""

    def schema(self) -> dict[str, Any]:
        document = super().schema()
        components: dict[str, Any] = document["components"]["schemas"]
        operations: dict[str, Any] = {}
        for event_type, model in EVENT_MODELS.items():
            schema = model.model_json_schema(
                by_alias=True, ref_template="#/components/schemas/{model}", mode="serialization"
            )
            for name, definition in schema.pop("$defs", {}).items():
                components.setdefault(name, definition)
            components.setdefault(model.__name__, schema)
            operations[event_type.value] = {
                "post": {
                    "summary": f"{event_type.value} (sent to webhook endpoints)",
                    "description": " ".join((model.__doc__ or "").split()),
                    "tags": TAGS,
                    "parameters": [
                        {
                            "name": name,
                            "in": "header",
                            "required": True,
                            "description": description,
                            "schema": {"type": "string"},
                        }
                        for name, description in _SIGNATURE_HEADERS
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {"$ref": f"#/components/schemas/{model.__name__}"}
                            }
                        },
                    },
                    "responses": {
                        "2XX": {"description": "delivered"},
                        "default": {
                            "description": "not delivered: retried with backoff (as is no "
                            "answer within the timeout), dead after the last attempt"
                        },
                    },
                }
            }
        document["webhooks"] = operations
        return document
