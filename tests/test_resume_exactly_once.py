"""Resume delivers every event exactly once, in order, wherever the connection breaks.

The property: a sender relays N signals to bob; bob's connection breaks at random
points — dropped (the server notices) or gone silent (it does not), with a random
number of frames already written into it that bob never read — and bob resumes
each time, saying which frame it has (``lastSeq``). Bob ends up with the N
signals, each once, in order; and so does every other frame bob was sent.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import trio
import trio.testing
from _memhub import MemoryConnection, MemoryHub, memory_hub
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshroom import Role
from meshroom.core import HubConfig

CONFIG = HubConfig(close_timeout=1.0, resume_grace=60.0, rate_limit=0, outbox_size=4096)


@dataclass(frozen=True)
class Cut:
    sent_before: int  # offers alice sends before bob's connection breaks
    read_fraction: float  # of the frames waiting for bob, the share he read before the break
    silent: bool  # the server is not told (bob just resumes from elsewhere)
    ack: bool  # bob told the server what he had (a ping with lastSeq) before the break


cuts = st.lists(
    st.builds(
        Cut,
        sent_before=st.integers(0, 40),
        read_fraction=st.floats(0, 1),
        silent=st.booleans(),
        ack=st.booleans(),
    ),
    max_size=6,
)


class AtOnceConnection(MemoryConnection):
    """Writes at once as the standalone listener's connection does (``SendsAtOnce``),
    through a socket that takes, at each write at once, the next count of ``takes``
    (cycled; 0 is a full socket): what it does not take is held, and goes first at the
    next ``send`` (the writer's), or is lost with the connection. As on a real socket,
    nothing is written at once while a send is under way.
    """

    def __init__(self, name: str, takes: list[int]) -> None:
        super().__init__(name)
        self.takes = itertools.cycle(takes)
        self.held: list[bytes] = []
        self.sending = False

    def can_send_at_once(self) -> bool:
        return not (self.held or self.sending or self.dropped or self.closed.is_set())

    def send_at_once(self, frames: Sequence[bytes]) -> bool:
        takes = next(self.takes)
        for frame in frames[:takes]:
            self._to_client.send_nowait(frame)
        self.held = list(frames[takes:])
        return not self.held

    async def send(self, frames: Sequence[bytes]) -> None:
        self.sending = True
        try:
            held, self.held = self.held, []
            await super().send([*held, *frames])
        finally:
            self.sending = False


def connection_maker(takes: list[int] | None) -> Callable[[], MemoryConnection]:
    """Bob's connections: plain (the room's writer writes everything) or at once."""
    if takes is None:
        return lambda: MemoryConnection("bob")
    return lambda: AtOnceConnection("bob", takes)


class Bob:
    """Bob's client: it keeps what it read and the seq of the last frame."""

    def __init__(
        self, conn: MemoryConnection, joined: dict[str, Any], make: Callable[[], MemoryConnection]
    ) -> None:
        self.make = make
        self.conn = conn
        self.token = joined["data"]["resumeToken"]
        self.last_seq = joined["seq"]
        self.frames: list[dict[str, Any]] = [joined]

    def take(self, frames: list[dict[str, Any]]) -> None:
        for frame in frames:
            if "seq" in frame:
                assert frame["seq"] == self.last_seq + 1, (frame, self.last_seq)
                self.last_seq = frame["seq"]
            self.frames.append(frame)

    async def resume(self, h: MemoryHub, meeting: Any) -> None:
        conn, first = await h.join(
            meeting, "bob", resume_token=self.token, last_seq=self.last_seq, conn=self.make()
        )
        assert first["event"] == "room:resumed", first
        assert "seq" not in first
        self.conn, self.token = conn, first["data"]["resumeToken"]


async def _scenario(plan: list[Cut], tail: int, takes: list[int] | None = None) -> None:
    make = connection_maker(takes)
    # A frame the room never writes shows as a wait that does not end: bounded.
    with trio.fail_after(20):
        await _run_scenario(plan, tail, make)


async def _run_scenario(plan: list[Cut], tail: int, make: Callable[[], MemoryConnection]) -> None:
    async with memory_hub(CONFIG) as h:
        meeting = await h.meeting()
        alice, _ = await h.join(meeting, "alice", Role.HOST)
        conn, joined = await h.join(meeting, "bob", conn=make())
        bob = Bob(conn, joined, make)
        sent = 0

        async def offers(count: int) -> None:
            nonlocal sent
            for _ in range(count):
                offer = {"type": "offer", "sdp": str(sent)}
                await alice.send_json("signal:offer", {"targetEmpId": "bob", "offer": offer})
                sent += 1
            await trio.testing.wait_all_tasks_blocked()

        for cut in plan:
            await offers(cut.sent_before)
            waiting = bob.conn.frames()
            read = waiting[: round(len(waiting) * cut.read_fraction)]
            bob.take(read)  # the rest were written, and are lost with the connection
            if cut.ack:
                await bob.conn.send_json("ping", {"lastSeq": bob.last_seq})
                await trio.testing.wait_all_tasks_blocked()
            if not cut.silent:
                bob.conn.drop()
                await trio.testing.wait_all_tasks_blocked()
            old = bob.conn
            await bob.resume(h, meeting)
            if cut.silent:
                await old.closed.wait()
                assert old.close_code == 4013  # resumed elsewhere
        await offers(tail)
        bob.take(bob.conn.frames())

        offers_seen = [
            int(f["data"]["offer"]["sdp"]) for f in bob.frames if f["event"] == "signal:offer"
        ]
        assert offers_seen == list(range(sent))
        assert h.room(meeting).peers["bob"].state.value == "live"
        rows = [r for r in await h.store.attendance_for_meeting(meeting.id) if r.emp_id == "bob"]
        assert len(rows) == 1  # one session throughout: no leave, no rejoin


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cuts, st.integers(0, 10))
def test_every_event_arrives_once_in_order_across_random_breaks(plan, tail):
    trio.run(_scenario, plan, tail)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cuts, st.integers(0, 10), st.lists(st.integers(0, 3), min_size=1, max_size=5))
def test_the_same_when_the_room_writes_at_once_through_a_socket_that_takes_part(plan, tail, takes):
    """The room's flusher and a ping's answer write at once; what the socket does not
    take is finished by the writer, or lost with a break and sent again on the resume."""
    trio.run(_scenario, plan, tail, takes)


async def test_a_resume_from_a_frame_no_longer_kept_is_an_ordinary_join(real_time_watchdog):
    config = HubConfig(close_timeout=1.0, resume_grace=60.0, rate_limit=0, outbox_size=8)
    async with memory_hub(config) as h:
        meeting = await h.meeting()
        alice, _ = await h.join(meeting, "alice", Role.HOST)
        bob, joined = await h.join(meeting, "bob")
        for n in range(6):  # bob reads nothing: more than 8 frames are never acknowledged
            offer = {"type": "offer", "sdp": str(n)}
            await alice.send_json("signal:offer", {"targetEmpId": "bob", "offer": offer})
            await trio.testing.wait_all_tasks_blocked()
            bob.frames()  # (written and read by the transport, but bob's app lost them)
        await alice.send_json("presence:update", {"muted": True})
        await alice.send_json("presence:update", {"muted": False})
        await alice.send_json("presence:update", {"muted": True})
        await trio.testing.wait_all_tasks_blocked()
        bob.frames()
        bob.drop()
        await trio.testing.wait_all_tasks_blocked()
        _, again = await h.join(
            meeting, "bob", resume_token=joined["data"]["resumeToken"], last_seq=joined["seq"]
        )
        # Frame 2 is gone from the 8 kept: bob gets a fresh session, not a gap.
        assert again["event"] == "room:joined"
        assert h.metrics.resumes.labels("refused")._value.get() == 1


async def test_a_last_seq_from_the_future_is_refused(real_time_watchdog):
    async with memory_hub(CONFIG) as h:
        meeting = await h.meeting()
        _, joined = await h.join(meeting, "bob")
        _, again = await h.join(
            meeting, "bob", resume_token=joined["data"]["resumeToken"], last_seq=joined["seq"] + 5
        )
        assert again["event"] == "room:joined"


async def test_a_resume_does_not_wait_for_a_silent_connection_to_close(
    mock_clock, real_time_watchdog
):
    """The old connection went silent (writes and the close hang): the new one goes on at once.

    The clock stands still here, so anything that waited for close_timeout would hang.
    """
    async with memory_hub(CONFIG) as h:
        meeting = await h.meeting()
        alice, _ = await h.join(meeting, "alice", Role.HOST)
        bob, joined = await h.join(meeting, "bob")
        bob.stall()
        offer = {"type": "offer", "sdp": "into-the-void"}
        await alice.send_json("signal:offer", {"targetEmpId": "bob", "offer": offer})
        await trio.testing.wait_all_tasks_blocked()
        bob2, first = await h.join(
            meeting, "bob", resume_token=joined["data"]["resumeToken"], last_seq=joined["seq"]
        )
        assert first["event"] == "room:resumed"
        assert first["data"]["queued"] == 1
        replayed = await bob2.next_frame()
        assert replayed["data"]["offer"]["sdp"] == "into-the-void"
        assert replayed["seq"] == joined["seq"] + 1
        mock_clock.autojump_threshold = 0  # let the silent connection's close time out now


async def test_exactly_once_over_the_wire_with_the_python_client(tmp_path):
    from _rawws import raw_client
    from _servers import server_settings, start_server

    from meshroom.client import connect
    from meshroom.core.events import PeerDetached

    settings = server_settings(tmp_path, resume_grace=30.0)
    with trio.fail_after(15):
        async with trio.open_nursery() as nursery:
            server = await start_server(nursery, settings)
            meeting = await server.meeting()
            with server.hub.events.subscribe(PeerDetached) as detached:
                async with connect(server.url, server.token(meeting, "alice", Role.HOST)) as alice:
                    async with raw_client(server.url) as bob:
                        joined = await bob.authenticate(server.token(meeting, "bob"))
                        await alice.wait_for("peer:joined", empId="bob")
                        for n in range(6):
                            await alice.offer("bob", {"type": "offer", "sdp": str(n)})
                        read = [await bob.receive_json() for _ in range(6)]
                        assert [f["seq"] for f in read] == [joined["seq"] + i for i in range(1, 7)]
                        await bob.abort()  # bob's app had processed only the first three
                    await detached.receive()
                    for n in (6, 7):
                        await alice.offer("bob", {"type": "offer", "sdp": str(n)})
                    async with connect(
                        server.url,
                        server.token(meeting, "bob"),
                        resume_token=joined["data"]["resumeToken"],
                        last_seq=read[2]["seq"],
                    ) as bob2:
                        assert bob2.resumed and bob2.snapshot["queued"] == 5
                        sdps = [(await bob2.next_event()).data["offer"]["sdp"] for _ in range(5)]
                        assert sdps == ["3", "4", "5", "6", "7"]
                        assert bob2.last_seq == read[2]["seq"] + 5
                        await bob2.leave()
            server.server.request_shutdown()


def test_room_joined_is_numbered_but_never_kept_for_a_replay():
    # It carries the resume token: a client without it cannot resume, so keeping it
    # (the largest frame an idle peer holds) would only cost memory.
    import datetime as dt

    from meshroom.core.peer import Peer

    peer = Peer(
        emp_id="bob",
        display_name="Bob",
        role=Role.PARTICIPANT,
        attendance_id=1,
        joined_at=dt.datetime.now(dt.UTC),
        outbox_size=16,
    )
    peer.keep = 16
    joined, first, second = peer.number([b'{"event":"room:joined"}', b'{"n":1}', b'{"n":2}'])
    assert joined.endswith(b',"seq":1}')
    assert peer.sent == [first, second]
    assert not peer.can_replay_after(0)  # it would need room:joined: join afresh instead
    assert peer.can_replay_after(1)
    assert peer.replay_after(1) == [first, second]
    assert peer.replay_after(2) == [second]
