"""Host controls that reach the node running the room, wherever it runs.

:class:`ClusterRooms` is what the HTTP API and the CLI act through when Redis is
configured (the service layer's ``LiveRooms``): a command for a room another
node runs is sent to that node and has taken effect there before the call
returns; for a room no node runs, it acts on the database alone (a node's own
hub does that in a server; the store does it in the CLI).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import trio

from ..core import Hub
from ..store import (
    InvalidTransition,
    Meeting,
    MeetingNotFound,
    MeetingStatus,
    Store,
    StoreUnavailable,
)
from .client import ClusterClient, ClusterUnavailable, RemoteError

# How long a command may take to reach the room's node, and each try of it.
COMMAND_DEADLINE = 10.0
ATTEMPT_WAIT = 2.0
RETRY_PAUSE = 0.05


class ClusterRooms:
    def __init__(self, client: ClusterClient, store: Store, hub: Hub | None = None) -> None:
        self.client = client
        self.store = store
        self.hub = hub  # this process's rooms (None in the CLI)

    async def _on_owner(self, meeting_id: str, op: str, args: dict[str, Any]) -> tuple[bool, Any]:
        """(True, result) once the room's node ran the command; (False, None) if none runs it.

        A node that does not answer may be dying or cut off: the owner is looked up again
        (once its registration expires, nobody runs the room and the caller acts on the
        database itself), until COMMAND_DEADLINE.

        Raises:
            StoreUnavailable: Redis is unreachable, or the room's node did not answer in time.
        """
        deadline = trio.current_time() + COMMAND_DEADLINE
        while True:
            try:
                owner = await self.client.owner_of(meeting_id)
            except ClusterUnavailable as exc:
                raise StoreUnavailable(f"the cluster's Redis is unreachable: {exc}") from None
            if owner is None:
                return False, None
            node, _epoch = owner
            if self.hub is not None and node == self.client.id:
                return False, None  # this process runs it: the local hub acts
            wait = min(ATTEMPT_WAIT, deadline - trio.current_time())
            if wait <= 0:
                raise StoreUnavailable(
                    f"node {node}, which runs meeting {meeting_id}, does not answer; try again"
                )
            try:
                return True, await self.client.call(
                    node, op, {"meeting": meeting_id, **args}, wait=wait
                )
            except RemoteError as exc:
                if exc.kind != "NotOwner":
                    raise _local_error(exc, meeting_id) from None
                # It lost the room a moment ago; its record goes with its registration.
                await trio.sleep(RETRY_PAUSE)
            except ClusterUnavailable:
                await trio.sleep(RETRY_PAUSE)

    async def end_meeting(self, meeting_id: str, *, by: str | None) -> Meeting:
        done, _ = await self._on_owner(meeting_id, "end", {"by": by})
        if not done:
            if self.hub is not None:
                return await self.hub.end_meeting(meeting_id, by=by)
            return await self.store.transition(meeting_id, MeetingStatus.ENDED, by=by)
        meeting = await self.store.get_meeting(meeting_id)
        if meeting is None:
            raise MeetingNotFound(meeting_id)
        return meeting

    async def kick(self, meeting_id: str, emp_id: str, *, by: str | None = None) -> bool:
        done, kicked = await self._on_owner(meeting_id, "kick", {"emp": emp_id, "by": by})
        if not done:
            return self.hub is not None and await self.hub.kick(meeting_id, emp_id, by=by)
        return bool(kicked)

    async def ban(
        self, meeting_id: str, emp_id: str, *, by: str | None = None, reason: str | None = None
    ) -> None:
        done, _ = await self._on_owner(
            meeting_id, "ban", {"emp": emp_id, "by": by, "reason": reason}
        )
        if done:
            return
        if self.hub is not None:
            await self.hub.ban(meeting_id, emp_id, by=by, reason=reason)
        else:
            await self.store.ban(
                meeting_id=meeting_id,
                emp_id=emp_id,
                by=by,
                reason=reason,
                at=dt.datetime.now(dt.UTC),
            )

    async def unban(self, meeting_id: str, emp_id: str, *, by: str | None = None) -> bool:
        done, lifted = await self._on_owner(meeting_id, "unban", {"emp": emp_id, "by": by})
        if not done:
            if self.hub is not None:
                return await self.hub.unban(meeting_id, emp_id, by=by)
            return await self.store.unban(meeting_id=meeting_id, emp_id=emp_id, by=by)
        return bool(lifted)

    async def participants(self, meeting_id: str) -> list[dict[str, Any]]:
        done, found = await self._on_owner(meeting_id, "participants", {})
        if not done:
            return await self.hub.participants(meeting_id) if self.hub is not None else []
        return list(found or [])


def _local_error(exc: RemoteError, meeting_id: str) -> Exception:
    """The error the owner raised, as this process's own type where it is one of the store's."""
    if exc.kind == MeetingNotFound.__name__:
        return MeetingNotFound(meeting_id)
    if exc.kind == InvalidTransition.__name__:
        return _transition_error(exc.message)
    if exc.kind == StoreUnavailable.__name__:
        return StoreUnavailable(exc.message)
    return StoreUnavailable(f"the meeting's node failed: {exc.kind}: {exc.message}")


def _transition_error(message: str) -> Exception:
    # "cannot move a ENDED meeting to ENDED": the statuses are in the message.
    words = message.split()
    try:
        return InvalidTransition(MeetingStatus(words[3]), MeetingStatus(words[-1]))
    except (IndexError, ValueError):
        return StoreUnavailable(message)
