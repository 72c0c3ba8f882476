"""Alembic environment for meshroom's schema.

meshroom runs migrations programmatically (``meshroom db upgrade``, or the
check at ``meshroom serve``): the caller passes an open SQLAlchemy connection in
``config.attributes["connection"]``. The ``alembic`` command line works too,
with ``-x url=…`` or ``sqlalchemy.url`` set in a config file.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context

from meshroom.store.schema import metadata

config = context.config


def _run(connection: sa.Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        # SQLite cannot ALTER most things in place; batch mode copies the table.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        transaction_per_migration=False,
    )
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option(
        "sqlalchemy.url"
    )
    if not url:
        raise SystemExit("pass the database URL: alembic -x url=sqlite:///meshroom.db upgrade head")
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        _run(conn)
    engine.dispose()
