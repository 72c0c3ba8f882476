"""A lone reply (a ping's answer) is written at once, without a writer task.

Most of what an idle peer is sent is the answer to its own heartbeat ``ping``. The
room writes such a frame straight to the connection when nothing else is queued for
the peer (``Room.reply`` over ``SendsAtOnce``), instead of starting the peer's writer
task for it. These tests hold that path to the writer's guarantees: the frame is
numbered and kept for a resume like any other, it never overtakes or splits a frame
already on its way, and what a full socket does not take is delivered later, whole
and in order. The transport-level tests drive the heartbeat timer by hand over a real
socket pair, as test_heartbeat_timer.py does. The last two hold the listener's read to
one scheduler step per wake-up of an idle connection, and two for a busy one.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import trio
import trio.testing
from _memhub import MemoryConnection, memory_hub
from _signaling import DEADLINE, raw_peer, receive_json, send_json, server_settings, start_server
from wsproto.connection import Connection, ConnectionType
from wsproto.events import Ping, TextMessage

from meshroom.core import HubConfig
from meshroom.core.connection import SendsAtOnce
from meshroom.transports.websocket import (
    IDLE_READ_SECONDS,
    Heartbeat,
    Heartbeats,
    WebSocketConnection,
)


class Client:
    """The other end of a socket pair, reading only when told."""

    def __init__(self, sock: trio.socket.SocketType) -> None:
        self.sock = sock
        self.ws = Connection(ConnectionType.CLIENT)

    def pending(self) -> list[object]:
        events: list[object] = []
        while True:
            try:
                data = self.sock._sock.recv(1 << 20)  # non-blocking: trio made it so
            except BlockingIOError:
                break
            if not data:
                break
            self.ws.receive_data(data)
            events.extend(self.ws.events())
        return events


def _listener_connection() -> tuple[WebSocketConnection, Client, Heartbeats]:
    server_sock, client_sock = trio.socket.socketpair()
    # Small buffers, so that a few frames fill the socket.
    server_sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_SNDBUF, 4096)
    client_sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_RCVBUF, 4096)
    conn = WebSocketConnection(trio.SocketStream(server_sock), remote="test")
    heartbeats = Heartbeats(Heartbeat(interval=10, timeout=5), tick=1)
    assert conn.join_heartbeats(heartbeats)
    return conn, Client(client_sock), heartbeats


def _texts(events: list[object]) -> list[str]:
    return [e.data for e in events if isinstance(e, TextMessage)]


async def test_a_listener_connection_writes_at_once_from_the_callers_task() -> None:
    conn, client, _ = _listener_connection()
    assert isinstance(conn, SendsAtOnce)
    assert conn.can_send_at_once()
    conn.send_at_once([b'{"event":"ack","id":1}', b'{"event":"ack","id":2}'])
    # No checkpoint was needed: the frames are on the wire already.
    assert _texts(client.pending()) == ['{"event":"ack","id":1}', '{"event":"ack","id":2}']


async def test_what_a_full_socket_does_not_take_follows_whole_and_in_order() -> None:
    conn, client, heartbeats = _listener_connection()
    big = [b'{"event":"x","n":%d,"pad":"%s"}' % (i, b"p" * 3000) for i in range(40)]
    sent = 0
    while conn.can_send_at_once():
        conn.send_at_once([big[sent]])
        sent += 1
        assert sent < len(big), "the socket never filled"
    # The socket is full: a frame is partly written and the rest kept; nothing else may
    # be written at once until it is out.
    assert not conn.can_send_at_once()
    # A ping due now goes behind the rest, not into the middle of its frame.
    conn._last_heard = trio.current_time() - 11
    conn._waiting = True
    heartbeats.sweep(trio.current_time())
    received: list[object] = []
    done = trio.Event()

    async def writer() -> None:
        # The next frame through the writer's path queues behind all of it too.
        await conn.send([b'{"event":"after"}'])
        done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer)
        while not done.is_set():
            received.extend(client.pending())
            heartbeats.sweep(trio.current_time())  # retries what the socket did not take
            await trio.sleep(0.001)
    received.extend(client.pending())
    texts = _texts(received)
    assert [json.loads(t)["n"] for t in texts[:-1]] == list(range(sent))
    assert texts[-1] == '{"event":"after"}'
    assert sum(isinstance(e, Ping) for e in received) == 1
    assert conn.can_send_at_once()


async def test_not_while_a_write_is_under_way_nor_without_the_listeners_timer() -> None:
    conn, _, _ = _listener_connection()
    async with conn._send_lock:
        assert not conn.can_send_at_once()
    assert conn.can_send_at_once()
    server_sock, _client_sock = trio.socket.socketpair()
    # On its own (or over TLS) a connection has no timer to retry a full socket.
    alone = WebSocketConnection(trio.SocketStream(server_sock), remote="test")
    assert not alone.can_send_at_once()


class WriterStarts(trio.abc.Instrument):
    """Counts the room writer tasks started."""

    def __init__(self) -> None:
        self.count = 0

    def task_spawned(self, task: trio.lowlevel.Task) -> None:
        if task.name.endswith("Room._write_loop"):
            self.count += 1


async def test_a_pings_answer_takes_no_writer_task_and_is_kept_for_a_resume(
    tmp_path,
) -> None:
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            running = await start_server(nursery, server_settings(tmp_path, resume_grace=30))
            meeting = await running.meeting()
            async with raw_peer(running.url, running.token(meeting, "ann")) as (ws, joined):
                starts = WriterStarts()
                trio.lowlevel.add_instrument(starts)
                try:
                    for request_id in (1, 2, 3):
                        await send_json(ws, "ping", {}, id=request_id)
                        ack = await receive_json(ws)
                        assert (ack["event"], ack["id"]) == ("ack", request_id)
                        assert "serverTime" in ack["data"]
                finally:
                    trio.lowlevel.remove_instrument(starts)
                assert starts.count == 0
                # Numbered like every frame, and kept until acknowledged: a resume from
                # the first ack replays the other two, exactly once.
                peer = running.hub.rooms[meeting.id].peers["ann"]
                assert [json.loads(f)["id"] for f in peer.sent] == [1, 2, 3]
                assert [json.loads(f)["seq"] for f in peer.sent] == [2, 3, 4]
                assert peer.written_through == 4
                assert joined["resumeToken"]
            nursery.cancel_scope.cancel()


class AtOnceConnection(MemoryConnection):
    """An in-memory connection that also writes at once; its writer's sends can be held."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.at_once = 0
        self.release = trio.Event()
        self.release.set()

    def can_send_at_once(self) -> bool:
        # While its writes are held, as while a write is under way: nothing at once.
        return self.release.is_set() and not self.dropped and not self.closed.is_set()

    def send_at_once(self, frames: Sequence[bytes]) -> bool:
        self.at_once += 1
        for frame in frames:
            self._to_client.send_nowait(frame)
        return True

    async def send(self, frames: Sequence[bytes]) -> None:
        await self.release.wait()
        await super().send(frames)


async def test_a_pings_answer_waits_behind_frames_already_queued() -> None:
    """With the peer's writer busy, the answer goes through it, after what it has."""
    async with memory_hub(HubConfig(close_timeout=1.0, resume_grace=30)) as mh:
        meeting = await mh.meeting()
        ann, joined = await mh.join(meeting, "ann", conn=AtOnceConnection("ann"))
        assert isinstance(ann, AtOnceConnection)
        assert joined["event"] == "room:joined"
        ann.at_once = 0  # (room:joined was written at once too)
        ann.release = trio.Event()  # ann's writer now blocks in its next send
        await mh.join(meeting, "bob")
        await trio.testing.wait_all_tasks_blocked()  # her writer holds peer:joined
        await ann.send_json("ping", {}, id=1)
        await trio.testing.wait_all_tasks_blocked()
        assert ann.at_once == 0 and ann.frames() == []
        ann.release.set()
        first, second = await ann.next_frame(), await ann.next_frame()
        assert (first["event"], second["event"], second["id"]) == ("peer:joined", "ack", 1)
        assert second["seq"] == first["seq"] + 1
        await trio.testing.wait_all_tasks_blocked()  # the writer has stopped
        await ann.send_json("ping", {}, id=2)
        third = await ann.next_frame()
        assert (third["event"], third["id"], third["seq"]) == ("ack", 2, second["seq"] + 1)
        assert ann.at_once == 1  # idle again: written at once, numbered in turn
        room = mh.room(meeting)
        assert [json.loads(f)["seq"] for f in room.peers["ann"].sent] == [2, 3, 4]


class Steps(trio.abc.Instrument):
    """Counts the scheduler steps of one task."""

    def __init__(self, task: trio.lowlevel.Task) -> None:
        self.task = task
        self.count = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if task is self.task:
            self.count += 1


async def _steps_per_wake_up(silent_for: float) -> int:
    """Scheduler steps a listener reader takes for each of 5 frames, after ``silent_for`` s."""
    conn, client, _ = _listener_connection()
    received: list[str | bytes] = []
    reader_task: list[trio.lowlevel.Task] = []

    async def reader() -> None:
        reader_task.append(trio.lowlevel.current_task())
        while True:
            received.append(await conn.receive())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        await trio.testing.wait_all_tasks_blocked()  # waiting on the socket
        steps = Steps(reader_task[0])
        trio.lowlevel.add_instrument(steps)
        try:
            for n in range(5):
                conn._last_heard = trio.current_time() - silent_for
                client.sock._sock.send(client.ws.send(TextMessage(f"frame {n}")))
                await trio.testing.wait_all_tasks_blocked()
        finally:
            trio.lowlevel.remove_instrument(steps)
        nursery.cancel_scope.cancel()
    assert received == [f"frame {n}" for n in range(5)]
    return steps.count


async def test_an_idle_reader_woken_by_a_frame_takes_one_step_of_the_scheduler() -> None:
    """A ping after a long silence is read in the wake-up's own step (no second trip)."""
    assert await _steps_per_wake_up(silent_for=IDLE_READ_SECONDS + 0.5) == 5


async def test_a_busy_reader_still_yields_once_after_its_read() -> None:
    """Heard from within the last second: the read yields, so readers woken together all
    read before any relays (the relay's writes then carry more per system call)."""
    assert await _steps_per_wake_up(silent_for=0.0) == 10


# The room's flusher: a broadcast or a relay to peers whose writer is not running


async def test_a_broadcast_and_a_relay_take_no_writer_task_and_keep_their_order(
    tmp_path,
) -> None:
    """peer:joined to three idle peers, then a burst of signals, all written by the
    room's flusher: no writer task, every frame numbered in turn and kept for a resume."""
    offer = {"type": "offer", "sdp": "v=0\r\n"}
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            running = await start_server(nursery, server_settings(tmp_path, resume_grace=30))
            meeting = await running.meeting()
            async with (
                raw_peer(running.url, running.token(meeting, "ann")) as (ann, _),
                raw_peer(running.url, running.token(meeting, "bob")) as (bob, _),
                raw_peer(running.url, running.token(meeting, "cat")) as (cat, _),
            ):
                assert (await receive_json(ann))["data"]["empId"] == "bob"
                for ws in (ann, bob):
                    assert (await receive_json(ws))["data"]["empId"] == "cat"
                starts = WriterStarts()
                trio.lowlevel.add_instrument(starts)
                try:
                    async with raw_peer(running.url, running.token(meeting, "dan")) as (dan, _):
                        for ws in (ann, bob, cat):
                            joined = await receive_json(ws)
                            assert (joined["event"], joined["data"]["empId"]) == (
                                "peer:joined",
                                "dan",
                            )
                        for n in range(20):
                            await send_json(
                                dan, "signal:offer", {"targetEmpId": "ann", "offer": offer}, id=n
                            )
                        relayed = [await receive_json(ann) for _ in range(20)]
                        acks = [await receive_json(dan) for _ in range(20)]
                finally:
                    trio.lowlevel.remove_instrument(starts)
                assert starts.count == 0
                assert {f["event"] for f in relayed} == {"signal:offer"}
                seqs = [f["seq"] for f in relayed]
                assert seqs == list(range(seqs[0], seqs[0] + 20))
                assert [a["id"] for a in acks] == list(range(20))
                room = running.hub.rooms[meeting.id]
                assert [json.loads(f)["seq"] for f in room.peers["ann"].sent][-20:] == seqs
            nursery.cancel_scope.cancel()


class PartialConnection(AtOnceConnection):
    """Its socket takes only the first frame of a write at once; it keeps the rest."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.held: list[bytes] = []
        self.sends: list[int] = []
        self.finish = trio.Event()  # the socket drains (the writer's send completes)
        self.finish.set()

    def can_send_at_once(self) -> bool:
        return not self.held and super().can_send_at_once()

    def send_at_once(self, frames: Sequence[bytes]) -> bool:
        self.at_once += 1
        self._to_client.send_nowait(frames[0])
        self.held = list(frames[1:])
        return not self.held

    async def send(self, frames: Sequence[bytes]) -> None:
        self.sends.append(len(frames))
        await self.finish.wait()
        held, self.held = self.held, []
        await super().send([*held, *frames])


async def test_what_the_socket_does_not_take_at_once_is_finished_by_the_writer() -> None:
    """Not left for the heartbeat timer's next sweep (seconds away): the room starts the
    peer's writer, whose send, with nothing of its own, writes the rest first."""
    async with memory_hub(HubConfig(close_timeout=1.0, resume_grace=30)) as mh:
        meeting = await mh.meeting()
        ann, _ = await mh.join(meeting, "ann", conn=PartialConnection("ann"))
        assert isinstance(ann, PartialConnection)
        room = mh.room(meeting)
        peer = room.peers["ann"]
        await trio.testing.wait_all_tasks_blocked()  # room:joined is written (at once)
        ann.at_once = 0
        ann.finish = trio.Event()
        for n in range(3):
            room.send(peer, b'{"event":"note","data":{"n":%d}}' % n)
        await trio.testing.wait_all_tasks_blocked()  # the writer waits for the socket
        assert ann.held and peer.writer is not None
        # Not yet all written: a resume without lastSeq would send 2-4 again.
        assert peer.written_through == 1
        ann.finish.set()
        got = [await ann.next_frame() for _ in range(3)]
        assert [f["data"]["n"] for f in got] == [0, 1, 2]
        assert [f["seq"] for f in got] == [2, 3, 4]
        assert ann.at_once == 1 and ann.sends == [0]  # the writer's send had nothing new
        await trio.testing.wait_all_tasks_blocked()
        assert peer.writer is None and not ann.held
        assert peer.written_through == 4  # counted once all of it was written
        room.send(peer, b'{"event":"note","data":{"n":3}}')  # idle again: at once
        assert (await ann.next_frame())["seq"] == 5
        assert ann.at_once == 2
