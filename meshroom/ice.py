"""ICE server configuration handed to peers in the join snapshot.

TURN credentials follow the TURN REST API convention that coturn's
``use-auth-secret`` accepts: username ``<expiry-unix-time>:<employee id>``,
credential ``base64(HMAC-SHA1(secret, username))``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from dataclasses import dataclass
from typing import Any, Final

DEFAULT_STUN_URLS: Final = ("stun:stun.l.google.com:19302", "stun:stun1.l.google.com:19302")


@dataclass(frozen=True, slots=True)
class IceConfig:
    stun_urls: tuple[str, ...] = DEFAULT_STUN_URLS
    turn_urls: tuple[str, ...] = ()
    # Either a shared secret (short-lived credentials per peer) ...
    turn_secret: str | None = None
    turn_ttl_seconds: int = 3600
    # ... or one static username/credential pair.
    turn_username: str | None = None
    turn_credential: str | None = None

    def servers_for(self, emp_id: str, *, now: float | None = None) -> list[dict[str, Any]]:
        """The ``iceServers`` list (RTCConfiguration shape) for one peer."""
        servers: list[dict[str, Any]] = []
        if self.stun_urls:
            servers.append({"urls": list(self.stun_urls)})
        if self.turn_urls:
            if self.turn_secret:
                username, credential = turn_credentials(
                    self.turn_secret, emp_id, self.turn_ttl_seconds, now=now
                )
                servers.append(
                    {"urls": list(self.turn_urls), "username": username, "credential": credential}
                )
            elif self.turn_username is not None:
                servers.append(
                    {
                        "urls": list(self.turn_urls),
                        "username": self.turn_username,
                        "credential": self.turn_credential or "",
                    }
                )
            else:
                servers.append({"urls": list(self.turn_urls)})
        return servers


def turn_credentials(
    secret: str, emp_id: str, ttl_seconds: int, *, now: float | None = None
) -> tuple[str, str]:
    expiry = int((time.time() if now is None else now) + ttl_seconds)
    username = f"{expiry}:{emp_id}"
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode()
