"""``meshroom serve --workers N``: N server processes on the same ports, one core each.

The parent binds nothing and serves nothing: it starts N ``meshroom serve``
processes with the same settings (plus ``reuse_port``, so the kernel spreads new
connections over them, and a node id and journal of their own), restarts one that
dies, and on SIGTERM/SIGINT passes the signal on and waits for every worker to
drain. The workers coordinate as cluster nodes through Redis, exactly as separate
machines do: a worker is a node.

Task tree::

    run_workers
    ├── keep_worker (x N)    one process each, restarted if it dies
    └── (signal)             SIGTERM/SIGINT: stop every worker, wait for them
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys

import trio

from .config import Settings

log = logging.getLogger(__name__)

# A worker that exits by itself (a crash) is started again after this long.
RESTART_DELAY = 1.0


def worker_environment(settings: Settings, index: int, base_node_id: str) -> dict[str, str]:
    environment = {**os.environ, **settings.environment()}
    environment.update(
        MESHROOM_WORKERS="1",
        MESHROOM_REUSE_PORT="1",
        MESHROOM_NODE_ID=f"{base_node_id}-w{index}",
    )
    journal = settings.journal_path()
    if journal is not None:
        environment["MESHROOM_ATTENDANCE_JOURNAL"] = f"{journal}.w{index}"
    return environment


async def run_workers(settings: Settings) -> int:
    """Run the workers until SIGTERM/SIGINT; 0 if every worker then exited cleanly."""
    cluster = settings.cluster_config()
    assert cluster is not None  # settings checked: workers > 1 needs redis_url
    stopping = trio.Event()
    codes: dict[int, int] = {}

    async def keep_worker(index: int) -> None:
        environment = worker_environment(settings, index, cluster.node_id)
        while True:
            process = await trio.lowlevel.open_process(
                [sys.executable, "-m", "meshroom", "serve"],
                env=environment,
                stdin=subprocess.DEVNULL,
            )
            try:
                with trio.CancelScope(shield=True):
                    # Shielded: on a stop the worker is signalled, and waited for here.
                    code = await _wait_or_stop(process, stopping, settings)
            finally:
                if process.returncode is None:
                    process.kill()
                    await process.wait()
            codes[index] = code
            if stopping.is_set():
                return
            log.warning(
                "worker %d (pid %d) exited with %d; starting it again in %g s",
                index,
                process.pid,
                code,
                RESTART_DELAY,
            )
            await trio.sleep(RESTART_DELAY)

    async with trio.open_nursery() as nursery:
        for index in range(settings.workers):
            nursery.start_soon(keep_worker, index)
        log.info("meshroom: %d workers on port %d", settings.workers, settings.port)
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                log.info("received %s: stopping the workers", signal.Signals(signum).name)
                stopping.set()
                break
    return 0 if all(code == 0 for code in codes.values()) else 1


async def _wait_or_stop(process: trio.Process, stopping: trio.Event, settings: Settings) -> int:
    async with trio.open_nursery() as nursery:

        async def stop_when_asked() -> None:
            await stopping.wait()
            process.send_signal(signal.SIGTERM)
            # The worker drains within its own bounds; past them it is killed.
            await trio.sleep(settings.close_timeout * 2 + 10)
            process.kill()

        nursery.start_soon(stop_when_asked)
        code = await process.wait()
        nursery.cancel_scope.cancel()
    return code
