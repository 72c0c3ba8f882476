"""Test support: run a test against every database backend meshroom supports.

Reuse from any conftest::

    pytest_plugins = ["meshroom.store.testing"]

which provides the fixtures

``db_url``
    parametrised over ``sqlite`` (a file in ``tmp_path``) and ``postgresql`` (a
    schema of its own in the database named by ``MESHROOM_TEST_POSTGRES_URL``,
    dropped afterwards). Tests get ids like ``test_x[sqlite]``.
``sqlite_url`` / ``postgres_url``
    one backend only.
``postgres_admin_url``
    the base URL itself (session scope), for tests that make their own schemas.

Without ``MESHROOM_TEST_POSTGRES_URL`` the PostgreSQL cases skip, saying so.
They fail instead when ``CI`` is set (CI must never silently skip them), and
whenever the variable is set but PostgreSQL cannot be reached. Nothing here is
imported by meshroom itself; it needs pytest.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest
import sqlalchemy as sa

POSTGRES_URL_VARIABLE = "MESHROOM_TEST_POSTGRES_URL"
BACKENDS = ("sqlite", "postgresql")


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def postgres_base_url() -> str:
    """The configured PostgreSQL URL; skips (or, in CI, fails) the test when there is none."""
    url = os.environ.get(POSTGRES_URL_VARIABLE, "").strip()
    if not url:
        reason = (
            f"PostgreSQL tests need {POSTGRES_URL_VARIABLE} "
            "(e.g. postgresql+psycopg://root@127.0.0.1:5432/test)"
        )
        if in_ci():
            pytest.fail(f"CI is set but {POSTGRES_URL_VARIABLE} is not: {reason}", pytrace=False)
        pytest.skip(reason)
    return url


def check_postgres(url: str) -> None:
    """Fail the test (never skip it) unless PostgreSQL answers at ``url``."""
    engine = sa.create_engine(url, poolclass=sa.NullPool, connect_args={"connect_timeout": 5})
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except Exception as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
        pytest.fail(
            f"{POSTGRES_URL_VARIABLE} is set but PostgreSQL is unreachable "
            f"({safe_url(url)}): {first_line}",
            pytrace=False,
        )
    finally:
        engine.dispose()


def safe_url(url: str) -> str:
    return sa.make_url(url).render_as_string(hide_password=True)


def url_with_search_path(url: str, schema: str) -> str:
    """``url`` whose connections use ``schema`` (libpq ``options=-csearch_path=…``)."""
    sa_url = sa.make_url(url).update_query_dict({"options": f"-csearch_path={schema}"})
    return sa_url.render_as_string(hide_password=False)


@contextmanager
def postgres_schema(url: str, *, prefix: str = "meshroom_test") -> Iterator[str]:
    """A new, empty schema; yields a URL that uses it. Dropped (CASCADE) afterwards."""
    schema = f"{prefix}_{uuid.uuid4().hex[:12]}"
    engine = sa.create_engine(url, poolclass=sa.NullPool, connect_args={"connect_timeout": 5})
    try:
        with engine.begin() as conn:
            conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
        yield url_with_search_path(url, schema)
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        engine.dispose()


@pytest.fixture(scope="session")
def postgres_admin_url() -> str:
    url = postgres_base_url()
    check_postgres(url)
    return url


@pytest.fixture
def postgres_url(postgres_admin_url: str) -> Iterator[str]:
    with postgres_schema(postgres_admin_url) as url:
        yield url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'meshroom.db'}"


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest) -> str:
    """A URL of an empty database, once per backend."""
    name = "sqlite_url" if request.param == "sqlite" else "postgres_url"
    return str(request.getfixturevalue(name))


# A throwaway PostgreSQL cluster, for tests that stop and restart the database.


def postgres_bindir() -> Path | None:
    """Where initdb and pg_ctl are: $MESHROOM_TEST_PG_BINDIR, PATH, or Debian's directory."""
    configured = os.environ.get("MESHROOM_TEST_PG_BINDIR")
    if configured:
        return Path(configured)
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).parent
    candidates = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    return candidates[-1].parent if candidates else None


class Cluster:
    """A PostgreSQL cluster of its own (initdb + pg_ctl) on a free loopback port.

    As root (CI), the server runs as the ``postgres`` system user, since
    PostgreSQL refuses to run as root; its directory is then made outside
    pytest's private temporary directory, which that user cannot enter.
    """

    def __init__(self, bindir: Path, directory: Path, port: int) -> None:
        self.bindir = bindir
        self.directory = directory
        self.data = directory / "data"
        self.port = port
        self.user: str | None = "postgres" if os.geteuid() == 0 else None
        self.url = f"postgresql+psycopg://meshroom@127.0.0.1:{port}/postgres"

    def _run(self, *args: str) -> None:
        result = subprocess.run(
            [str(self.bindir / args[0]), *args[1:]],
            user=self.user,
            cwd=self.directory,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if result.returncode != 0:
            log = self.directory / "server.log"
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise RuntimeError(f"{' '.join(args)} failed: {result.stderr or result.stdout}{tail}")

    def init(self) -> None:
        self._run(
            "initdb", "-D", str(self.data), "-A", "trust", "-U", "meshroom", "--no-sync", "-E",
            "UTF8",
        )  # fmt: skip

    def start(self) -> None:
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 "
            f"-c unix_socket_directories={self.directory} -c fsync=off "
            "-c max_connections=200"
        )
        self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.directory / "server.log"), "-o",
            options, "-w", "-t", "60", "start",
        )  # fmt: skip

    def stop(self, mode: str = "immediate") -> None:
        """Stop the server (``immediate``: like a crash, clients are cut off at once)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def throwaway_cluster(base: Path) -> Iterator[Cluster]:
    """initdb a cluster under ``base`` (or /tmp as root), start it, and remove it after."""
    bindir = postgres_bindir()
    if bindir is None or not (bindir / "initdb").exists():
        message = "no initdb found (install Debian's postgresql, or set MESHROOM_TEST_PG_BINDIR)"
        if in_ci():
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    import tempfile

    if os.geteuid() == 0:
        directory = Path(tempfile.mkdtemp(prefix="meshroom-pg-"))
        shutil.chown(directory, "postgres", "postgres")
    else:
        directory = base / "pg"
        directory.mkdir()
    cluster = Cluster(bindir, directory, free_port())
    try:
        cluster.init()
        cluster.start()
        yield cluster
    finally:
        if cluster.running():
            with suppress(RuntimeError):
                cluster.stop("immediate")
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def pg_cluster(tmp_path: Path) -> Iterator[Cluster]:
    """A PostgreSQL server of this test's own, which it may stop and start."""
    with throwaway_cluster(tmp_path) as cluster:
        yield cluster
