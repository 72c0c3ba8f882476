"""End-to-end tests: real WebRTC stacks (aiortc, Chromium) and a real TURN server (coturn).

Each needs something from outside Python's world: Debian's ``chromium`` and
``coturn`` packages, and the ``aiortc`` and ``playwright`` wheels. Without them
these tests skip, saying what is missing — except under CI (the ``CI``
environment variable is set), where a skip here is turned into a failure, so
that the end-to-end tests can never silently stop running.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest
import trio
from _servers import RunningServer, server_settings, start_server

from .rtc import AsyncioThread

E2E_DIR = Path(__file__).resolve().parent


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def missing(what: str) -> NoReturn:
    """Skip for want of ``what`` — or, under CI, fail."""
    if in_ci():
        pytest.fail(f"{what} (CI is set: end-to-end tests must run, not skip)", pytrace=False)
    pytest.skip(what)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Iterator[None]:
    """Under CI, any skip of an end-to-end test — however it was raised — is a failure."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and in_ci() and E2E_DIR in Path(str(item.path)).resolve().parents:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"end-to-end test skipped under CI: {reason}"


@pytest.fixture
def aiortc_available() -> None:
    if importlib.util.find_spec("aiortc") is None:
        missing("aiortc is not installed (pip install -e '.[test]')")


@pytest.fixture
def chromium_path() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            break
    else:
        missing("no Chromium: install Debian's chromium package (apt-get install chromium)")
    if importlib.util.find_spec("playwright") is None:
        missing("Playwright for Python is not installed (pip install -e '.[test]')")
    return path


@pytest.fixture
def turnserver_path() -> str:
    path = shutil.which("turnserver")
    if path is None:
        missing("no coturn: install Debian's coturn package (apt-get install coturn)")
    return path


@pytest.fixture
def artifacts_dir(tmp_path: Path) -> Path:
    """Where screenshots go: $MESHROOM_E2E_ARTIFACTS if set (CI keeps it), else tmp_path."""
    configured = os.environ.get("MESHROOM_E2E_ARTIFACTS")
    path = Path(configured) if configured else tmp_path / "artifacts"
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
async def aio() -> AsyncIterator[AsyncioThread]:
    """An asyncio loop in a thread of its own, for aiortc (meshroom's side stays Trio)."""
    thread = AsyncioThread()
    try:
        yield thread
    finally:
        await trio.to_thread.run_sync(thread.close)


async def open_server(nursery: trio.Nursery, tmp_path: Path, **overrides: Any) -> RunningServer:
    """conftest's real server, with its HTTP app on any free port and no public STUN servers
    (this machine has no internet; ICE on loopback needs none)."""
    values: dict[str, Any] = {"http_port": 0, "stun_urls": ""}
    values.update(overrides)
    return await start_server(nursery, server_settings(tmp_path, **values))


@pytest.fixture
async def e2e_server(tmp_path: Path) -> AsyncIterator[RunningServer]:
    async with trio.open_nursery() as nursery:
        running = await open_server(nursery, tmp_path)
        yield running
        running.server.request_shutdown()
