"""Schema versions: what revision a database is at, and bringing it to the newest.

The migrations live in ``migrations/`` beside this file and run through Alembic
on a connection meshroom opens itself (no ``alembic.ini`` needed). A database
is in one of these states:

``empty``
    none of meshroom's tables: safe to create at the newest revision.
``unversioned``
    meshroom's tables without Alembic's version table: a database made by
    meshroom 0.1 (``metadata.create_all``), which is revision ``0001``.
``behind``
    at an older revision: ``meshroom db upgrade`` brings it up to date.
``current``
    at the newest revision this meshroom knows.
``ahead``
    at a revision this meshroom does not know (a newer meshroom migrated it).
``partial``
    some of meshroom's tables but not all and no version: not safe to touch.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from .base import SchemaError

# Alembic says "Context impl …" at INFO whenever a revision is read; meshroom logs
# what it migrates itself.
logging.getLogger("alembic.runtime.migration").setLevel(logging.WARNING)

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
# The revision a pre-Alembic (meshroom 0.1) database corresponds to.
LEGACY_REVISION = "0001"
_TABLES = frozenset({"meetings", "participants", "attendance"})
# Any constant: serialises concurrent migrations of one PostgreSQL database.
_PG_MIGRATION_LOCK = 0x6D657368


class SchemaStatus(enum.StrEnum):
    EMPTY = "empty"
    UNVERSIONED = "unversioned"
    BEHIND = "behind"
    CURRENT = "current"
    AHEAD = "ahead"
    PARTIAL = "partial"


@dataclass(frozen=True, slots=True)
class SchemaState:
    status: SchemaStatus
    current: str | None  # the database's revision (LEGACY_REVISION when unversioned)
    head: str  # the newest revision this meshroom knows

    def describe(self) -> str:
        match self.status:
            case SchemaStatus.EMPTY:
                return f"the database is empty (newest schema revision: {self.head})"
            case SchemaStatus.UNVERSIONED:
                return (
                    f"the database has meshroom 0.1's unversioned schema (revision "
                    f"{LEGACY_REVISION}); this meshroom needs revision {self.head}"
                )
            case SchemaStatus.BEHIND:
                return (
                    f"the database schema is at revision {self.current}; "
                    f"this meshroom needs revision {self.head}"
                )
            case SchemaStatus.CURRENT:
                return f"the database schema is up to date (revision {self.head})"
            case SchemaStatus.AHEAD:
                return (
                    f"the database schema is at revision {self.current}, which this meshroom "
                    f"does not know (its newest is {self.head}): a newer meshroom migrated it"
                )
            case SchemaStatus.PARTIAL:
                return (
                    "the database has some of meshroom's tables but no schema version; "
                    "refusing to touch it"
                )


def alembic_config(connection: sa.Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def script_directory() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config())


def head_revision() -> str:
    head = script_directory().get_current_head()
    assert head is not None
    return head


def revisions() -> list[str]:
    """Every revision, oldest first."""
    return [r.revision for r in reversed(list(script_directory().walk_revisions()))]


def inspect(connection: sa.Connection) -> SchemaState:
    head = head_revision()
    current = MigrationContext.configure(connection).get_current_revision()
    if current is None:
        present = _TABLES & set(sa.inspect(connection).get_table_names())
        if not present:
            return SchemaState(SchemaStatus.EMPTY, None, head)
        if present == _TABLES:
            return SchemaState(SchemaStatus.UNVERSIONED, LEGACY_REVISION, head)
        return SchemaState(SchemaStatus.PARTIAL, None, head)
    if current == head:
        return SchemaState(SchemaStatus.CURRENT, current, head)
    if current in revisions():
        return SchemaState(SchemaStatus.BEHIND, current, head)
    return SchemaState(SchemaStatus.AHEAD, current, head)


def lock(connection: sa.Connection) -> None:
    """Hold off other meshroom processes migrating the same database (until commit)."""
    if connection.dialect.name == "postgresql":
        connection.execute(sa.select(sa.func.pg_advisory_xact_lock(_PG_MIGRATION_LOCK)))


def upgrade(connection: sa.Connection, revision: str = "head") -> tuple[str | None, str]:
    """Bring the schema to ``revision``; return (from, to). Call inside a transaction.

    Raises SchemaError for a database this meshroom must not touch.
    """
    lock(connection)
    state = inspect(connection)
    if state.status in (SchemaStatus.AHEAD, SchemaStatus.PARTIAL):
        raise SchemaError(state.describe())
    config = alembic_config(connection)
    if state.status is SchemaStatus.UNVERSIONED:
        command.stamp(config, LEGACY_REVISION)
    command.upgrade(config, revision)
    after = MigrationContext.configure(connection).get_current_revision()
    assert after is not None
    return state.current, after


def downgrade(connection: sa.Connection, revision: str) -> None:
    """Go back to ``revision`` (``base`` drops everything). For tests and emergencies."""
    lock(connection)
    command.downgrade(alembic_config(connection), revision)
