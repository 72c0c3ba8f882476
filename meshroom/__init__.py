"""meshroom: a Trio, structured-concurrency WebRTC signaling server for mesh meetings.

The public names below are loaded on first use, so ``import meshroom.protocol``
or ``import meshroom.client`` costs only what those need (no SQLAlchemy, no
server): ``python -X importtime -c "import meshroom.protocol"`` shows it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    "Claims": "meshroom.auth",
    "TokenKeys": "meshroom.auth",
    "mint_token": "meshroom.auth",
    "verify_token": "meshroom.auth",
    "Settings": "meshroom.config",
    "Hub": "meshroom.core",
    "HubConfig": "meshroom.core",
    "Role": "meshroom.roles",
    "Runtime": "meshroom.runtime",
    "open_runtime": "meshroom.runtime",
    "Server": "meshroom.server",
    "MeetingStatus": "meshroom.store",
    "SqlStore": "meshroom.store",
}
__all__ = [*_EXPORTS, "__version__"]

if TYPE_CHECKING:
    from .auth import Claims as Claims
    from .auth import TokenKeys as TokenKeys
    from .auth import mint_token as mint_token
    from .auth import verify_token as verify_token
    from .config import Settings as Settings
    from .core import Hub as Hub
    from .core import HubConfig as HubConfig
    from .roles import Role as Role
    from .runtime import Runtime as Runtime
    from .runtime import open_runtime as open_runtime
    from .server import Server as Server
    from .store import MeetingStatus as MeetingStatus
    from .store import SqlStore as SqlStore


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'meshroom' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # once loaded, an ordinary attribute
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
