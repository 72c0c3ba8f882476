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


# What a skipped test needs, by a word in its skip reason: the run's last words before
# pytest's own say it in one line, so a newcomer knows what did not run and why.
_NEEDS = (
    ("PostgreSQL", "PostgreSQL: set MESHROOM_TEST_POSTGRES_URL=postgresql+psycopg://USER@HOST/DB"),
    ("Chromium", "Chromium: apt-get install chromium"),
    ("coturn", "coturn: apt-get install coturn"),
    ("redis-server", "Redis: apt-get install redis-server (the cluster tests start their own)"),
    ("node", "Node.js: install node and npm (tests/socketio/node is installed with npm ci)"),
)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    skipped = terminalreporter.stats.get("skipped", [])
    if not skipped:
        return
    counts: dict[str, int] = {}
    for report in skipped:
        reason = str(report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr)
        need = next((text for word, text in _NEEDS if word.lower() in reason.lower()), "other")
        counts[need] = counts.get(need, 0) + 1
    needs = "; ".join(f"{need} ({n})" for need, n in counts.items())
    terminalreporter.write_line(f"meshroom: {len(skipped)} test(s) skipped — to run them: {needs}")
