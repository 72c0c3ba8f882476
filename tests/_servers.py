"""A real meshroom server on loopback for tests: settings, start-up, tokens, its store.

Imported by test modules (``from _servers import ...``); tests/conftest.py turns it
into fixtures. Test modules never import conftest itself.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from meshroom import Role, Server, Settings, mint_token
from meshroom.core import Hub
from meshroom.metrics import Metrics
from meshroom.store import Meeting, MeetingStatus, SqlStore

SECRET = "test-secret-" + "x" * 40
API_KEY = "test-api-key-0123456789"


@dataclass
class RunningServer:
    """A meshroom server running in the test's own Trio loop."""

    server: Server
    settings: Settings

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def http_url(self) -> str:
        assert self.server.http_url is not None
        return self.server.http_url

    @property
    def hub(self) -> Hub:
        assert self.server.hub is not None
        return self.server.hub

    @property
    def metrics(self) -> Metrics:
        assert self.server.runtime is not None
        return self.server.runtime.metrics

    @property
    def store(self) -> SqlStore:
        store = self.hub.store
        assert isinstance(store, SqlStore)
        return store

    async def meeting(
        self, *, live: bool = True, title: str = "Standup", host: str = "host"
    ) -> Meeting:
        meeting = await self.store.create_meeting(title=title, host_emp_id=host)
        if live:
            meeting = await self.store.transition(meeting.id, MeetingStatus.LIVE)
        return meeting

    def token(
        self,
        meeting: Meeting | str,
        emp_id: str,
        role: Role | str = Role.PARTICIPANT,
        *,
        name: str | None = None,
        ttl: dt.timedelta = dt.timedelta(hours=1),
        **kwargs: Any,
    ) -> str:
        meeting_id = meeting if isinstance(meeting, str) else meeting.id
        return mint_token(
            self.settings.token_keys(),
            meeting_id=meeting_id,
            emp_id=emp_id,
            display_name=name or emp_id.title(),
            role=Role(role),
            ttl=ttl,
            **kwargs,
        )


def server_settings(tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": 0,
        "http_port": "off",  # as a user writes it; None would mean "not given"
        "api_keys": API_KEY,
        "database_url": f"sqlite:///{tmp_path / 'meshroom.db'}",
        "secret": SECRET,
        "auth_timeout": 5.0,
        "close_timeout": 2.0,
        # Resume off unless a test turns it on: with it, a drop is not a leave for 15 s.
        "resume_grace": 0.0,
        # Kicked employees may rejoin at once unless a test turns the block on.
        "kick_rejoin_block": 0.0,
        "attendance_journal": str(tmp_path / "meshroom.journal"),
    }
    values.update(overrides)
    return Settings.from_env({}, **values)


async def start_server(nursery: trio.Nursery, settings: Settings) -> RunningServer:
    server = Server(settings, tune_gc=False)  # (the test process keeps CPython's defaults)
    await nursery.start(server.run)
    return RunningServer(server, settings)
