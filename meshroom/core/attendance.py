"""Attendance bookkeeping the hub does off the relay path: leaves and heartbeats.

Attendance is payroll data, so a leave is never dropped because the database
was away at the moment a peer left:

* :class:`LeaveWriter` takes every leave (``record`` never raises, never blocks
  for long), writes them in batches, and keeps the ones the database refused,
  retrying with exponential backoff until it takes them. ``record_leaves`` only
  closes rows still open, so a retry after a write whose answer was lost is
  harmless: nothing is written twice. On shutdown it flushes within a deadline
  and logs (at ERROR, with every detail) the leaves it could not write; the
  next start's crash recovery closes those rows at their last heartbeat.
* :func:`run_heartbeats` stamps ``last_seen_at`` on the rows of every live peer
  in one batched UPDATE per interval, so that after a crash the next start
  (:meth:`~meshroom.store.SqlStore.recover_open_attendance`) closes dangling
  rows at the last moment the server knew the peer was there.
* With an :class:`AttendanceJournal` (a local file, :mod:`meshroom.store.journal`),
  leaves and stamps the database did not take are also made durable there, so a
  crash *during* a database outage loses neither: the next start replays them.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import random
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

import trio

from ..store.base import Leave, Store, StoreUnavailable

log = logging.getLogger(__name__)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class AttendanceJournal(Protocol):
    """Where attendance the database did not take is kept durably until it does."""

    async def keep_leaves(self, leaves: Sequence[Leave]) -> None: ...

    async def forget_leaves(self, attendance_ids: Sequence[int]) -> None: ...

    async def keep_seen(self, attendance_ids: Sequence[int], at: dt.datetime) -> None: ...

    async def forget_seen(self) -> None: ...


async def _journal_safely(what: str, call: Callable[[], Awaitable[None]]) -> None:
    """A journal that fails (disk full, say) must not stop attendance: log it, go on."""
    try:
        await call()
    except Exception as exc:
        log.error("the attendance journal could not %s: %s", what, exc)


@dataclass(frozen=True, slots=True)
class AttendanceConfig:
    # Seconds between heartbeats; a crash loses at most this much of anyone's attendance.
    heartbeat_interval: float = 15.0
    # Retry delays for leaves the database refused: first, then doubling up to the cap.
    retry_initial: float = 0.5
    retry_max: float = 15.0
    # How long shutdown waits to write leaves still pending.
    flush_timeout: float = 10.0
    # How long a peer's teardown waits for its leave to be written while the database
    # is healthy; past it the leave stays queued and the teardown goes on.
    record_wait: float = 10.0
    # Leaves per write.
    batch_size: int = 500


class LeaveWriter:
    """The one writer of leaves: queue, batch, retry until written; owned by the hub.

    Run :meth:`run` in the hub's nursery and :meth:`close` after every peer is gone.
    """

    def __init__(
        self,
        store: Store,
        config: AttendanceConfig | None = None,
        journal: AttendanceJournal | None = None,
    ) -> None:
        self.store = store
        self.config = config or AttendanceConfig()
        self.journal = journal
        self._journaled: set[int] = set()  # pending leaves already kept in the journal
        self._pending: dict[int, Leave] = {}  # by attendance id, in submission order
        self._attempted: dict[int, trio.Event] = {}  # set after a write attempt covers it
        self._wake = trio.Event()
        self._write_lock = trio.Lock()
        self._running = False
        self._failing = False  # the last attempt failed: new leaves do not wait
        self.written = 0  # rows closed by this writer
        self.failures = 0  # failed write attempts

    @property
    def pending(self) -> list[Leave]:
        return list(self._pending.values())

    @property
    def healthy(self) -> bool:
        return not self._failing

    def submit(self, leave: Leave) -> None:
        """Queue a leave; never blocks. A second leave for the same row is ignored."""
        if leave.attendance_id in self._pending:
            return
        self._pending[leave.attendance_id] = leave
        self._wake.set()

    async def record(self, leave: Leave) -> None:
        """Queue a leave and, while the database is healthy, wait until it is written.

        Returns early (the leave stays queued) when a write fails or takes longer
        than ``record_wait``; never raises. So a peer's teardown, and whoever waits
        on it (a kick, a ban), finishes with its row closed when the database is up,
        and is not held hostage by the database when it is down.
        """
        self.submit(leave)
        if self._failing:
            # The database is away: make it durable now, not at the next failed retry.
            await self._keep_in_journal()
        if not self._running or self._failing:
            return
        attempted = self._attempted.setdefault(leave.attendance_id, trio.Event())
        with trio.move_on_after(self.config.record_wait):
            await attempted.wait()

    async def write_now(self) -> bool:
        """Try to write everything pending at once, outside the backoff; True if all went."""
        await self._attempt()
        return not self._pending

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Write leaves as they come, retrying with backoff; runs until cancelled."""
        self._running = True
        task_status.started()
        delay = self.config.retry_initial
        try:
            while True:
                if not self._pending:
                    self._wake = trio.Event()
                    await self._wake.wait()
                if await self._attempt():
                    delay = self.config.retry_initial
                    continue
                # The database refused: wait, then try again (new leaves just queue up).
                await trio.sleep(delay * random.uniform(0.9, 1.1))
                delay = min(delay * 2, self.config.retry_max)
        finally:
            self._running = False
            self._release_waiters(list(self._attempted))

    async def _attempt(self) -> bool:
        """One write of up to batch_size pending leaves; True if it went through."""
        async with self._write_lock:
            batch = list(self._pending.values())[: self.config.batch_size]
            if not batch:
                return True
            try:
                written = await self.store.record_leaves(batch)
            except Exception as exc:
                self.failures += 1
                if not self._failing:
                    self._failing = True
                    log.warning(
                        "could not write %d attendance leave(s); keeping them and retrying: %s",
                        len(self._pending),
                        exc if isinstance(exc, StoreUnavailable) else repr(exc),
                    )
                if not isinstance(exc, StoreUnavailable):
                    log.exception("unexpected error writing attendance leaves")
                self._release_waiters(leave.attendance_id for leave in batch)
                await self._keep_in_journal()
                return False
            for leave in batch:
                self._pending.pop(leave.attendance_id, None)
            # Before the next checkpoint: whoever sees the leaves gone from `pending`
            # sees them counted in `written` too.
            self.written += written
            await self._forget_in_journal([leave.attendance_id for leave in batch])
            if self._failing:
                self._failing = False
                log.warning(
                    "the database took the queued attendance leaves again (%d still pending)",
                    len(self._pending),
                )
            self._release_waiters(leave.attendance_id for leave in batch)
            return True

    async def _keep_in_journal(self) -> None:
        journal = self.journal
        fresh = [leave for i, leave in self._pending.items() if i not in self._journaled]
        if journal is None or not fresh:
            return
        self._journaled.update(leave.attendance_id for leave in fresh)
        await _journal_safely("keep leaves", lambda: journal.keep_leaves(fresh))

    async def _forget_in_journal(self, attendance_ids: list[int]) -> None:
        journal = self.journal
        kept = [i for i in attendance_ids if i in self._journaled]
        if journal is None or not kept:
            return
        self._journaled.difference_update(kept)
        await _journal_safely("forget leaves", lambda: journal.forget_leaves(kept))

    def _release_waiters(self, attendance_ids: Iterable[int]) -> None:
        for attendance_id in attendance_ids:
            event = self._attempted.pop(attendance_id, None)
            if event is not None:
                event.set()

    async def close(self) -> list[Leave]:
        """Flush within ``flush_timeout``; log and return what could not be written."""
        with trio.move_on_after(self.config.flush_timeout):
            delay = self.config.retry_initial
            while self._pending and not await self.write_now():
                await trio.sleep(delay)
                delay = min(delay * 2, self.config.retry_max)
        lost = self.pending
        if lost:
            log.error(
                "shutting down with %d attendance leave(s) the database did not take; the next "
                "start closes these rows at their last heartbeat (closed_by_recovery): %s",
                len(lost),
                "; ".join(
                    f"attendance {leave.attendance_id} left {leave.left_at.isoformat()} "
                    f"({leave.reason})"
                    for leave in lost
                ),
            )
        return lost


async def run_heartbeats(
    store: Store,
    live_attendance_ids: Callable[[], list[int]],
    interval: float,
    *,
    journal: AttendanceJournal | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Every ``interval`` seconds, stamp ``last_seen_at`` on every live peer's row.

    A stamp the database does not take goes to the journal (if any) instead.
    """
    task_status.started()
    failing = False
    while True:
        await trio.sleep(interval)
        ids = live_attendance_ids()
        if not ids:
            continue
        at = utcnow()
        try:
            await store.touch_attendance(ids, at)
        except Exception as exc:
            if not failing:
                log.warning("could not record the attendance heartbeat: %s", exc)
            failing = True
            if journal is not None:
                keep = functools.partial(journal.keep_seen, ids, at)
                await _journal_safely("keep a heartbeat", keep)
        else:
            if failing:
                log.warning("attendance heartbeats are recorded again")
                if journal is not None:
                    await _journal_safely("forget heartbeats", journal.forget_seen)
            failing = False
