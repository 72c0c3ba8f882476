"""The handshake gate: a thread that accepts TCP connections and reads their HTTP request
heads, handing a connection to trio only once it has a whole request to answer.

Why a thread: in trio, a connection waiting for its request is a task, and each read
of it costs a task wake-up, a cancel scope and a deadline — tens of microseconds.
Thousands of clients dribbling their upgrade request a byte at a time (slowloris) then
keep the event loop so busy that a real client, queued behind them in the kernel's
accept queue and then behind them in every scheduling pass, waited seconds for its
upgrade answer (issue 11 #3). Here a dribbled byte costs one epoll event and a bytes
append; the trio side never sees such a client until its head is complete (or too
large, or too late, which the gate settles alone). A real client's whole head usually
comes in its first segment, so it goes through the gate in one step.

Heads in progress hold connection slots (``ConnectionSlots.handshaking``); when every
slot is taken, the gate hands new connections to trio at once, where the connection
limit answers them (HTTP 503), as it did before the gate.
It stops when the task running it is cancelled (a byte on its wake-up socket ends its
loop); heads still in progress are then closed.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import logging
import os
import selectors
import socket
import time
from collections.abc import Callable, Sequence
from typing import Final

import trio

from ..core.limits import ConnectionSlots

log = logging.getLogger(__name__)

# accept() errors that mean "out of resources for now" (as trio.serve_listeners has them).
ACCEPT_CAPACITY_ERRNOS: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
ACCEPT_RETRY: Final = 0.1
# Connections taken off the kernel's accept queue per readiness event: the queue empties
# at the speed of accept(2), not one connection per pass of a busy loop.
ACCEPT_BATCH: Final = 256
RECEIVE_SIZE: Final = 65536

# Called in trio's thread with a connection whose head is complete (or that the gate
# gives up reading), the bytes read from it so far, and how many seconds ago it was accepted.
Deliver = Callable[[socket.socket, bytes, float], None]


class _Head:
    """A connection whose request head is still coming in."""

    __slots__ = ("accepted_at", "data", "deadline", "sock", "waiting")

    def __init__(self, sock: socket.socket, accepted_at: float, deadline: float) -> None:
        self.sock = sock
        self.accepted_at = accepted_at
        self.deadline = deadline
        self.data = bytearray()
        self.waiting = True  # False once delivered or closed


_WAKE: Final = object()  # the selector key data of the wake-up socket


class HandshakeGate:
    """Accept on ``listeners`` and read request heads off the event loop (see module doc)."""

    def __init__(
        self,
        listeners: Sequence[trio.SocketListener],
        deliver: Deliver,
        *,
        timeout: float,
        head_limit: int,
        slots: ConnectionSlots,
    ) -> None:
        self._listeners = listeners
        self._deliver = deliver
        self._timeout = timeout
        self._head_limit = head_limit
        self._slots = slots
        self._stopping = False
        self._wake_send, self._wake_receive = socket.socketpair()
        self._token: trio.lowlevel.TrioToken | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the gate until cancelled. The listeners stay open; the caller closes them."""
        self._token = trio.lowlevel.current_trio_token()
        # Duplicates of the listening sockets: the gate's own non-blocking accept(2),
        # without reaching into trio's socket objects.
        listening = [socket.socket(fileno=os.dup(lst.socket.fileno())) for lst in self._listeners]
        for raw in listening:
            raw.setblocking(False)
        self._wake_receive.setblocking(False)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._stop_when_cancelled)
                task_status.started()
                # Not abandoned on cancel: _stop_when_cancelled wakes the thread, which
                # closes what it holds before this returns.
                await trio.to_thread.run_sync(self._loop, listening, abandon_on_cancel=False)
                nursery.cancel_scope.cancel()
        finally:
            for raw in listening:
                raw.close()
            self._wake_send.close()
            self._wake_receive.close()

    async def _stop_when_cancelled(self) -> None:
        try:
            await trio.sleep_forever()
        finally:
            self._stopping = True
            with contextlib.suppress(OSError):
                self._wake_send.send(b"x")

    # --- the gate's thread ----------------------------------------------------------

    def _loop(self, listening: list[socket.socket]) -> None:
        selector = selectors.DefaultSelector()
        expiring: collections.deque[_Head] = collections.deque()  # in deadline order
        paused: dict[socket.socket, float] = {}  # listener -> when to accept again
        try:
            for raw in listening:
                selector.register(raw, selectors.EVENT_READ, None)
            selector.register(self._wake_receive, selectors.EVENT_READ, _WAKE)
            while not self._stopping:
                wake_at = [*paused.values()]
                if expiring:
                    wake_at.append(expiring[0].deadline)
                timeout = max(0.0, min(wake_at) - time.monotonic()) if wake_at else None
                events = selector.select(timeout)
                for key, _mask in events:
                    data = key.data
                    if data is None:
                        listener = key.fileobj
                        assert isinstance(listener, socket.socket)
                        if not self._accept(listener, selector, expiring):
                            selector.unregister(listener)
                            paused[listener] = time.monotonic() + ACCEPT_RETRY
                    elif data is _WAKE:
                        with contextlib.suppress(BlockingIOError):
                            self._wake_receive.recv(64)
                    else:
                        assert isinstance(data, _Head)
                        self._read(data, selector)
                now = time.monotonic()
                for raw, resume_at in list(paused.items()):
                    if resume_at <= now:
                        del paused[raw]
                        selector.register(raw, selectors.EVENT_READ, None)
                while expiring and (not expiring[0].waiting or expiring[0].deadline <= now):
                    head = expiring.popleft()
                    if head.waiting:  # too slow: closed without an answer, as trio's path does
                        self._close(head, selector)
        finally:
            for head in expiring:
                if head.waiting:
                    self._close(head, selector)
            selector.close()

    def _accept(
        self,
        raw: socket.socket,
        selector: selectors.BaseSelector,
        expiring: collections.deque[_Head],
    ) -> bool:
        """Accept what is queued (up to a batch). False: out of resources, pause a while."""
        for _ in range(ACCEPT_BATCH):
            try:
                sock, _address = raw.accept()
            except (BlockingIOError, InterruptedError):
                return True
            except OSError as exc:
                if exc.errno in ACCEPT_CAPACITY_ERRNOS:
                    log.error(
                        "accept failed: %s; retrying in %s s", os.strerror(exc.errno), ACCEPT_RETRY
                    )
                    return False
                if exc.errno in (errno.ECONNABORTED, errno.EPROTO):
                    continue  # the client gave up while queued
                raise
            now = time.monotonic()
            if self._slots.full:
                self._hand_over(sock, b"", now)  # trio's connection limit answers it
                continue
            sock.setblocking(False)
            head = _Head(sock, now, now + self._timeout)
            self._slots.handshaking += 1
            selector.register(sock, selectors.EVENT_READ, head)
            expiring.append(head)
        return True

    def _read(self, head: _Head, selector: selectors.BaseSelector) -> None:
        try:
            data = head.sock.recv(RECEIVE_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:  # gone before its request was whole
            self._close(head, selector)
            return
        searched_from = max(0, len(head.data) - 3)
        head.data += data
        if _head_ends(head.data, searched_from) or len(head.data) > self._head_limit:
            self._finish(head, selector)
            self._hand_over(head.sock, bytes(head.data), head.accepted_at)

    def _finish(self, head: _Head, selector: selectors.BaseSelector) -> None:
        head.waiting = False
        self._slots.handshaking -= 1
        selector.unregister(head.sock)

    def _close(self, head: _Head, selector: selectors.BaseSelector) -> None:
        self._finish(head, selector)
        head.sock.close()

    def _hand_over(self, sock: socket.socket, data: bytes, accepted_at: float) -> None:
        assert self._token is not None
        try:
            self._token.run_sync_soon(self._deliver_in_trio, sock, data, accepted_at)
        except trio.RunFinishedError:
            sock.close()

    def _deliver_in_trio(self, sock: socket.socket, data: bytes, accepted_at: float) -> None:
        # An exception here would crash trio's run loop: whatever goes wrong closes the
        # connection instead (e.g. the handlers' nursery already closed at shutdown).
        try:
            self._deliver(sock, data, time.monotonic() - accepted_at)
        except Exception:
            sock.close()


def _head_ends(data: bytearray, start: int) -> bool:
    """The blank line that ends an HTTP head: CRLF CRLF, or bare LFs as h11 accepts them."""
    return data.find(b"\n\r\n", start) >= 0 or data.find(b"\n\n", start) >= 0
