"""The room core: rooms, peers and the hub. Trio, but no sockets and no SQL."""

from .connection import Connection as Connection
from .connection import ConnectionClosed as ConnectionClosed
from .connection import ConnectionTimedOut as ConnectionTimedOut
from .connection import MessageTooLarge as MessageTooLarge
from .hub import DuplicatePolicy as DuplicatePolicy
from .hub import Hub as Hub
from .hub import HubConfig as HubConfig
from .peer import Peer as Peer
from .room import Room as Room
