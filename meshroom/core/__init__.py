"""The room core: rooms, peers and the hub. Trio, but no sockets and no SQL.

Where things live:

* :mod:`.connection` — the three-method contract every transport implements.
* :mod:`.lifecycle` — a peer's states, legal transitions and exits (no trio).
* :mod:`.peer` — a peer's identity and plumbing (outbox, cancel scopes).
* :mod:`.room` — membership, relay, a peer's task and its one teardown.
* :mod:`.controls` — kick, ban, unban, roles, end: for hosts, the API and the CLI.
* :mod:`.hub` — the registry of rooms and the entry point transports call.
* :mod:`.events` — what the core reports (metrics, tests, later a cluster relay).
* :mod:`.attendance` — leaves and last-seen heartbeats, off the relay path.
"""

from .connection import Connection as Connection
from .connection import ConnectionClosed as ConnectionClosed
from .connection import ConnectionTimedOut as ConnectionTimedOut
from .connection import MessageTooLarge as MessageTooLarge
from .controls import HostControls as HostControls
from .events import EventBus as EventBus
from .hub import Hub as Hub
from .lifecycle import Exit as Exit
from .lifecycle import LifecycleError as LifecycleError
from .lifecycle import PeerState as PeerState
from .options import DuplicatePolicy as DuplicatePolicy
from .options import HubConfig as HubConfig
from .options import JoinRefused as JoinRefused
from .peer import Peer as Peer
from .room import Room as Room
