"""meshroom: a Trio, structured-concurrency WebRTC signaling server for mesh meetings."""

from .auth import Claims as Claims
from .auth import TokenKeys as TokenKeys
from .auth import mint_token as mint_token
from .auth import verify_token as verify_token
from .config import Settings as Settings
from .core import Hub as Hub
from .core import HubConfig as HubConfig
from .roles import Role as Role
from .server import Server as Server
from .store import MeetingStatus as MeetingStatus
from .store import SqlStore as SqlStore

__version__ = "0.1.0"
