"""Webhook tests: the store-facing ones run on SQLite and PostgreSQL (``db_url``)."""

from __future__ import annotations

from meshroom.store.testing import (  # noqa: F401  (fixtures)
    db_url,
    postgres_admin_url,
    postgres_url,
    sqlite_url,
)
