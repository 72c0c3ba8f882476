"""Alembic migrations on every backend: from empty, from each earlier revision, and checks."""

from __future__ import annotations

import datetime as dt

import pytest
import sqlalchemy as sa
import trio
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from meshroom import Server, Settings
from meshroom.cli import main
from meshroom.config import ConfigError
from meshroom.store import SchemaError, SchemaOutOfDate, SqlStore, migrate
from meshroom.store.migrate import SchemaStatus
from meshroom.store.schema import metadata

T0 = dt.datetime(2024, 3, 1, 9, 0, tzinfo=dt.UTC)


def engine_for(url: str) -> sa.Engine:
    return sa.create_engine(url, poolclass=sa.NullPool)


def state(url: str) -> migrate.SchemaState:
    engine = engine_for(url)
    try:
        with engine.connect() as conn:
            return migrate.inspect(conn)
    finally:
        engine.dispose()


def upgrade(url: str, revision: str = "head") -> tuple[str | None, str]:
    engine = engine_for(url)
    try:
        with engine.begin() as conn:
            return migrate.upgrade(conn, revision)
    finally:
        engine.dispose()


def schema_differences(url: str) -> list[object]:
    engine = engine_for(url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            return [
                diff
                for diff in compare_metadata(context, metadata)
                # Alembic's own bookkeeping table is not in meshroom's metadata.
                if "alembic_version" not in repr(diff)
            ]
    finally:
        engine.dispose()


def test_revisions_form_one_line():
    assert migrate.revisions() == ["0001", "0002", "0003"]
    assert migrate.head_revision() == "0003"


def test_upgrade_from_empty_matches_the_schema_module(db_url):
    assert state(db_url).status is SchemaStatus.EMPTY
    assert upgrade(db_url) == (None, "0003")
    assert state(db_url).status is SchemaStatus.CURRENT
    assert schema_differences(db_url) == []


def test_upgrade_is_a_no_op_when_current(db_url):
    upgrade(db_url)
    assert upgrade(db_url) == ("0003", "0003")


@pytest.mark.parametrize("start", migrate.revisions()[:-1])
def test_upgrade_from_every_earlier_revision_keeps_the_data(db_url, start):
    upgrade(db_url, start)
    assert state(db_url).status is SchemaStatus.BEHIND
    engine = engine_for(db_url)
    with engine.begin() as conn:
        _insert_v1_rows(conn)
    engine.dispose()
    assert upgrade(db_url) == (start, "0003")
    assert schema_differences(db_url) == []
    _check_v1_rows_survived(db_url)


def test_upgrade_of_an_unversioned_legacy_database(db_url):
    """meshroom 0.1 made its tables with create_all and no version table: that is 0001."""
    engine = engine_for(db_url)
    with engine.begin() as conn:
        _legacy_metadata().create_all(conn)
        _insert_v1_rows(conn)
    engine.dispose()
    assert state(db_url).status is SchemaStatus.UNVERSIONED
    assert upgrade(db_url) == ("0001", "0003")
    assert schema_differences(db_url) == []
    _check_v1_rows_survived(db_url)


def test_downgrade_to_base_and_up_again(db_url):
    upgrade(db_url)
    engine = engine_for(db_url)
    with engine.begin() as conn:
        migrate.downgrade(conn, "base")
    with engine.connect() as conn:
        assert migrate.inspect(conn).status is SchemaStatus.EMPTY
    engine.dispose()
    assert upgrade(db_url) == (None, "0003")


async def test_open_creates_an_empty_database(db_url):
    store = SqlStore(db_url)
    await store.open()
    assert (await store.schema_state()).status is SchemaStatus.CURRENT
    await store.close()


async def test_open_refuses_an_out_of_date_schema_naming_the_command(db_url):
    upgrade(db_url, "0001")
    store = SqlStore(db_url)
    with pytest.raises(SchemaOutOfDate) as caught:
        await store.open()
    message = str(caught.value)
    assert "meshroom db upgrade" in message and "0001" in message and "0003" in message
    assert "\n" not in message
    assert (await store.schema_state()).current == "0001"  # untouched
    await store.close()


async def test_open_upgrades_when_told_to(db_url):
    upgrade(db_url, "0001")
    store = SqlStore(db_url, auto_migrate=True)
    await store.open()
    assert (await store.schema_state()).status is SchemaStatus.CURRENT
    await store.close()


async def test_open_refuses_a_schema_from_a_newer_meshroom(db_url):
    upgrade(db_url)
    engine = engine_for(db_url)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = '9999'"))
    engine.dispose()
    store = SqlStore(db_url, auto_migrate=True)
    with pytest.raises(SchemaError, match=r"9999.*newer meshroom"):
        await store.open()
    await store.close()


async def test_open_refuses_a_partial_schema(db_url):
    engine = engine_for(db_url)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE meetings (id VARCHAR(36) PRIMARY KEY)"))
    engine.dispose()
    store = SqlStore(db_url, auto_migrate=True)
    with pytest.raises(SchemaError, match="refusing"):
        await store.open()
    await store.close()


# Helpers: rows as meshroom 0.1 wrote them.


def _legacy_metadata() -> sa.MetaData:
    """The tables exactly as meshroom 0.1 created them."""
    from .legacy_schema_v0_1 import metadata as legacy

    return legacy


def _insert_v1_rows(conn: sa.Connection) -> None:
    conn.execute(
        sa.text(
            "INSERT INTO meetings (id, title, room_code, host_emp_id, status, created_at) "
            "VALUES ('m1', 'Old', 'ABCD-EFGH', 'boss', 'LIVE', :t)"
        ),
        {"t": T0},
    )
    conn.execute(
        sa.text(
            "INSERT INTO participants (meeting_id, emp_id, display_name, last_role, banned) "
            "VALUES ('m1', 'ann', 'Ann', 'PARTICIPANT', :f)"
        ),
        {"f": False},
    )
    conn.execute(
        sa.text(
            "INSERT INTO attendance (meeting_id, emp_id, display_name, role, joined_at, "
            "left_at, duration_seconds, leave_reason) VALUES "
            "('m1', 'ann', 'Ann', 'PARTICIPANT', :t, :t2, 60.0, 'left'), "
            "('m1', 'ann', 'Ann', 'PARTICIPANT', :t2, NULL, NULL, NULL)"
        ),
        {"t": T0, "t2": T0 + dt.timedelta(minutes=1)},
    )


def _check_v1_rows_survived(url: str) -> None:
    engine = engine_for(url)
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT emp_id, left_at IS NULL, closed_by_recovery, last_seen_at "
                "FROM attendance ORDER BY id"
            )
        ).all()
        titles = conn.execute(sa.text("SELECT title FROM meetings")).scalars().all()
    engine.dispose()
    assert titles == ["Old"]
    assert [(r[0], bool(r[1]), bool(r[2]), r[3]) for r in rows] == [
        ("ann", False, False, None),
        ("ann", True, False, None),
    ]


# What `meshroom serve` and `meshroom db` do with it


def serve_settings(url: str, tmp_path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "host": "127.0.0.1",
        "port": 0,
        "http_port": "off",
        "database_url": url,
        "secret": "s" * 40,
        "api_key_file": str(tmp_path / "apikey"),
        "attendance_journal": str(tmp_path / "meshroom.journal"),
    }
    return Settings.from_env({}, **{**values, **overrides})


async def test_serve_refuses_an_old_schema_in_one_line_naming_the_command(db_url, tmp_path):
    upgrade(db_url, "0001")
    with pytest.raises(ConfigError) as caught, trio.fail_after(30):
        await Server(serve_settings(db_url, tmp_path)).run()
    message = str(caught.value)
    assert "\n" not in message
    assert "`meshroom db upgrade`" in message and "--auto-migrate" in message
    assert state(db_url).current == "0001"


async def test_serve_with_auto_migrate_upgrades_and_starts(db_url, tmp_path):
    upgrade(db_url, "0001")
    server = Server(serve_settings(db_url, tmp_path, auto_migrate=True))
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(server.run)
            server.request_shutdown()
    assert state(db_url).status is SchemaStatus.CURRENT


def test_auto_migrate_from_the_environment():
    assert Settings.from_env({"MESHROOM_AUTO_MIGRATE": "1"}).auto_migrate is True
    assert Settings.from_env({"MESHROOM_AUTO_MIGRATE": "false"}).auto_migrate is False
    with pytest.raises(ConfigError):
        Settings.from_env({"MESHROOM_AUTO_MIGRATE": "maybe"})


def test_cli_db_current_and_upgrade(db_url, capsys):
    upgrade(db_url, "0001")
    assert main(["db", "current", "--check", "--database-url", db_url]) == 1
    assert "0001  behind" in capsys.readouterr().out
    assert main(["db", "upgrade", "--database-url", db_url]) == 0
    assert "from revision 0001 to 0003" in capsys.readouterr().out
    assert main(["db", "upgrade", "--database-url", db_url]) == 0
    assert "up to date (revision 0003)" in capsys.readouterr().out
    assert main(["db", "current", "--check", "--database-url", db_url]) == 0


def test_cli_commands_refuse_an_old_schema(db_url, capsys):
    upgrade(db_url, "0001")
    assert main(["meeting", "list", "--database-url", db_url]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("meshroom: error:") and "meshroom db upgrade" in err
    assert "\n" not in err
