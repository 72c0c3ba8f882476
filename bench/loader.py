"""The load generator: one process driving many WebSocket clients with epoll.

No async framework, no WebSocket library: a loader process is a single
``select.epoll`` loop over non-blocking sockets that speaks RFC 6455 client
framing itself (every frame masked with a fresh random key, as the RFC
requires), coalesces what it queues for a socket into one ``send`` per loop
turn, and parses every frame a ``recv`` brings in one pass. It is the cheapest
honest client Python can be, so that the server, not the loader, runs out of
CPU first. The parent reports each loader's CPU beside the server's so that
claim can be checked on every run.

A loader is started by :mod:`bench.runner` with a *spec* (which clients to
open, with which tokens, and what to do once joined) and talks to the parent
over a :mod:`multiprocessing` pipe: ``progress`` and ``ready`` messages up,
``go`` / ``end`` / ``stop`` commands down, one ``result`` at the end.

Times are ``time.perf_counter()`` (CLOCK_MONOTONIC on Linux: one clock for
every process on the machine), so a send time stamped in a payload by one
loader is comparable with the receive time in another.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import hashlib
import json
import os
import random
import re
import select
import socket
import time
from array import array
from collections import Counter
from typing import Any

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_EPOLLIN = select.EPOLLIN
_EPOLLOUT = select.EPOLLOUT
_ERRMASK = select.EPOLLERR | select.EPOLLHUP

# Connection states
CONNECTING, HANDSHAKE, AUTH, JOINED, CLOSING, CLOSED = range(6)

now = time.perf_counter
_randbytes = random.randbytes


# Socket.IO mode (the ``socketio`` target): the drivers keep writing and reading native
# frames; the loader translates them to and from Socket.IO packets on the namespace
# /meetings over Engine.IO's WebSocket transport, with plain string operations.
SIO_PATH = "/socket.io/?EIO=4&transport=websocket"
_NATIVE = re.compile(r'\{"event":"([^"]*)"(?:,"id":(\d+))?,"data":(.*)\}\Z', re.S)


def to_socketio(text: str) -> str:
    """A native request frame as the Socket.IO EVENT a socket.io client would emit."""
    m = _NATIVE.match(text)
    if m is None:
        raise ValueError(f"not a native frame the bench writes: {text[:60]}")
    return "42/meetings," + (m[2] or "") + '["' + m[1] + '",' + m[3] + "]"


def from_socketio(text: str) -> str | None:
    """A Socket.IO packet as the native frame it stands for (None: nothing for the driver)."""
    if text.startswith('42/meetings,["'):
        body = text[14:]
        quote = body.index('"')
        rest = body[quote + 1 : -1]  # ',{…}' or ''
        data = rest[1:] if rest else "{}"
        return '{"event":"' + body[:quote] + '","data":' + data + "}"
    if text.startswith("43/meetings,"):
        body = text[12:]
        bracket = body.index("[")
        return '{"event":"ack","id":' + body[:bracket] + ',"data":' + body[bracket + 1 : -1] + "}"
    if text.startswith("44/meetings,"):
        refusal = json.loads(text[12:])
        return json.dumps({"event": "error", "data": refusal.get("data") or refusal})
    return None


def client_frame(payload: bytes, opcode: int = 1) -> bytes:
    """One masked, unfragmented client frame."""
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    elif n < 65536:
        head = bytes((0x80 | opcode, 0xFE)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 0xFF)) + n.to_bytes(8, "big")
    mask = _randbytes(4)
    if not n:
        return head + mask
    key = int.from_bytes((mask * ((n >> 2) + 1))[:n], "little")
    return head + mask + (int.from_bytes(payload, "little") ^ key).to_bytes(n, "little")


class Client:
    """One WebSocket client connection: socket, buffers, state and scenario fields."""

    __slots__ = (
        "buf",
        "close_code",
        "data",
        "emp",
        "fd",
        "index",
        "key",
        "out",
        "port",
        "sock",
        "state",
        "t_closed",
        "t_connect",
        "t_joined",
        "t_notice",
        "token",
        "writing",
    )

    def __init__(self, index: int, emp: str, token: str, port: int = 0) -> None:
        self.index = index
        self.emp = emp
        self.token = token
        self.port = port  # 0: the spec's port (bench cluster spreads clients over nodes)
        self.sock: socket.socket | None = None
        self.fd = -1
        self.buf = bytearray()
        self.out = bytearray()
        self.state = CONNECTING
        self.key = b""
        self.writing = False
        self.close_code: int | None = None
        self.t_connect = 0.0
        self.t_joined = 0.0
        self.t_notice = 0.0
        self.t_closed = 0.0
        self.data: Any = None  # the scenario's per-client state


class Loader:
    """The epoll loop plus the bookkeeping every scenario shares."""

    def __init__(self, pipe: Any, spec: dict[str, Any]) -> None:
        self.pipe = pipe
        self.spec = spec
        self.host: str = spec["host"]
        self.port: int = spec["port"]
        self.socketio: bool = spec.get("socketio", False)
        self.path: str = SIO_PATH if self.socketio else spec.get("path", "/meetings")
        self.ep = select.epoll()
        self.by_fd: dict[int, Client] = {}
        self.dirty: set[Client] = set()
        self.clients = [Client(i, *client) for i, client in enumerate(spec["clients"])]
        self.to_connect = list(reversed(self.clients))
        self.connecting = 0
        self.connect_window: int = spec.get("connect_window", 64)
        self.connect_enabled = False
        self.joined = 0
        self.failed: Counter[str] = Counter()
        self.closed = 0
        self.errors: Counter[str] = Counter()
        self.latencies = array("d")
        self.received = 0
        self.sent = 0
        self.stopping = False
        self.commands: list[dict[str, Any]] = []
        self.ep.register(pipe.fileno(), _EPOLLIN)
        self._last_progress = 0.0

    # Connection set-up

    def start_connects(self) -> None:
        self.connect_enabled = True
        while self.to_connect and self.connecting < self.connect_window:
            self._connect(self.to_connect.pop())

    def _connect(self, c: Client) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        c.sock, c.fd, c.state, c.t_connect = sock, sock.fileno(), CONNECTING, now()
        self.by_fd[c.fd] = c
        self.connecting += 1
        err = sock.connect_ex((self.host, c.port or self.port))
        if err not in (0, errno.EINPROGRESS):
            self._fail(c, f"connect: {errno.errorcode.get(err, err)}")
            return
        self.ep.register(c.fd, _EPOLLOUT)
        c.writing = True

    def _on_connected(self, c: Client) -> None:
        assert c.sock is not None
        err = c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self._fail(c, f"connect: {errno.errorcode.get(err, err)}")
            return
        c.key = base64.b64encode(os.urandom(16))
        request = (
            f"GET {self.path} HTTP/1.1\r\nHost: {self.host}:{c.port or self.port}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {c.key.decode()}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
        c.state = HANDSHAKE
        c.out += request
        self.ep.modify(c.fd, _EPOLLIN)
        c.writing = False
        self._flush(c)

    def _on_handshake(self, c: Client) -> None:
        end = c.buf.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(c.buf[:end]).decode("latin-1")
        del c.buf[: end + 4]
        lines = head.split("\r\n")
        if not lines[0].startswith("HTTP/1.1 101"):
            self._fail(c, f"handshake: {lines[0][:40]}")
            return
        expected = base64.b64encode(hashlib.sha1(c.key + _GUID).digest()).decode()
        headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines)}
        if headers.get("sec-websocket-accept") != expected:
            self._fail(c, "handshake: bad Sec-WebSocket-Accept")
            return
        c.state = AUTH
        if self.socketio:
            return  # CONNECT goes out when the Engine.IO open packet arrives
        self.send(
            c, '{"event":"auth","id":0,"data":{"meetingAccessToken":' + json.dumps(c.token) + "}}"
        )

    def _fail(self, c: Client, reason: str) -> None:
        if c.state in (CONNECTING, HANDSHAKE, AUTH):
            self.connecting -= 1
            self.failed[reason] += 1
        else:
            self.errors[reason] += 1
        self._drop(c)
        self.driver.on_closed(c)

    def _drop(self, c: Client) -> None:
        if c.sock is not None:
            self.by_fd.pop(c.fd, None)
            with contextlib.suppress(OSError, ValueError):
                self.ep.unregister(c.fd)
            c.sock.close()
            c.sock = None
        if c.state != CLOSED:
            c.state = CLOSED
            c.t_closed = now()
            self.closed += 1
        self.dirty.discard(c)

    # Frames

    def send(self, c: Client, text: str) -> None:
        if c.sock is None or c.state in (CLOSING, CLOSED):
            return
        if self.socketio:
            text = to_socketio(text)
        c.out += client_frame(text.encode())
        self.dirty.add(c)

    def _from_socketio(self, c: Client, text: str) -> str | None:
        kind = text[:1]
        if kind == "4":
            return from_socketio(text)
        if kind == "2":  # an Engine.IO ping: pong
            c.out += client_frame(b"3")
            self.dirty.add(c)
        elif kind == "0":  # the open packet: connect the namespace
            auth = json.dumps({"meetingAccessToken": c.token})
            c.out += client_frame(("40/meetings," + auth).encode())
            self.dirty.add(c)
        return None

    def close(self, c: Client, code: int = 1000) -> None:
        if c.sock is None or c.state in (CLOSING, CLOSED):
            return
        c.out += client_frame(code.to_bytes(2, "big"), 8)
        c.state = CLOSING
        self.dirty.add(c)

    def _flush(self, c: Client) -> None:
        if not c.out or c.sock is None:
            return
        try:
            n = c.sock.send(c.out)
        except BlockingIOError:
            n = 0
        except OSError as exc:
            self._fail(c, f"send: {exc.__class__.__name__}")
            return
        del c.out[:n]
        if c.out and not c.writing:
            self.ep.modify(c.fd, _EPOLLIN | _EPOLLOUT)
            c.writing = True
        elif not c.out and c.writing:
            self.ep.modify(c.fd, _EPOLLIN)
            c.writing = False

    def _on_readable(self, c: Client) -> None:
        assert c.sock is not None
        try:
            data = c.sock.recv(262144)
        except BlockingIOError:
            return
        except OSError as exc:
            self._fail(c, f"recv: {exc.__class__.__name__}")
            return
        if not data:
            if c.state == CLOSING:
                self._drop(c)
                self.driver.on_closed(c)
            else:
                self._fail(c, "eof before close frame")
            return
        buf = c.buf
        buf += data
        if c.state == HANDSHAKE:
            self._on_handshake(c)
            if c.state != AUTH:
                return
        size = len(buf)
        pos = 0
        driver = self.driver
        while size - pos >= 2:
            b1 = buf[pos + 1]
            length = b1 & 0x7F
            head = 2
            if length == 126:
                if size - pos < 4:
                    break
                length = (buf[pos + 2] << 8) | buf[pos + 3]
                head = 4
            elif length == 127:
                if size - pos < 10:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                head = 10
            end = pos + head + length
            if end > size:
                break
            opcode = buf[pos] & 0x0F
            if opcode == 1:
                text = buf[pos + head : end].decode()
                pos = end
                if self.socketio:
                    native = self._from_socketio(c, text)
                    if native is None:
                        continue
                    text = native
                self.received += 1
                if c.state == JOINED:
                    driver.on_text(c, text)
                elif c.state == AUTH:
                    self._on_auth_answer(c, text)
            elif opcode == 8:
                payload = bytes(buf[pos + head : end])
                pos = end
                c.close_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                c.t_notice = c.t_notice or now()
                if c.state == AUTH:
                    self.connecting -= 1
                    self.failed[f"closed {c.close_code} before joining"] += 1
                if c.state != CLOSING:
                    c.out += client_frame(payload[:2], 8)
                    c.state = CLOSING
                    self.dirty.add(c)
                driver.on_close_frame(c)
            elif opcode == 9:  # ping: answer with pong
                c.out += client_frame(bytes(buf[pos + head : end]), 10)
                pos = end
                self.dirty.add(c)
            else:  # pong, binary, continuation: not used by the servers under test
                if opcode != 10:
                    self.errors[f"unexpected opcode {opcode}"] += 1
                pos = end
            if c.sock is None:
                return
        if pos:
            del buf[:pos]

    def _on_auth_answer(self, c: Client, text: str) -> None:
        try:
            frame = json.loads(text)
        except ValueError:
            frame = {}
        self.connecting -= 1
        if frame.get("event") != "room:joined":
            code = (frame.get("data") or {}).get("code", frame.get("event"))
            self.failed[f"refused: {code}"] += 1
            self.close(c)
            return
        c.state = JOINED
        c.t_joined = now()
        self.joined += 1
        self.driver.on_joined(c, frame["data"])

    # The loop

    def poll(self, timeout: float) -> None:
        events = self.ep.poll(timeout)
        by_fd = self.by_fd
        pipe_fd = self.pipe.fileno()
        for fd, ev in events:
            if fd == pipe_fd:
                while self.pipe.poll():
                    self.commands.append(self.pipe.recv())
                continue
            c = by_fd.get(fd)
            if c is None:
                continue
            if c.state == CONNECTING:
                if ev & (_EPOLLOUT | _ERRMASK):
                    self._on_connected(c)
                continue
            if ev & (_EPOLLIN | _ERRMASK):
                self._on_readable(c)
            if ev & _EPOLLOUT and c.sock is not None:
                self._flush(c)
        if self.dirty:
            dirty, self.dirty = self.dirty, set()
            for c in dirty:
                self._flush(c)
        if self.to_connect and self.connect_enabled:
            self.start_connects()

    def progress(self, force: bool = False, **extra: Any) -> None:
        t = now()
        if force or t - self._last_progress >= 0.25:
            self._last_progress = t
            self.pipe.send(
                {
                    "type": "progress",
                    "joined": self.joined,
                    "failed": sum(self.failed.values()),
                    "closed": self.closed,
                    "received": self.received,
                    "sent": self.sent,
                    **self.driver.progress(),
                    **extra,
                }
            )

    def wait_command(self, kind: str, deadline: float | None = None) -> dict[str, Any] | None:
        """Keep the loop turning until the parent sends ``kind`` (or ``stop``)."""
        while True:
            for i, cmd in enumerate(self.commands):
                if cmd["type"] in (kind, "stop"):
                    del self.commands[i]
                    return cmd
            if deadline is not None and now() >= deadline:
                return None
            self.poll(0.02)
            self.driver.tick(now())
            self.progress()

    def run_until(self, until: float, done: Any = None) -> None:
        while True:
            t = now()
            if t >= until or (done is not None and done()):
                return
            if any(cmd["type"] == "stop" for cmd in self.commands):
                return
            self.poll(min(0.02, max(0.0, until - t)))
            self.driver.tick(now())
            self.progress()

    def result(self, **extra: Any) -> dict[str, Any]:
        return {
            "type": "result",
            "joined": self.joined,
            "failed": dict(self.failed),
            "errors": dict(self.errors),
            "closed": self.closed,
            "received": self.received,
            "sent": self.sent,
            "latencies": self.latencies.tobytes(),
            **extra,
        }

    driver: Driver


class Driver:
    """What a scenario does with its clients. The default ignores every frame."""

    def __init__(self, loader: Loader, spec: dict[str, Any]) -> None:
        self.loader = loader
        self.spec = spec

    def on_joined(self, c: Client, data: dict[str, Any]) -> None:
        pass

    def on_text(self, c: Client, text: str) -> None:
        pass

    def on_close_frame(self, c: Client) -> None:
        pass

    def on_closed(self, c: Client) -> None:
        pass

    def tick(self, t: float) -> None:
        pass

    def progress(self) -> dict[str, Any]:
        return {}

    def run(self) -> dict[str, Any]:
        raise NotImplementedError


def _pad(text_without_pad: str, size: int) -> str:
    return "x" * max(0, size - len(text_without_pad))


# relay ------------------------------------------------------------------------------


class RelayDriver(Driver):
    """Pairs of clients, each keeping ``window`` signals in flight towards its partner.

    When a client receives its partner's signal, the partner sends the next one:
    a closed loop that runs as fast as the server relays. Only deliveries inside
    the measurement window are counted.
    """

    def __init__(self, loader: Loader, spec: dict[str, Any]) -> None:
        super().__init__(loader, spec)
        self.window: int = spec["window"]
        self.size: int = spec["message_bytes"]
        self.partner: dict[Client, Client] = {}
        clients = loader.clients
        for a, b in zip(clients[0::2], clients[1::2], strict=True):
            self.partner[a], self.partner[b] = b, a
        self.measure_from = self.measure_until = self.stop_at = float("inf")
        self.delivered = 0
        self.bad = 0
        self.other = 0
        self.templates = {}
        for c in clients:
            target = self.partner[c].emp
            head = f'{{"event":"signal:offer","data":{{"targetEmpId":"{target}",'
            head += '"offer":{"type":"offer","t":'
            tail = ',"sdp":"' + "x" * max(0, self.size - len(head) - 30) + '"}}}'
            self.templates[c] = (head, tail)

    def _send_one(self, c: Client) -> None:
        head, tail = self.templates[c]
        self.loader.send(c, head + repr(now()) + tail)
        self.loader.sent += 1

    def on_text(self, c: Client, text: str) -> None:
        t = now()
        frame = json.loads(text)
        data = frame["data"]
        partner = self.partner[c]
        if frame["event"] != "signal:offer":
            self.other += 1  # peer:joined and the like
            return
        if data.get("fromEmpId") != partner.emp:
            self.bad += 1
            return
        if self.measure_from <= t < self.measure_until:
            self.delivered += 1
            self.loader.latencies.append(t - data["offer"]["t"])
        if t < self.stop_at:
            self._send_one(partner)

    def progress(self) -> dict[str, Any]:
        return {"delivered": self.delivered}

    def run(self) -> dict[str, Any]:
        lo = self.loader
        lo.run_until(
            now() + self.spec["join_timeout"],
            lambda: lo.joined + sum(lo.failed.values()) >= len(lo.clients),
        )
        lo.progress(force=True)
        lo.pipe.send({"type": "ready", "joined": lo.joined, "failed": dict(lo.failed)})
        go = lo.wait_command("go")
        if go is None or go["type"] == "stop":
            return lo.result()
        self.measure_from, self.measure_until = go["measure_from"], go["measure_until"]
        self.stop_at = go["measure_until"]
        start = go["start"]
        lo.run_until(start)
        for c in lo.clients:
            if c.state == JOINED:
                for _ in range(self.window):
                    self._send_one(c)
        lo.run_until(self.stop_at)
        lo.run_until(now() + 0.2)  # let in-flight frames land so the server is not cut mid-write
        return lo.result(delivered=self.delivered, bad=self.bad, other=self.other)


# mesh -------------------------------------------------------------------------------


class MeshDriver(Driver):
    """Full-mesh negotiation: each newcomer offers to every peer already present.

    The offered peer answers and trickles ``ice`` candidates; the offerer sends
    its candidates once it has the answer. Every client expects ``2 + 2*ice - 1``…
    precisely: from each other peer either (offer + ice) or (answer + ice) frames.
    """

    def __init__(self, loader: Loader, spec: dict[str, Any]) -> None:
        super().__init__(loader, spec)
        self.ice: int = spec["ice"]
        self.per_peer = 1 + self.ice
        self.room_size: dict[str, int] = spec["room_size"]  # emp -> peers in its room
        self.expected = {c: self.per_peer * (self.room_size[c.emp] - 1) for c in loader.clients}
        self.got: dict[Client, Counter[str]] = {c: Counter() for c in loader.clients}
        self.count: dict[Client, int] = dict.fromkeys(loader.clients, 0)
        self.done_clients = 0
        self.last = 0.0
        self.bad = 0
        self.other = 0
        sdp = self.spec["message_bytes"]
        self.sdp_pad = "x" * max(0, sdp - 120)
        self.ice_pad = "y" * max(0, spec["ice_bytes"] - 130)
        for c in loader.clients:
            if self.expected[c] == 0:
                self.done_clients += 1

    def _signal(self, c: Client, event: str, target: str, key: str, kind: str) -> None:
        pad = self.ice_pad if key == "candidate" else self.sdp_pad
        field = "candidate" if key == "candidate" else "sdp"
        self.loader.send(
            c,
            f'{{"event":"{event}","data":{{"targetEmpId":"{target}","{key}":'
            f'{{"type":"{kind}","t":{now()!r},"{field}":"{pad}"}}}}}}',
        )
        self.loader.sent += 1

    def on_joined(self, c: Client, data: dict[str, Any]) -> None:
        for p in data.get("peers", ()):
            self._signal(c, "signal:offer", p["empId"], "offer", "offer")

    def on_text(self, c: Client, text: str) -> None:
        t = now()
        frame = json.loads(text)
        event = frame["event"]
        if not event.startswith("signal:"):
            self.other += 1
            return
        data = frame["data"]
        sender = data.get("fromEmpId")
        if not sender:
            self.bad += 1
            return
        if event == "signal:offer":
            payload = data["offer"]
            self._signal(c, "signal:answer", sender, "answer", "answer")
            for _ in range(self.ice):
                self._signal(c, "signal:ice", sender, "candidate", "candidate")
        elif event == "signal:answer":
            payload = data["answer"]
            for _ in range(self.ice):
                self._signal(c, "signal:ice", sender, "candidate", "candidate")
        else:
            payload = data["candidate"]
        self.loader.latencies.append(t - payload["t"])
        self.got[c][sender] += 1
        n = self.count[c] = self.count[c] + 1
        if n == self.expected[c]:
            self.done_clients += 1
            self.last = t

    def progress(self) -> dict[str, Any]:
        return {"done": self.done_clients}

    def run(self) -> dict[str, Any]:
        lo = self.loader
        lo.pipe.send({"type": "ready"})
        go = lo.wait_command("go")
        if go is None or go["type"] == "stop":
            return lo.result()
        lo.run_until(go["start"])
        lo.start_connects()
        total = len(lo.clients)
        lo.run_until(go["deadline"], lambda: self.done_clients >= total)
        incomplete = 0
        missing = 0
        for c in lo.clients:
            want = self.room_size[c.emp] - 1
            got = self.got[c]
            if len(got) != want or any(v != self.per_peer for v in got.values()):
                incomplete += 1
            missing += max(0, self.expected[c] - self.count[c])
        joined_times = [c.t_joined for c in lo.clients if c.t_joined]
        lo.pipe.send({"type": "finished"})
        lo.wait_command("stop", now() + 60)
        return lo.result(
            done=self.done_clients,
            incomplete=incomplete,
            missing=missing,
            last=self.last,
            last_joined=max(joined_times, default=0.0),
            bad=self.bad,
            other=self.other,
        )


# storm ------------------------------------------------------------------------------


class StormDriver(Driver):
    """Join as fast as the server admits, ``connect_window`` joins in flight at a time."""

    def run(self) -> dict[str, Any]:
        lo = self.loader
        lo.pipe.send({"type": "ready"})
        go = lo.wait_command("go")
        if go is None or go["type"] == "stop":
            return lo.result()
        lo.run_until(go["start"])
        lo.start_connects()
        total = len(lo.clients)
        lo.run_until(go["deadline"], lambda: lo.joined + sum(lo.failed.values()) >= total)
        for c in lo.clients:
            if c.t_joined:
                lo.latencies.append(c.t_joined - c.t_connect)
        starts = [c.t_connect for c in lo.clients if c.t_connect]
        ends = [c.t_joined for c in lo.clients if c.t_joined]
        lo.progress(force=True)
        lo.pipe.send({"type": "joined"})
        lo.wait_command("stop", now() + go.get("hold", 0.0))
        return lo.result(first_start=min(starts, default=0.0), last_joined=max(ends, default=0.0))


# capacity ---------------------------------------------------------------------------


class CapacityDriver(Driver):
    """Hold joined clients idle, each sending a ``ping`` request every ``heartbeat`` seconds."""

    def __init__(self, loader: Loader, spec: dict[str, Any]) -> None:
        super().__init__(loader, spec)
        self.interval: float = spec["heartbeat"]
        self.next_beat: dict[Client, float] = {}
        self.beating = False
        self.acks = 0
        self.pings = 0
        self.seq = 0
        self.pending: dict[int, float] = {}
        self._next_scan = 0.0

    def on_text(self, c: Client, text: str) -> None:
        frame = json.loads(text)
        if frame.get("event") == "ack":
            sent = self.pending.pop(frame.get("id"), None)
            if sent is not None:
                self.acks += 1
                self.loader.latencies.append(now() - sent)

    def tick(self, t: float) -> None:
        if not self.beating or t < self._next_scan:
            return
        self._next_scan = t + 0.05
        for c, due in self.next_beat.items():
            if due <= t and c.state == JOINED:
                self.seq += 1
                self.pending[self.seq] = t
                self.loader.send(c, f'{{"event":"ping","id":{self.seq},"data":{{}}}}')
                self.pings += 1
                self.next_beat[c] = due + self.interval

    def progress(self) -> dict[str, Any]:
        return {"acks": self.acks}

    def run(self) -> dict[str, Any]:
        lo = self.loader
        lo.pipe.send({"type": "ready"})
        go = lo.wait_command("go")
        if go is None or go["type"] == "stop":
            return lo.result()
        lo.start_connects()
        total = len(lo.clients)
        lo.run_until(go["deadline"], lambda: lo.joined + sum(lo.failed.values()) >= total)
        lo.progress(force=True)
        lo.pipe.send({"type": "joined", "joined": lo.joined})
        hold = lo.wait_command("hold")
        if hold is not None and hold["type"] == "hold":
            t = now()
            for c in lo.clients:
                if c.state == JOINED and self.interval > 0:  # 0: the clients never ping
                    self.next_beat[c] = t + random.random() * self.interval
            self.beating = True
            lo.wait_command("stop", hold["until"] + 1.0)
        alive = sum(1 for c in lo.clients if c.state == JOINED)
        return lo.result(pings=self.pings, acks=self.acks, alive=alive)


# teardown ---------------------------------------------------------------------------


class TeardownDriver(Driver):
    """A room fills up; on ``end`` its host (if this loader has it) sends ``host:end``."""

    def __init__(self, loader: Loader, spec: dict[str, Any]) -> None:
        super().__init__(loader, spec)
        self.host_emp: str = spec["host_emp"]
        self.peer_joined = 0
        self.notices = 0
        self.closed_frames: Counter[int] = Counter()
        self.finished = 0
        self.ending = False
        self.t_end_sent = 0.0
        self.ack = False

    def on_text(self, c: Client, text: str) -> None:
        frame = json.loads(text)
        event = frame.get("event")
        if event == "peer:joined":
            self.peer_joined += 1
        elif event == "meeting:ended":
            self.notices += 1
            c.t_notice = now()
        elif event == "ack" and frame.get("id") == 1:
            self.ack = True

    def on_close_frame(self, c: Client) -> None:
        self.closed_frames[c.close_code or 0] += 1

    def on_closed(self, c: Client) -> None:
        if self.ending:
            self.finished += 1

    def progress(self) -> dict[str, Any]:
        return {"peer_joined": self.peer_joined, "finished": self.finished}

    def run(self) -> dict[str, Any]:
        lo = self.loader
        lo.pipe.send({"type": "ready"})
        go = lo.wait_command("go")
        if go is None or go["type"] == "stop":
            return lo.result()
        lo.start_connects()
        total = len(lo.clients)
        lo.run_until(go["deadline"], lambda: lo.joined + sum(lo.failed.values()) >= total)
        lo.progress(force=True)
        lo.pipe.send({"type": "joined", "joined": lo.joined})
        cmd = lo.wait_command("end")
        if cmd is None or cmd["type"] != "end":
            return lo.result()
        self.ending = True
        for c in lo.clients:
            if c.emp == self.host_emp and c.state == JOINED:
                self.t_end_sent = now()
                lo.send(c, '{"event":"host:end","id":1,"data":{}}')
        lo.run_until(cmd["deadline"], lambda: self.finished >= lo.joined)
        closes = [c.t_closed for c in lo.clients if c.t_closed and c.t_joined]
        notices = [c.t_notice for c in lo.clients if c.t_notice and c.t_joined]
        return lo.result(
            t_end_sent=self.t_end_sent,
            closes=closes,
            notices=notices,
            meeting_ended=self.notices,
            close_codes={str(k): v for k, v in self.closed_frames.items()},
            finished=self.finished,
            host_ack=self.ack,
        )


DRIVERS: dict[str, type[Driver]] = {
    "relay": RelayDriver,
    "mesh": MeshDriver,
    "storm": StormDriver,
    "capacity": CapacityDriver,
    "teardown": TeardownDriver,
}


def run_loader(pipe: Any, spec: dict[str, Any]) -> None:
    """Entry point of a loader process."""
    try:
        loader = Loader(pipe, spec)
        loader.driver = DRIVERS[spec["scenario"]](loader, spec)
        if spec["scenario"] == "relay":
            loader.start_connects()
        result = loader.driver.run()
        result["cpu"] = os.times()[:2]
        pipe.send(result)
    except Exception as exc:  # report, do not hang the parent
        import traceback

        pipe.send({"type": "error", "error": f"{exc!r}\n{traceback.format_exc()}"})
    finally:
        pipe.close()
