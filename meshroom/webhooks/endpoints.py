"""Endpoints: the ones configured in settings (``MESHROOM_WEBHOOKS``), and checks shared
with the ones created through the API.

Both kinds live in the ``webhook_endpoints`` table, so the outbox fans events out to
all of them alike. Settings endpoints are synced at every start
(:func:`sync_configured_endpoints`): added or updated as configured, and disabled
(kept, with their pending deliveries, until configured again) when gone from the
settings. The API cannot change or delete them.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import logging
from collections.abc import Sequence
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator
from pydantic.alias_generators import to_camel

from ..store.base import EndpointSource, WebhookEndpoint, WebhookEventType, WebhookStore
from .signing import check_secret

log = logging.getLogger(__name__)

MAX_URL_LENGTH = 2000
ENDPOINT_ID_PATTERN = r"^[A-Za-z0-9_.:-]{1,64}$"


class WebhookConfigError(ValueError):
    """Configured endpoints that cannot work (the message says which and why)."""


def shown_url(url: str) -> str:
    """The URL for a log line: a password in it (https://user:pass@host/...) hidden."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


def check_url(url: str) -> str:
    """``url`` if it is an http(s) URL with a host; ValueError saying why if not."""
    if len(url) > MAX_URL_LENGTH:
        raise ValueError(f"a webhook URL has at most {MAX_URL_LENGTH} characters")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError as exc:
        raise ValueError(f"not a URL ({exc})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("a webhook URL is http:// or https:// with a host")
    return url


class ConfiguredEndpoint(BaseModel):
    """One element of ``MESHROOM_WEBHOOKS``."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")

    url: str
    secret: str = Field(repr=False)
    event_types: list[WebhookEventType] | None = Field(
        default=None, description="the event types to send; absent or null = every type"
    )
    id: str | None = Field(
        default=None,
        pattern=ENDPOINT_ID_PATTERN,
        description="a stable name (metrics label, `meshroom webhooks list`); "
        "default: derived from the URL",
    )
    description: str | None = Field(default=None, max_length=500)

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        return check_url(value)

    @field_validator("secret")
    @classmethod
    def _secret(cls, value: str) -> str:
        return check_secret(value)

    @property
    def endpoint_id(self) -> str:
        # Derived from the URL, so reordering the list keeps each endpoint's deliveries.
        return self.id or "settings-" + hashlib.sha256(self.url.encode()).hexdigest()[:12]


_CONFIGURED = TypeAdapter(list[ConfiguredEndpoint])


def parse_configured_endpoints(text: str | None) -> list[ConfiguredEndpoint]:
    """``MESHROOM_WEBHOOKS``: a JSON list of endpoints. WebhookConfigError if it is not one.

    The message never repeats a secret.
    """
    if text is None or not text.strip():
        return []
    try:
        endpoints = _CONFIGURED.validate_json(text)
    except ValueError as exc:
        errors = getattr(exc, "errors", None)
        if errors is None:
            raise WebhookConfigError(str(exc)) from None
        problems = []
        for error in errors(include_url=False, include_input=False):
            where = ".".join(str(part) for part in error["loc"])
            message = str(error["msg"]).removeprefix("Value error, ")
            problems.append(f"{where}: {message}" if where else message)
        raise WebhookConfigError(
            "not a JSON list of endpoints "
            '([{"url": "https://…", "secret": "whsec_…"}]): ' + "; ".join(problems)
        ) from None
    seen: set[str] = set()
    for endpoint in endpoints:
        if endpoint.endpoint_id in seen:
            raise WebhookConfigError(
                f"two endpoints have the id {endpoint.endpoint_id!r} (the same URL twice?)"
            )
        seen.add(endpoint.endpoint_id)
    return endpoints


async def sync_configured_endpoints(
    store: WebhookStore, configured: Sequence[ConfiguredEndpoint], *, now: dt.datetime
) -> None:
    """Make the stored settings endpoints what the settings say (run at start).

    Raises WebhookConfigError if a configured id is taken by an API endpoint.
    """
    existing = {endpoint.id: endpoint for endpoint in await store.list_webhook_endpoints()}
    wanted: set[str] = set()
    for item in configured:
        endpoint_id = item.endpoint_id
        wanted.add(endpoint_id)
        current = existing.get(endpoint_id)
        if current is not None and current.source is not EndpointSource.SETTINGS:
            raise WebhookConfigError(
                f"webhook endpoint id {endpoint_id!r} is taken by an endpoint created through "
                "the API; give the configured one another id"
            )
        endpoint = WebhookEndpoint(
            id=endpoint_id,
            url=item.url,
            secret=item.secret,
            event_types=None if item.event_types is None else frozenset(item.event_types),
            source=EndpointSource.SETTINGS,
            enabled=True,
            description=item.description,
            created_at=current.created_at if current is not None else now,
        )
        if endpoint != current:
            await store.put_webhook_endpoint(endpoint)
            log.info(
                "webhook endpoint %s (%s) configured from settings",
                endpoint_id,
                shown_url(item.url),
            )
    for endpoint in existing.values():
        if (
            endpoint.source is EndpointSource.SETTINGS
            and endpoint.id not in wanted
            and endpoint.enabled
        ):
            # Disabled, not deleted: configured again, it picks up its pending deliveries.
            await store.put_webhook_endpoint(dataclasses.replace(endpoint, enabled=False))
            log.warning(
                "webhook endpoint %s (%s) is no longer in the settings: disabled "
                "(its pending deliveries wait until it is configured again)",
                endpoint.id,
                shown_url(endpoint.url),
            )
