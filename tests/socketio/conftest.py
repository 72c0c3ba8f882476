"""Fixtures for the Socket.IO endpoint tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from .harness import SioServer, socketio_server

# Which client, over which transports: the npm client with its defaults (polling,
# then the upgrade to WebSocket) and WebSocket only; the same for python-socketio.
CLIENTS = [
    pytest.param(("node", None), id="node-default"),
    pytest.param(("node", ["websocket"]), id="node-websocket"),
    pytest.param(("python", ["polling"]), id="python-polling"),
    pytest.param(("python", ["websocket"]), id="python-websocket"),
]


@pytest.fixture
async def sio(tmp_path: Path) -> AsyncIterator[SioServer]:
    async with socketio_server(tmp_path) as running:
        yield running
