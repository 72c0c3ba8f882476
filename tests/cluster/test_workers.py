"""`meshroom serve --workers 2`: two processes on one port, one service through Redis."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from contextlib import AsyncExitStack

import httpx
import trio
from _redis import free_port
from _servers import API_KEY, SECRET

from meshroom import Role
from meshroom.cluster import open_client
from meshroom.store import SqlStore

from .harness import DEADLINE
from .processes import rejoin, token


async def test_two_workers_share_the_port_and_serve_one_meeting(tmp_path, redis):
    port, http_port = free_port(), free_port()
    database_url = f"sqlite:///{tmp_path / 'meshroom.db'}"
    env = {
        **os.environ,
        "MESHROOM_DATABASE_URL": database_url,
        "MESHROOM_SECRET": SECRET,
        "MESHROOM_API_KEYS": API_KEY,
        "MESHROOM_REDIS_URL": redis.url,
        "MESHROOM_NODE_ID": "box",
        "MESHROOM_CLOSE_TIMEOUT": "2",
    }
    parent = await trio.lowlevel.open_process(
        [
            sys.executable,
            "-m",
            "meshroom",
            "serve",
            "--workers",
            "2",
            "--port",
            str(port),
            "--http-port",
            str(http_port),
        ],
        env=env,
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        with trio.fail_after(3 * DEADLINE):
            async with open_client(redis.url, "meshroom") as probe:
                while set(await probe.nodes()) != {"box-w0", "box-w1"}:  # noqa: ASYNC110
                    await trio.sleep(0.05)
            async with httpx.AsyncClient(
                base_url=f"http://127.0.0.1:{http_port}",
                headers={"Authorization": f"Bearer {API_KEY}"},
            ) as http:
                while True:
                    try:
                        if (await http.get("/readyz")).status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    await trio.sleep(0.05)
                created = await http.post(
                    "/api/meetings", json={"title": "W", "hostEmpId": "p0", "start": True}
                )
                meeting_id = created.json()["id"]
            url = f"ws://127.0.0.1:{port}/meetings"
            names = [f"p{i}" for i in range(8)]
            async with AsyncExitStack() as stack:
                roles = [Role.HOST] + [Role.PARTICIPANT] * (len(names) - 1)
                peers = [
                    await rejoin(stack, url, token(meeting_id, name, role))
                    for name, role in zip(names, roles, strict=True)
                ]
                await peers[0].wait_for("peer:joined", empId=names[-1])
                # Whichever worker each landed on, the first and the last signal.
                offer = {"type": "offer", "sdp": "v=0"}
                await peers[-1].request("signal:offer", {"targetEmpId": "p0", "offer": offer})
                got = await peers[0].wait_for("signal:offer")
                assert got.data["fromEmpId"] == names[-1]

            parent.send_signal(signal.SIGTERM)
            assert await parent.wait() == 0
        store = SqlStore(database_url)
        await store.open()
        try:
            rows = await store.attendance_for_meeting(meeting_id)
        finally:
            await store.close()
        assert len(rows) == 8 and all(r.left_at is not None for r in rows)
        assert not any(r.closed_by_recovery for r in rows)
    finally:
        if parent.returncode is None:
            parent.kill()
            await parent.wait()
