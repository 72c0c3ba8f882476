"""Nodes as real `meshroom serve` processes, for what only a process can show: kill -9,
SIGTERM, several processes on one machine."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import trio
from _servers import API_KEY, SECRET

from meshroom import Role, mint_token
from meshroom.auth import TokenKeys
from meshroom.client import JoinRefused, Peer, connect

STARTED = re.compile(r"signaling on (ws://\S+/meetings), HTTP API on (\S+) ")


@dataclass
class NodeProcess:
    name: str
    process: trio.Process
    url: str = ""
    http_url: str = ""
    log: list[str] = field(default_factory=list)

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        self.process.send_signal(signal.SIGTERM)

    def text(self) -> str:
        return "".join(self.log)


async def rejoin(stack: AsyncExitStack, url: str, tok: str) -> Peer:
    """Join as a client does: retry while the cluster cannot place the room yet (a node
    just started, a room moving between nodes)."""
    while True:
        try:
            return await stack.enter_async_context(connect(url, tok))
        except JoinRefused as refused:
            assert refused.code in ("CLUSTER_UNAVAILABLE", "SHUTTING_DOWN"), refused
            await trio.sleep(0.1)  # a client's reconnect back-off


def token(meeting_id: str, emp_id: str, role: Role = Role.PARTICIPANT) -> str:
    keys = TokenKeys("HS256", SECRET, SECRET, audience="meshroom", issuer="meshroom")
    return mint_token(keys, meeting_id=meeting_id, emp_id=emp_id, display_name=emp_id, role=role)


async def _follow(node: NodeProcess, started: trio.Event) -> None:
    assert node.process.stderr is not None
    buffer = ""
    while chunk := await node.process.stderr.receive_some(65536):
        text = chunk.decode(errors="replace")
        node.log.append(text)
        if not started.is_set():
            buffer += text
            if match := STARTED.search(buffer):
                node.url, node.http_url = match.group(1), match.group(2)
                started.set()


@asynccontextmanager
async def node_processes(
    tmp_path: Path, redis_url: str, count: int, **variables: str
) -> AsyncIterator[list[NodeProcess]]:
    """``count`` nodes sharing a SQLite database, each logging to its own buffer."""
    env = {
        **os.environ,
        "MESHROOM_DATABASE_URL": f"sqlite:///{tmp_path / 'meshroom.db'}",
        "MESHROOM_SECRET": SECRET,
        "MESHROOM_API_KEYS": API_KEY,
        "MESHROOM_HOST": "127.0.0.1",
        "MESHROOM_PORT": "0",
        "MESHROOM_HTTP_PORT": "0",
        "MESHROOM_REDIS_URL": redis_url,
        "MESHROOM_NODE_TTL": "1",
        "MESHROOM_CLOSE_TIMEOUT": "2",
        "MESHROOM_SHUTDOWN_RECONNECT_AFTER": "0.2",
        "MESHROOM_LOG_LEVEL": "INFO",
        **variables,
    }
    nodes: list[NodeProcess] = []
    async with trio.open_nursery() as nursery:
        try:
            for index in range(count):
                name = f"node{index}"
                process = await trio.lowlevel.open_process(
                    [sys.executable, "-m", "meshroom", "serve"],
                    env={
                        **env,
                        "MESHROOM_NODE_ID": name,
                        "MESHROOM_ATTENDANCE_JOURNAL": str(tmp_path / f"{name}.journal"),
                    },
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    cwd=tmp_path,
                )
                node = NodeProcess(name, process)
                nodes.append(node)
                started = trio.Event()
                nursery.start_soon(_follow, node, started)
                with trio.fail_after(30):
                    await started.wait()
            yield nodes
        finally:
            with trio.CancelScope(shield=True):
                for node in nodes:
                    if node.process.returncode is None:
                        node.kill()
                    await node.process.wait()
