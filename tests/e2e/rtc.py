"""aiortc peers driven from Trio tests.

meshroom and its client are Trio; aiortc is asyncio. Each test gets one asyncio
loop in a thread of its own (:class:`AsyncioThread`), where every aiortc object
lives and runs. The Trio side awaits coroutines submitted to that loop
(:meth:`AsyncioThread.run`), and signals over meshroom with its own Trio client
(:class:`MeshPeer`). Nothing is shared between the two loops but those calls.

aiortc is imported lazily, so that a machine without it skips (or, under CI,
fails) with a clear reason instead of erroring at collection.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

import trio

from meshroom.client import Event, Peer, connect

T = TypeVar("T")


class AsyncioThread:
    """An asyncio event loop running in a daemon thread until :meth:`close`."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._main, name="aiortc-loop", daemon=True)
        self._thread.start()

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    async def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the asyncio loop and wait for it without blocking Trio."""
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        done = trio.Event()
        token = trio.lowlevel.current_trio_token()

        def wake(_: object) -> None:
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(done.set)

        future.add_done_callback(wake)
        try:
            await done.wait()
        except BaseException:
            future.cancel()
            raise
        return future.result()

    def close(self) -> None:
        """Cancel what is left on the loop, stop it, join the thread (blocking)."""

        async def cancel_all() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        if self.loop.is_running():
            asyncio.run_coroutine_threadsafe(cancel_all(), self.loop).result(timeout=10)
            self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        if not self._thread.is_alive():
            self.loop.close()


def ice_servers(snapshot_servers: list[dict[str, Any]]) -> list[Any]:
    """The snapshot's ``iceServers`` (RTCConfiguration shape) as aiortc objects."""
    from aiortc import RTCIceServer

    return [
        RTCIceServer(
            urls=server["urls"],
            username=server.get("username"),
            credential=server.get("credential"),
        )
        for server in snapshot_servers
    ]


def candidate_types(sdp: str) -> list[str]:
    """The ``typ`` of every ICE candidate in an SDP."""
    types = []
    for line in sdp.splitlines():
        if line.startswith("a=candidate:"):
            parts = line.split()
            types.append(parts[parts.index("typ") + 1])
    return types


class RtcPeer:
    """One participant's aiortc side: a peer connection and a data channel per remote peer.

    Every method runs on the asyncio loop (call it through :meth:`AsyncioThread.run`).
    """

    def __init__(self, name: str, servers: list[dict[str, Any]], *, relay_only: bool = False):
        self.name = name
        self.servers = servers
        self.relay_only = relay_only
        self.pcs: dict[str, Any] = {}
        self.channels: dict[str, Any] = {}
        self.received: dict[str, list[str]] = {}
        self.closed_channels: set[str] = set()
        self._changed = asyncio.Event()

    def _configuration(self) -> Any:
        from aiortc import RTCConfiguration
        from aiortc.rtcconfiguration import RTCIceTransportPolicy

        policy = RTCIceTransportPolicy.RELAY if self.relay_only else RTCIceTransportPolicy.ALL
        return RTCConfiguration(iceServers=ice_servers(self.servers), iceTransportPolicy=policy)

    def _notify(self) -> None:
        """Wake every :meth:`wait` to check its condition again."""
        self._changed.set()
        self._changed = asyncio.Event()

    def _watch(self, remote: str, channel: Any) -> None:
        self.channels[remote] = channel

        @channel.on("open")  # type: ignore[misc]
        def on_open() -> None:
            self._notify()

        @channel.on("message")  # type: ignore[misc]
        def on_message(message: str) -> None:
            self.received.setdefault(remote, []).append(message)
            self._notify()

        @channel.on("close")  # type: ignore[misc]
        def on_close() -> None:
            self.closed_channels.add(remote)
            self._notify()

        # A channel announced by "datachannel" may already be open: no "open" event follows.
        self._notify()

    def _new_pc(self, remote: str) -> Any:
        from aiortc import RTCPeerConnection

        pc = RTCPeerConnection(self._configuration())
        self.pcs[remote] = pc
        pc.on("connectionstatechange", self._notify)
        return pc

    async def offer(self, remote: str) -> dict[str, str]:
        """Open a connection to ``remote`` with a data channel; return the offer."""
        pc = self._new_pc(remote)
        self._watch(remote, pc.createDataChannel(f"{self.name}->{remote}"))
        await pc.setLocalDescription(await pc.createOffer())
        return {"type": pc.localDescription.type, "sdp": pc.localDescription.sdp}

    async def answer(self, remote: str, offer: dict[str, str]) -> dict[str, str]:
        """Accept ``remote``'s offer (its data channel arrives on the connection)."""
        from aiortc import RTCSessionDescription

        pc = self._new_pc(remote)
        pc.on("datachannel", lambda channel: self._watch(remote, channel))
        await pc.setRemoteDescription(RTCSessionDescription(offer["sdp"], offer["type"]))
        await pc.setLocalDescription(await pc.createAnswer())
        return {"type": pc.localDescription.type, "sdp": pc.localDescription.sdp}

    async def accept(self, remote: str, answer: dict[str, str]) -> None:
        from aiortc import RTCSessionDescription

        await self.pcs[remote].setRemoteDescription(
            RTCSessionDescription(answer["sdp"], answer["type"])
        )

    # The waits have no deadline of their own: the Trio side bounds them with
    # trio.fail_after, and AsyncioThread.run cancels them when that expires.

    async def wait(self, predicate: Callable[[], bool]) -> None:
        while not predicate():
            await self._changed.wait()

    async def wait_open(self, remotes: list[str]) -> None:
        def all_open() -> bool:
            return all(
                r in self.channels and self.channels[r].readyState == "open" for r in remotes
            )

        await self.wait(all_open)

    async def send(self, remote: str, text: str) -> None:
        self.channels[remote].send(text)

    async def wait_message(self, remote: str, text: str) -> None:
        await self.wait(lambda: text in self.received.get(remote, []))

    async def wait_gone(self, remote: str) -> None:
        """Until the data channel to ``remote`` has closed (its end closed the connection)."""
        await self.wait(lambda: remote in self.closed_channels)

    def state(self, remote: str) -> str:
        return str(self.pcs[remote].connectionState)

    def local_sdp(self, remote: str) -> str:
        return str(self.pcs[remote].localDescription.sdp)

    def remote_sdp(self, remote: str) -> str:
        return str(self.pcs[remote].remoteDescription.sdp)

    async def close(self, remote: str | None = None) -> None:
        for name in [remote] if remote else list(self.pcs):
            pc = self.pcs.pop(name, None)
            if pc is not None:
                await pc.close()


@dataclass
class MeshPeer:
    """A meshroom participant whose media side is an aiortc :class:`RtcPeer`.

    Signaling runs on Trio with meshroom's own client: a pump task answers offers,
    applies answers and records every event the server pushes.
    """

    aio: AsyncioThread
    signaling: Peer
    rtc: RtcPeer
    events: list[Event] = field(default_factory=list)
    changed: trio.Event = field(default_factory=trio.Event)

    @property
    def emp_id(self) -> str:
        return self.signaling.emp_id

    def _record(self, event: Event) -> None:
        self.events.append(event)
        self.changed.set()
        self.changed = trio.Event()

    async def pump(self) -> None:
        try:
            async for event in self.signaling:
                data = event.data
                if event.name == "signal:offer":
                    answer = await self.aio.run(self.rtc.answer(data["fromEmpId"], data["offer"]))
                    await self.signaling.answer(data["fromEmpId"], answer)
                elif event.name == "signal:answer":
                    await self.aio.run(self.rtc.accept(data["fromEmpId"], data["answer"]))
                self._record(event)
        finally:
            # The connection is gone; wake whoever waits for an event that will never come.
            self.changed.set()

    async def wait_event(self, name: str, **match: Any) -> Event:
        """The first recorded event ``name`` whose data has every ``match`` item (no deadline:
        bound it with trio.fail_after)."""
        while True:
            for event in self.events:
                if event.name == name and all(event.data.get(k) == v for k, v in match.items()):
                    return event
            if self.signaling.closed.is_set():
                raise AssertionError(f"{self.emp_id}: connection closed before {name}")
            await self.changed.wait()

    async def call_all(self) -> None:
        """As the newcomer: offer a connection to everyone already in the room."""
        for other in self.signaling.snapshot["peers"]:
            offer = await self.aio.run(self.rtc.offer(other["empId"]))
            await self.signaling.offer(other["empId"], offer)


@contextlib.asynccontextmanager
async def mesh_peer(
    nursery: trio.Nursery, aio: AsyncioThread, url: str, token: str, *, relay_only: bool = False
) -> AsyncIterator[MeshPeer]:
    """Join through meshroom and run the signaling pump; close the aiortc side on exit."""
    async with connect(url, token) as signaling:
        rtc = RtcPeer(signaling.emp_id, signaling.snapshot["iceServers"], relay_only=relay_only)
        peer = MeshPeer(aio, signaling, rtc)
        nursery.start_soon(peer.pump)
        try:
            yield peer
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(10):
                await aio.run(rtc.close())
