"""Fixtures for the store-facing tests: every test here runs on SQLite and PostgreSQL.

The backend fixtures live in :mod:`meshroom.store.testing` so any conftest can
reuse them (``pytest_plugins = ["meshroom.store.testing"]`` at the top level, or
import them as below).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from meshroom.store import SqlStore
from meshroom.store.testing import (  # noqa: F401  (fixtures)
    db_url,
    pg_cluster,
    postgres_admin_url,
    postgres_url,
    sqlite_url,
)


@pytest.fixture
async def store(db_url: str) -> AsyncIterator[SqlStore]:  # noqa: F811
    store = SqlStore(db_url, pool_size=5)
    await store.open()
    try:
        yield store
    finally:
        await store.close()
