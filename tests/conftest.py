"""Fixtures shared by every test: a real server on loopback, and a wall-clock watchdog.

The helpers behind them live in tests/_servers.py and tests/_memhub.py, which
test modules import directly.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
from _memhub import real_time_watchdog_fixture as real_time_watchdog_fixture
from _servers import RunningServer, server_settings, start_server


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[RunningServer]:
    async with trio.open_nursery() as nursery:
        running = await start_server(nursery, server_settings(tmp_path))
        yield running
        running.server.request_shutdown()
