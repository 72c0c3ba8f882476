"""One meshroom process as a node of a cluster: it runs the rooms whose leases it holds
and relays every other client to the node that runs that client's room.

What it adds to a :class:`~meshroom.core.Hub` (which stays unaware of Redis):

- **Claims** (the hub's :class:`~meshroom.core.options.RoomClaims`): a room runs here
  only while this node holds its lease (:mod:`meshroom.cluster.leases`).
- **Fencing**: the node's registration and every lease are renewed together every
  ``node_ttl / 4``. If no renewal succeeds for ``FENCE_AFTER x node_ttl`` (Redis
  unreachable, the process stalled), every room here is evicted — its peers are told to
  reconnect — before Redis can let another node take them over.
- **The front door** (:meth:`ClusterNode.serve`, the same signature as ``Hub.serve``):
  a client is authenticated here, then served by this node's room, or relayed to the
  node that runs its room.
- **Commands** from other nodes and the CLI (end, kick, ban, unban, participants),
  run on the room they concern.
- **Drain**: stop taking rooms, evict every room (peers reconnect to other nodes),
  give up the leases and the registration.

Task tree (the subscription that feeds ``_dispatch`` runs in
:func:`~meshroom.cluster.open_client`'s nursery)::

    ClusterNode.run
    ├── renew                     registration + leases; fencing when it fails
    ├── watch_links               ends links whose other node is gone
    └── work                      relayed clients served here, commands, evictions
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

import trio

from ..core import Hub, lifecycle
from ..core.connection import Connection, ConnectionClosed, ConnectionTimedOut, MessageTooLarge
from ..core.events import RoomClosed
from ..core.hub import Authenticated
from ..core.locks import KeyedLocks
from ..core.options import JoinRefused
from ..protocol import CloseCode, ErrorCode, RequestId
from .client import ClusterClient, ClusterUnavailable
from .leases import CLAIM, RELEASE, RENEW, split_lease
from .relay import Close, EdgeLink, Frames, RemoteConnection, inbound_limit

log = logging.getLogger(__name__)

# A node whose last successful renewal is this many node_ttl old evicts its rooms: Redis
# forgets its registration (and may hand its rooms to another node) only at 1 x node_ttl
# after that renewal reached Redis, which is later still.
FENCE_AFTER = 0.75
# Client messages an edge node reads ahead of its publishes, and puts in one envelope.
RELAY_READ_AHEAD = 256
RELAY_BATCH = 64
# A lease claimed for a join that never opened a room (refused, say) is given back
# after this many seconds.
UNUSED_LEASE_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    node_id: str
    prefix: str = "meshroom"
    node_ttl: float = 2.0
    # Room lease records outlive the registration that backs them: they are only the
    # record of who runs a room; a dead node's rooms are taken once it is unregistered.
    room_ttl_factor: float = 15.0

    @property
    def room_ttl(self) -> float:
        return self.node_ttl * self.room_ttl_factor


def default_node_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass(slots=True)
class Lease:
    value: str  # "<node>|<epoch>", as in Redis
    epoch: int
    claimed_at: float


class ClusterNode:
    def __init__(self, client: ClusterClient, hub: Hub, config: ClusterConfig) -> None:
        if "|" in config.node_id or not config.node_id:
            raise ValueError("a node id must be non-empty and contain no '|'")
        self.client = client
        self.hub = hub
        self.config = config
        self.id = config.node_id
        self.leases: dict[str, Lease] = {}
        # trio.current_time() before which this node's registration is certainly live.
        self.deadline = -float("inf")
        self.redis_problem: str | None = "not registered yet"
        self.draining = False
        # A Redis that lost its data (or was never used) is young: for node_ttl no room
        # without a record may be claimed, so that its previous node re-asserts it first.
        self.recovering = False
        self.edge_links: dict[str, EdgeLink] = {}
        self.owner_links: dict[str, RemoteConnection] = {}
        self._link_ids = itertools.count(1)
        self._claim_locks = KeyedLocks()
        self._work: trio.Nursery | None = None
        self.left = False
        self._claim = client.redis.register_script(CLAIM)
        self._renew = client.redis.register_script(RENEW)
        self._release = client.redis.register_script(RELEASE)
        hub.claims = self
        hub.events.on(RoomClosed, self._room_closed)
        client.handler = self._dispatch

    # Running

    async def run(
        self, *, task_status: trio.TaskStatus[ClusterNode] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Serve as a node until cancelled; ready once registered and listening."""
        async with trio.open_nursery() as nursery:
            self._work = nursery
            await self._renew_once()
            nursery.start_soon(self._keep_renewing)
            nursery.start_soon(self._watch_links)
            task_status.started(self)
            try:
                await trio.sleep_forever()
            finally:
                self._work = None  # closing: nothing new starts (an eviction ends anyway)

    @property
    def ready(self) -> bool:
        return self.redis_problem is None and not self.draining and not self.recovering

    @property
    def problem(self) -> str | None:
        """Why this node is not ready, for /readyz; None when it is."""
        if self.draining:
            return "draining"
        if self.redis_problem is not None:
            return f"redis: {self.redis_problem}"
        if self.recovering:
            return "redis: new or restarted; rooms can be claimed in a moment"
        return None

    # The hub's RoomClaims

    def holds(self, meeting_id: str) -> bool:
        return meeting_id in self.leases and trio.current_time() < self.deadline

    async def claim(self, meeting_id: str) -> None:
        owner = await self.locate(meeting_id)
        if owner is not None:
            raise JoinRefused(
                ErrorCode.CLUSTER_UNAVAILABLE,
                CloseCode.TRY_AGAIN_LATER,
                "the meeting moved to another node; reconnect",
            )

    async def locate(self, meeting_id: str) -> str | None:
        """None if this node runs the room (claiming it if nobody does), else the node that does.

        Raises:
            JoinRefused: the owner cannot be decided now (Redis unreachable, the cluster
                recovering from a Redis restart, this node draining).
        """
        if self.holds(meeting_id):
            return None
        if self.draining:
            # Takes no room, but still reaches the rooms other nodes run.
            try:
                owner = await self.client.owner_of(meeting_id)
            except ClusterUnavailable as exc:
                raise self._unavailable(str(exc)) from None
            if owner is not None and owner[0] != self.id:
                return owner[0]
            raise JoinRefused(
                ErrorCode.SHUTTING_DOWN,
                CloseCode.GOING_AWAY,
                "this node is draining; reconnect",
            )
        async with self._claim_locks.hold(meeting_id):
            if self.holds(meeting_id):
                return None
            if trio.current_time() >= self.deadline:
                raise self._unavailable(self.redis_problem or "this node is not registered")
            room = self.hub.room(meeting_id)
            if room is not None and not room.closed:
                # A room still closing after this node lost its lease: not ours to run.
                raise self._unavailable("the meeting is moving between nodes")
            try:
                value = await self.client.command(
                    "a claim",
                    lambda: self._claim(
                        keys=[
                            self.client.room_key(meeting_id),
                            self.client.epoch_key(meeting_id),
                            self.client.boot_key,
                        ],
                        args=[
                            self.id,
                            _ms(self.config.room_ttl),
                            self.client.node_key(""),
                            _ms(self.config.node_ttl),
                        ],
                    ),
                )
            except ClusterUnavailable as exc:
                raise self._unavailable(str(exc)) from None
            text = value.decode() if isinstance(value, bytes) else str(value)
            if not text:
                raise self._unavailable("the cluster is recovering from a Redis restart")
            node, epoch = split_lease(text)
            if node != self.id:
                return node
            self.leases[meeting_id] = Lease(text, epoch, trio.current_time())
            log.info(
                "cluster: room %s epoch %d acquired by %s at %.6f",
                meeting_id,
                epoch,
                self.id,
                time.monotonic(),
            )
            return None

    def _unavailable(self, why: str) -> JoinRefused:
        return JoinRefused(
            ErrorCode.CLUSTER_UNAVAILABLE,
            CloseCode.TRY_AGAIN_LATER,
            f"cannot reach the meeting's node now ({why}); try again shortly",
        )

    # Renewal and fencing

    async def _keep_renewing(self) -> None:
        interval = self.config.node_ttl / 4
        while True:
            with trio.move_on_after(interval):
                await self._fence_at_deadline()
            await self._renew_once()

    async def _fence_at_deadline(self) -> None:
        await trio.sleep_until(self.deadline)
        if self.leases:
            log.warning(
                "cluster: %s could not renew its registration in time (%s): evicting %d room(s)",
                self.id,
                self.redis_problem,
                len(self.leases),
            )
            for meeting_id in list(self.leases):
                self._fence(meeting_id, "registration expired")
        # Clients relayed through Redis cannot be served without it either: they are told
        # to reconnect (to a node that can reach Redis, or to this one once it does).
        for link in list(self.edge_links.values()):
            link.lose(_reconnect_close(self.hub, "this node lost the cluster's Redis"))
        await trio.sleep_forever()

    async def _renew_once(self) -> None:
        if self.left:
            return
        sent = trio.current_time()
        held = list(self.leases.items())
        keys = [self.client.node_key(self.id), self.client.boot_key]
        registration = json.dumps(
            {"pid": os.getpid(), "host": socket.gethostname(), "draining": self.draining}
        )
        args: list[Any] = [registration, _ms(self.config.node_ttl), _ms(self.config.room_ttl)]
        for meeting_id, lease in held:
            keys += [self.client.room_key(meeting_id), self.client.epoch_key(meeting_id)]
            args.append(lease.value)
        try:
            lost = await self.client.command("a renewal", lambda: self._renew(keys=keys, args=args))
        except ClusterUnavailable as exc:
            if self.redis_problem is None:
                log.warning("cluster: %s", exc)
            else:
                log.debug("cluster: still: %s", exc)
            self.redis_problem = str(exc)
            return
        if self.redis_problem is not None and self.redis_problem != "not registered yet":
            log.info("cluster: Redis answers again")
        self.redis_problem = None
        answer = list(lost or [0])
        self.recovering = bool(answer.pop(0))
        if sent + self.config.node_ttl * FENCE_AFTER > self.deadline:
            self.deadline = sent + self.config.node_ttl * FENCE_AFTER
        for position in answer:
            meeting_id, lease = held[int(position) - 1]
            if self.leases.get(meeting_id) is lease:
                self._fence(meeting_id, "its lease was taken over")
        now = trio.current_time()
        for meeting_id, lease in list(self.leases.items()):
            if self.hub.room(meeting_id) is None and now - lease.claimed_at > UNUSED_LEASE_SECONDS:
                await self._give_back(meeting_id, lease)

    def _fence(self, meeting_id: str, why: str) -> None:
        lease = self.leases.pop(meeting_id, None)
        if lease is None:
            return
        log.warning(
            "cluster: room %s epoch %d fenced on %s at %.6f (%s)",
            meeting_id,
            lease.epoch,
            self.id,
            time.monotonic(),
            why,
        )
        self._spawn(self.hub.evict, meeting_id)

    def _room_closed(self, event: RoomClosed) -> None:
        lease = self.leases.get(event.meeting_id)
        if lease is not None:
            self._spawn(self._give_back, event.meeting_id, lease)

    async def _give_back(self, meeting_id: str, lease: Lease) -> None:
        if self.leases.get(meeting_id) is not lease:
            return
        if self.hub.room(meeting_id) is not None:
            return  # a new room opened under the same lease meanwhile
        del self.leases[meeting_id]
        log.info(
            "cluster: room %s epoch %d released by %s at %.6f",
            meeting_id,
            lease.epoch,
            self.id,
            time.monotonic(),
        )
        try:
            await self.client.command(
                "a release",
                lambda: self._release(keys=[self.client.room_key(meeting_id)], args=[lease.value]),
            )
        except ClusterUnavailable as exc:
            log.info("cluster: could not release room %s (%s); its record expires", meeting_id, exc)

    def _spawn(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        if self._work is not None:
            self._work.start_soon(fn, *args)

    # The front door

    async def serve(
        self,
        conn: Connection,
        *,
        token: str | None = None,
        resume_token: str | None = None,
        last_seq: int | None = None,
        request_id: RequestId | None = None,
    ) -> None:
        """``Hub.serve`` for a cluster: the client's room runs here or is reached from here."""
        auth = await self.hub.authenticate(
            conn, token=token, resume_token=resume_token, last_seq=last_seq, request_id=request_id
        )
        if auth is None:
            return
        try:
            owner = await self.locate(auth.claims.meeting_id)
        except JoinRefused as refusal:
            await self.hub.refuse(conn, refusal, auth.request_id)
            return
        if owner is None:
            await self.hub.serve_authenticated(conn, auth)
        else:
            await self._relay_to(owner, conn, auth)

    async def _relay_to(self, owner: str, conn: Connection, auth: Authenticated) -> None:
        link = EdgeLink(
            f"{self.id}:{next(self._link_ids)}", owner, outbound_limit=self.hub.config.outbox_size
        )
        self.edge_links[link.link] = link
        try:
            try:
                await self.client.publish(
                    owner,
                    {
                        "k": "open",
                        "l": link.link,
                        "from": self.id,
                        "token": auth.token,
                        "resume": auth.resume_token,
                        "last": auth.last_seq,
                        "rid": auth.request_id,
                        "remote": conn.remote,
                    },
                )
            except ClusterUnavailable as exc:
                await self.hub.refuse(conn, self._unavailable(str(exc)), auth.request_id)
                return
            async with trio.open_nursery() as nursery:
                reading = trio.CancelScope()
                nursery.start_soon(self._pump_to_owner, conn, link, reading)
                close = await self._pump_to_client(conn, link)
                # The owner is done with this client (or the link is lost): stop reading
                # it (a close handshake reads the socket itself), then close it.
                reading.cancel()
            with trio.move_on_after(self.hub.config.close_timeout):
                if close.frames:
                    with suppress(ConnectionClosed):
                        await conn.send(list(close.frames))
                await conn.close(close.code, close.reason)
        finally:
            del self.edge_links[link.link]

    async def _pump_to_client(self, conn: Connection, link: EdgeLink) -> Close:
        """Write what the owner sends to the client until it says close; that close.

        Envelopes that arrived while the previous write was in flight go out in one write.
        """
        while True:
            try:
                item: Frames | Close | None = await link.items.receive()
            except trio.EndOfChannel:
                return link.pending_close()
            frames: list[bytes] = []
            while isinstance(item, Frames):
                frames.extend(item.frames)
                try:
                    item = link.items.receive_nowait()
                except (trio.WouldBlock, trio.EndOfChannel):
                    item = None
            if frames:
                # A failure here is seen by _pump_to_owner too, which tells the owner.
                with suppress(ConnectionClosed):
                    await conn.send(frames)
            if isinstance(item, Close):
                return item

    async def _pump_to_owner(
        self, conn: Connection, link: EdgeLink, reading: trio.CancelScope
    ) -> None:
        """Read the client; publish what it sends to the owner, batched.

        A reader and a publisher: whatever the client sent while the previous publish
        was in flight goes in the next envelope, so a client's rate is not bound by one
        Redis round trip per message.
        """
        send, receive = trio.open_memory_channel[tuple[str, Any]](RELAY_READ_AHEAD)
        with reading:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._read_client, conn, send)
                await self._publish_client(link, receive)
                nursery.cancel_scope.cancel()

    async def _read_client(
        self, conn: Connection, send: trio.MemorySendChannel[tuple[str, Any]]
    ) -> None:
        async with send:
            while True:
                try:
                    message = await conn.receive()
                except MessageTooLarge as exc:
                    await send.send(("big", [exc.size, exc.limit]))
                except ConnectionClosed as exc:
                    await send.send(("gone", exc))
                    return
                else:
                    await send.send(("message", message))

    async def _publish_client(
        self, link: EdgeLink, receive: trio.MemoryReceiveChannel[tuple[str, Any]]
    ) -> None:
        async with receive:
            pending: list[tuple[str, Any]] = []
            while True:
                if not pending:
                    pending.append(await receive.receive())
                while len(pending) < RELAY_BATCH:
                    try:
                        pending.append(receive.receive_nowait())
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                header, payloads, taken = _client_envelope(link, pending)
                del pending[:taken]
                if link.closed_by_owner:
                    if header["k"] == "gone":
                        return
                    continue  # the owner is done with this client; drain until it goes
                try:
                    await self.client.publish(link.owner, header, payloads)
                except ClusterUnavailable as exc:
                    link.lose(
                        _reconnect_close(self.hub, f"relay to the meeting's node failed: {exc}")
                    )
                    return
                if header["k"] == "gone":
                    return

    # What other nodes send

    def _dispatch(self, header: dict[str, Any], payloads: list[bytes]) -> None:
        kind = header["k"]
        log.debug("cluster: %s got %s %s", self.id, kind, header.get("l"))
        link_id = str(header.get("l"))
        if kind in ("in", "gone"):
            owned = self.owner_links.get(link_id)
            if owned is not None:
                owned.deliver(header, payloads)
        elif kind in ("out", "close"):
            edge = self.edge_links.get(link_id)
            if edge is not None:
                edge.deliver(header, payloads)
        elif kind == "open":
            self._spawn(self._serve_relayed, header)
        elif kind == "cmd":
            self._spawn(self._run_command, header)
        else:
            log.warning("cluster: dropped an envelope of unknown kind %r", kind)

    async def _serve_relayed(self, header: dict[str, Any]) -> None:
        edge = str(header.get("from"))
        link_id = str(header.get("l"))

        async def publish(reply: dict[str, Any], payloads: list[bytes]) -> None:
            await self.client.publish(edge, reply, payloads)

        conn = RemoteConnection(
            link_id,
            edge,
            f"{header.get('remote')} via {edge}",
            publish,
            inbound_limit=inbound_limit(self.hub.config.rate_burst),
        )
        self.owner_links[link_id] = conn
        try:
            token = header.get("token")
            resume = header.get("resume")
            last = header.get("last")
            rid = header.get("rid")
            await self.hub.serve(
                conn,
                token=token if isinstance(token, str) else "",
                resume_token=resume if isinstance(resume, str) else None,
                last_seq=last if isinstance(last, int) and not isinstance(last, bool) else None,
                request_id=rid
                if isinstance(rid, str | int) and not isinstance(rid, bool)
                else None,
            )
        finally:
            del self.owner_links[link_id]
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                await conn.close(CloseCode.NORMAL, "")

    async def _watch_links(self) -> None:
        """End the links whose other node is gone: its clients must reconnect."""
        while True:
            await trio.sleep(self.config.node_ttl / 2)
            others = {link.owner for link in self.edge_links.values()} | {
                conn.edge for conn in self.owner_links.values()
            }
            for node in others:
                try:
                    alive = await self.client.alive(node)
                except ClusterUnavailable:
                    continue  # fencing deals with a Redis that stays away
                if alive:
                    continue
                log.warning("cluster: node %s is gone; ending the clients relayed through it", node)
                for link in list(self.edge_links.values()):
                    if link.owner == node:
                        link.lose(_reconnect_close(self.hub, f"the meeting's node {node} is gone"))
                for conn in list(self.owner_links.values()):
                    if conn.edge == node:
                        conn.lose(f"node {node} is gone")

    # Commands

    async def _run_command(self, header: dict[str, Any]) -> None:
        args = header.get("args") or {}
        try:
            result = await self.run_command(str(header.get("op")), args)
        except Exception as exc:
            error: Exception | None = exc
            result = None
        else:
            error = None
        try:
            await self.client.reply(header, result=result, error=error)
        except ClusterUnavailable as exc:
            log.info("cluster: could not answer %s: %s", header.get("op"), exc)

    async def run_command(self, op: str, args: dict[str, Any]) -> Any:
        """Run a control command on a room this node runs (see ClusterRooms)."""
        if op == "drain":
            return await self.drain()
        meeting_id = str(args.get("meeting"))
        if not self.holds(meeting_id):
            raise NotOwner(f"node {self.id} does not run meeting {meeting_id}")
        hub = self.hub
        if op == "end":
            await hub.end_meeting(meeting_id, by=args.get("by"))
            return None
        if op == "kick":
            return await hub.kick(meeting_id, str(args["emp"]), by=args.get("by"))
        if op == "ban":
            await hub.ban(
                meeting_id, str(args["emp"]), by=args.get("by"), reason=args.get("reason")
            )
            return None
        if op == "unban":
            return await hub.unban(meeting_id, str(args["emp"]), by=args.get("by"))
        if op == "participants":
            return await hub.participants(meeting_id)
        raise ValueError(f"unknown command {op!r}")

    # Drain

    async def drain(self) -> int:
        """Stop taking rooms and hand every room over: its peers are told to reconnect,
        which brings them to another node (the lease is given back, so at once).

        The node stays registered (and relays nothing): ``meshroom node drain`` leaves
        the process up for an operator to stop; shutdown calls :meth:`leave` next.
        Returns how many rooms were handed over.
        """
        self.draining = True
        rooms = list(self.leases)
        async with trio.open_nursery() as nursery:
            for meeting_id in rooms:
                nursery.start_soon(self.hub.evict, meeting_id)
        for link in list(self.edge_links.values()):
            link.lose(_reconnect_close(self.hub, "this node is shutting down"))
        for meeting_id, lease in list(self.leases.items()):
            await self._give_back(meeting_id, lease)
        await self._renew_once()  # the registration says "draining" from now on
        return len(rooms)

    async def leave(self) -> None:
        """Unregister: other nodes stop relaying to this one at once."""
        self.left = True
        self.deadline = -float("inf")
        try:
            await self.client.command(
                "an unregistration",
                lambda: self.client.redis.delete([self.client.node_key(self.id)]),
            )
        except ClusterUnavailable as exc:
            log.info("cluster: could not unregister (%s); the registration expires", exc)


class NotOwner(Exception):
    """A command reached a node that no longer runs the room."""


def _client_envelope(
    link: EdgeLink, items: list[tuple[str, Any]]
) -> tuple[dict[str, Any], list[bytes], int]:
    """The next envelope for the owner from the client's queued items, and how many it took.

    Messages go together; a too-large notice ends an envelope; the client's going is an
    envelope of its own.
    """
    kind, value = items[0]
    if kind == "gone":
        exc: ConnectionClosed = value
        gone: dict[str, Any] = {
            "k": "gone",
            "l": link.link,
            "code": exc.code,
            "reason": exc.reason,
            "timeout": isinstance(exc, ConnectionTimedOut),
            "s": link.sent.take(),
        }
        return gone, [], 1
    header: dict[str, Any] = {"k": "in", "l": link.link}
    payloads: list[bytes] = []
    binary: list[int] = []
    taken = 0
    for kind, value in items:
        if kind == "gone":
            break
        taken += 1
        if kind == "big":
            header["big"] = value
            break
        if isinstance(value, bytes):
            binary.append(len(payloads))
            payloads.append(value)
        else:
            payloads.append(value.encode())
    if binary:
        header["bin"] = binary
    header["s"] = link.sent.take()
    return header, payloads, taken


def _reconnect_close(hub: Hub, why: str) -> Close:
    exit = lifecycle.shutdown(hub.config.shutdown_reconnect_after)
    return Close(int(CloseCode.GOING_AWAY), why[:120], tuple(exit.frames()))


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))
