"""A local, durable journal of the attendance the database has not taken yet.

While the database is away, leaves wait in the leave writer's memory and
last-seen stamps are not written; a crash then would lose both (rows closed by
recovery at a stale heartbeat, leaves recorded as crashes). So whatever cannot
reach the database is also written here — a SQLite file on local disk, each
write committed with ``synchronous=FULL`` before it is acknowledged — and the
next start replays it into the database *before* crash recovery runs
(:func:`replay`). What the database does take is forgotten here again.

Blocking file I/O: every call runs in a worker thread, one at a time.
"""

from __future__ import annotations

import datetime as dt
import logging
import sqlite3
from collections.abc import Iterable, Sequence
from pathlib import Path

import trio

from .base import Leave, Store

log = logging.getLogger(__name__)

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS leaves ("
    " attendance_id INTEGER PRIMARY KEY, left_at TEXT NOT NULL, reason TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS seen (attendance_id INTEGER PRIMARY KEY, at TEXT NOT NULL)",
)


class Journal:
    """The journal file; :meth:`open` it before use, :meth:`close` it after."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._db: sqlite3.Connection | None = None
        self._lock = trio.Lock()

    async def open(self) -> None:
        await trio.to_thread.run_sync(self._open)

    def _open(self) -> None:
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        # Committed means on disk: that is the journal's whole point.
        db.execute("PRAGMA synchronous=FULL")
        for statement in _SCHEMA:
            db.execute(statement)
        self._db = db

    async def close(self) -> None:
        if self._db is not None:
            db, self._db = self._db, None
            await trio.to_thread.run_sync(db.close)

    async def _run(self, statement: str, rows: Iterable[tuple[object, ...]] = ((),)) -> None:
        async with self._lock:
            db = self._db
            assert db is not None, "the journal is not open"
            rows = list(rows)

            def write() -> None:
                with db:  # one transaction
                    db.executemany(statement, rows)

            await trio.to_thread.run_sync(write)

    async def keep_leaves(self, leaves: Sequence[Leave]) -> None:
        """Leaves the database refused: kept until :meth:`forget_leaves`."""
        await self._run(
            "INSERT OR IGNORE INTO leaves VALUES (?, ?, ?)",
            [(leave.attendance_id, leave.left_at.isoformat(), leave.reason) for leave in leaves],
        )

    async def forget_leaves(self, attendance_ids: Sequence[int]) -> None:
        rows = [(i,) for i in attendance_ids]
        await self._run("DELETE FROM leaves WHERE attendance_id = ?", rows)

    async def keep_seen(self, attendance_ids: Sequence[int], at: dt.datetime) -> None:
        """A last-seen stamp the database did not take (the newest one per row wins)."""
        rows = [(i, at.isoformat()) for i in attendance_ids]
        await self._run("INSERT OR REPLACE INTO seen VALUES (?, ?)", rows)

    async def forget_seen(self) -> None:
        """The database has newer stamps than any kept here."""
        await self._run("DELETE FROM seen")

    async def contents(self) -> tuple[list[Leave], dict[int, dt.datetime]]:
        """Everything kept: the leaves, and the newest last-seen stamp per row."""
        async with self._lock:
            db = self._db
            assert db is not None, "the journal is not open"

            def read() -> tuple[list[tuple[int, str, str]], list[tuple[int, str]]]:
                leaves = db.execute("SELECT * FROM leaves ORDER BY attendance_id").fetchall()
                seen = db.execute("SELECT * FROM seen").fetchall()
                return leaves, seen

            leaves, seen = await trio.to_thread.run_sync(read)
        return (
            [Leave(i, dt.datetime.fromisoformat(at), reason) for i, at, reason in leaves],
            {i: dt.datetime.fromisoformat(at) for i, at in seen},
        )


async def replay(journal: Journal, store: Store) -> tuple[int, int]:
    """Write what the journal kept into the database, then empty it.

    Run at start, before crash recovery, so that recovery closes rows at their real
    last-seen time and leaves made during an outage keep their time and reason.
    Returns (leaves written, rows stamped). Raises what the store raises (the
    journal is then left as it was, for the next try).
    """
    leaves, seen = await journal.contents()
    stamped = 0
    # Stamps first: a row a leave then closes is not open any more to be stamped.
    by_time: dict[dt.datetime, list[int]] = {}
    for attendance_id, at in seen.items():
        by_time.setdefault(at, []).append(attendance_id)
    for at, ids in sorted(by_time.items()):
        stamped += await store.touch_attendance(ids, at)
    written = await store.record_leaves(leaves) if leaves else 0
    await journal.forget_seen()
    await journal.forget_leaves([leave.attendance_id for leave in leaves])
    if leaves or seen:
        log.warning(
            "attendance journal: wrote %d leave(s) and %d last-seen stamp(s) the database "
            "had not taken before the last stop",
            written,
            stamped,
        )
    return written, stamped
