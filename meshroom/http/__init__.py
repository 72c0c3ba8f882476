"""HTTP: the REST API, health and metrics, and the signaling route, for Quart apps."""

from .extension import Meshroom as Meshroom
from .extension import create_app as create_app
