"""tests/test_store.py (written for SQLite) run again on PostgreSQL: the same behaviour.

Every test there that takes the ``store`` fixture is collected here too, with a
``store`` on a fresh PostgreSQL schema instead. That module stays the one place
those tests are written.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator

import pytest

from meshroom.store import SqlStore

# tests/ is on sys.path (pytest's rootdir-less "prepend" import mode).
sqlite_suite = pytest.importorskip("test_store", reason="tests/test_store.py was not found")

for _name, _test in vars(sqlite_suite).items():
    if (
        _name.startswith("test_")
        and callable(_test)
        and "store" in inspect.signature(_test).parameters
    ):
        globals()[_name] = _test


@pytest.fixture
async def store(postgres_url: str) -> AsyncIterator[SqlStore]:
    store = SqlStore(postgres_url, pool_size=5)
    await store.open()
    try:
        yield store
    finally:
        await store.close()
