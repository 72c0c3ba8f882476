from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from _redis import RedisServer, running_redis


@pytest.fixture
async def redis(tmp_path: Path) -> AsyncIterator[RedisServer]:
    directory = tmp_path / "redis"
    directory.mkdir()
    async with running_redis(directory) as server:
        yield server
