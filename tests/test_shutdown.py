"""Graceful shutdown of a real ``meshroom serve`` process on SIGTERM and SIGINT.

Every peer (on both listeners) gets ``server:shutdown`` with a reconnect hint and
a 1001 close, a connection still authenticating is refused the same way, the
process exits 0 within a bounded time, and every attendance row is closed with
reason ``server-shutdown``.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import signal
import subprocess
import sys
from contextlib import AsyncExitStack
from pathlib import Path

import pytest
import trio
from _rawws import raw_client

from meshroom import Role, mint_token
from meshroom.auth import TokenKeys
from meshroom.client import Peer, connect
from meshroom.store import MeetingStatus, SqlStore

SECRET = "shutdown-test-secret-" + "x" * 40
CLOSE_TIMEOUT = 2.0
# Exit within: peers closed (close_timeout), HTTP server drained (close_timeout),
# rows written; with room to spare for a loaded CI machine.
EXIT_BOUND = 2 * CLOSE_TIMEOUT + 6


async def _read_until(
    stream: trio.abc.ReceiveStream, pattern: str, seen: list[str]
) -> re.Match[str]:
    """Read the server's log until a line matches ``pattern``."""
    buffer = ""
    while True:
        chunk = await stream.receive_some(65536)
        if not chunk:
            raise AssertionError("the server exited early:\n" + "".join(seen))
        text = chunk.decode(errors="replace")
        seen.append(text)
        buffer += text
        match = re.search(pattern, buffer)
        if match:
            return match


async def _drain(stream: trio.abc.ReceiveStream, seen: list[str]) -> None:
    while chunk := await stream.receive_some(65536):
        seen.append(chunk.decode(errors="replace"))


async def _events_until_closed(peer: Peer) -> list[tuple[str, dict]]:
    events = []
    async for event in peer:
        events.append((event.name, event.data))
    await peer.wait_closed()
    return events


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_signal_closes_every_peer_writes_every_row_and_exits_zero(tmp_path: Path, signum):
    database_url = f"sqlite:///{tmp_path / 'meshroom.db'}"
    store = SqlStore(database_url)
    await store.open()
    meeting = await store.create_meeting(title="Shutdown", host_emp_id="alice")
    meeting = await store.transition(meeting.id, MeetingStatus.LIVE)
    await store.close()
    keys = TokenKeys("HS256", SECRET, SECRET, audience="meshroom", issuer="meshroom")

    def token(emp_id: str, role: Role = Role.PARTICIPANT) -> str:
        return mint_token(
            keys,
            meeting_id=meeting.id,
            emp_id=emp_id,
            display_name=emp_id,
            role=role,
            ttl=dt.timedelta(hours=1),
        )

    env = {
        **os.environ,
        "MESHROOM_DATABASE_URL": database_url,
        "MESHROOM_SECRET": SECRET,
        "MESHROOM_API_KEYS": "shutdown-test-api-key-0123456789",
        "MESHROOM_HOST": "127.0.0.1",
        "MESHROOM_PORT": "0",
        "MESHROOM_HTTP_PORT": "0",  # any free port: the log line says which
        "MESHROOM_CLOSE_TIMEOUT": str(CLOSE_TIMEOUT),
        "MESHROOM_SHUTDOWN_RECONNECT_AFTER": "3",
        "MESHROOM_LOG_LEVEL": "INFO",
    }
    log: list[str] = []
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "meshroom", "serve"],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd=tmp_path,
    )
    assert process.stderr is not None
    try:
        with trio.fail_after(20):
            started = await _read_until(
                process.stderr, r"signaling on (ws://\S+/meetings), HTTP API on (http://\S+) ", log
            )
            ws_url, http_url = started.group(1), started.group(2)
            quart_url = http_url.replace("http://", "ws://", 1) + "/meetings"
            async with trio.open_nursery() as nursery, AsyncExitStack() as stack:
                nursery.start_soon(_drain, process.stderr, log)
                alice = await stack.enter_async_context(connect(ws_url, token("alice", Role.HOST)))
                bob = await stack.enter_async_context(connect(ws_url, token("bob")))
                carol = await stack.enter_async_context(connect(quart_url, token("carol")))
                await alice.wait_for("peer:joined", empId="carol")
                # Connected, not yet authenticated.
                lurker = await stack.enter_async_context(raw_client(ws_url))

                sent_at = trio.current_time()
                process.send_signal(signum)
                for peer in (alice, bob, carol):
                    events = await _events_until_closed(peer)
                    names = [name for name, _ in events]
                    assert names[-2:] == ["server:shutdown", "session:closed"], events
                    hint = events[-2][1]["reconnectAfterMs"]
                    assert 3000 <= hint <= 6000
                    assert events[-1][1]["reason"] == "server-shutdown"
                    assert peer.close_code == 1001
                refusal = await lurker.frames_until_closed()
                assert [f["data"]["code"] for f in refusal] == ["SHUTTING_DOWN"]
                assert lurker.close_code == 1001
                returncode = await process.wait()
                took = trio.current_time() - sent_at
                nursery.cancel_scope.cancel()
        assert returncode == 0, "".join(log)
        assert took < EXIT_BOUND
        # New connections are refused once it is gone, of course; and the rows:
        store = SqlStore(database_url)
        await store.open()
        try:
            rows = await store.attendance_for_meeting(meeting.id)
        finally:
            await store.close()
        assert sorted((r.emp_id, r.leave_reason) for r in rows) == [
            ("alice", "server-shutdown"),
            ("bob", "server-shutdown"),
            ("carol", "server-shutdown"),
        ]
        assert all(r.left_at is not None and not r.closed_by_recovery for r in rows)
        assert "received " + signal.Signals(signum).name in "".join(log)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
