"""Standard Webhooks signatures: the ``webhook-id``, ``webhook-timestamp`` and
``webhook-signature`` headers, made with the ``standardwebhooks`` package itself so a
receiver's off-the-shelf verifier (``standardwebhooks.Webhook(secret).verify``) agrees.

A secret is ``whsec_`` and the base64 of 24 to 64 random bytes (the spec's range).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import secrets

from standardwebhooks import Webhook

SECRET_PREFIX = "whsec_"
MIN_SECRET_BYTES = 24
MAX_SECRET_BYTES = 64


class InvalidSecret(ValueError):
    pass


def generate_secret() -> str:
    """A new secret: 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def check_secret(secret: str) -> str:
    """``secret`` itself if it is a usable ``whsec_`` secret; InvalidSecret (saying why) if not."""
    if not secret.startswith(SECRET_PREFIX):
        raise InvalidSecret(f"a webhook secret starts with {SECRET_PREFIX!r} (then base64)")
    try:
        key = base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
    except (binascii.Error, ValueError):
        raise InvalidSecret(
            f"what follows {SECRET_PREFIX!r} in a webhook secret is not base64"
        ) from None
    if not MIN_SECRET_BYTES <= len(key) <= MAX_SECRET_BYTES:
        raise InvalidSecret(
            f"a webhook secret holds {MIN_SECRET_BYTES} to {MAX_SECRET_BYTES} bytes "
            f"(base64 after {SECRET_PREFIX!r}), not {len(key)}"
        )
    return secret


def signed_headers(secret: str, event_id: str, at: dt.datetime, body: bytes) -> dict[str, str]:
    """The three Standard Webhooks headers for one attempt sent at ``at``.

    ``at`` is the time of this attempt, not of the event: receivers refuse timestamps
    more than five minutes off, and a retry may come hours later.
    """
    signature = Webhook(secret).sign(event_id, at.astimezone(dt.UTC), body.decode())
    return {
        "webhook-id": event_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": signature,
    }
