"""Several meshroom processes as one service, coordinated through Redis (docs/cluster.md).

Nothing in :mod:`meshroom.core` knows of this package: a node plugs into the hub
through its ``claims`` hook and its events, and serves clients through the same
entry point signature transports already call.
"""

from .client import ClusterClient, ClusterUnavailable, open_client, safe_redis_url
from .node import ClusterConfig, ClusterNode, default_node_id
from .rooms import ClusterRooms

__all__ = [
    "ClusterClient",
    "ClusterConfig",
    "ClusterNode",
    "ClusterRooms",
    "ClusterUnavailable",
    "default_node_id",
    "open_client",
    "safe_redis_url",
]
