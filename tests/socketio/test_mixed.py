"""A native-protocol peer and Socket.IO peers in one meeting: one room core, one store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from meshroom import Role
from meshroom.client import connect

from .conftest import CLIENTS
from .harness import SERVER_DISCONNECT, driver, socketio_server


@pytest.mark.parametrize("client", CLIENTS)
async def test_native_and_socketio_peers_signal_each_other(
    tmp_path: Path, client: tuple[str, Any]
) -> None:
    kind, transports = client
    async with socketio_server(tmp_path) as sio, driver(kind) as bob:
        native = sio.native
        meeting = await native.meeting(host="alice")
        async with connect(sio.ws_url, native.token(meeting, "alice", Role.HOST)) as alice:
            joined = await bob.join(sio.url, native.token(meeting, "bob"), transports=transports)
            assert [p["empId"] for p in joined["peers"]] == ["alice"]
            assert (await alice.wait_for("peer:joined")).data["empId"] == "bob"

            offer = {"type": "offer", "sdp": "v=0 native"}
            await alice.offer("bob", offer)
            assert await bob.event("signal:offer") == {"fromEmpId": "alice", "offer": offer}
            answer = {"type": "answer", "sdp": "v=0 socket.io"}
            assert await bob.call("signal:answer", {"targetEmpId": "alice", "answer": answer}) == [
                {}
            ]
            got = await alice.wait_for("signal:answer")
            assert got.data == {"fromEmpId": "bob", "answer": answer}
            candidate = {"candidate": "candidate:2 1 udp 1 10.0.0.2 9 typ host"}
            await alice.ice("bob", candidate)
            assert await bob.event("signal:ice") == {"fromEmpId": "alice", "candidate": candidate}
            [presence] = await bob.call("presence:update", {"muted": True})
            assert presence["presence"]["muted"] is True
            assert (await alice.wait_for("presence:updated")).data["empId"] == "bob"

            # Host controls cross protocols too.
            assert (await alice.kick("bob"))["targetEmpId"] == "bob"
            assert (await bob.event("session:closed"))["reason"] == "kicked"
            assert (await bob.expect("disconnect"))["reason"] == SERVER_DISCONNECT[kind]
            await alice.leave()

        rows = await native.store.attendance_for_meeting(meeting.id)
        by_emp = {row.emp_id: row for row in rows}
        assert set(by_emp) == {"alice", "bob"}
        assert by_emp["bob"].leave_reason == "kicked" and by_emp["bob"].left_at is not None


@pytest.mark.parametrize("client", CLIENTS)
async def test_attendance_rows_do_not_depend_on_the_protocol(
    tmp_path: Path, client: tuple[str, Any]
) -> None:
    """The same join-and-leave, once natively and once over Socket.IO: identical rows."""
    kind, transports = client
    async with socketio_server(tmp_path) as sio, driver(kind) as bob:
        native = sio.native
        meeting = await native.meeting(host="alice")
        async with connect(sio.ws_url, native.token(meeting, "alice", Role.HOST)) as alice:
            async with connect(sio.ws_url, native.token(meeting, "carol", name="Carol")) as carol:
                await alice.wait_for("peer:joined", empId="carol")
                await carol.leave()
            await alice.wait_for("peer:left", empId="carol")
            await bob.join(
                sio.url, native.token(meeting, "bob", name="Carol"), transports=transports
            )
            await alice.wait_for("peer:joined", empId="bob")
            await bob.emit("peer:leave", {})
            assert (await bob.expect("disconnect"))["reason"] == SERVER_DISCONNECT[kind]
            assert (await alice.wait_for("peer:left", empId="bob")).data["reason"] == "left"
        rows = {r.emp_id: r for r in await native.store.attendance_for_meeting(meeting.id)}

        def shape(emp: str) -> tuple[Any, ...]:
            row = rows[emp]
            return (
                row.display_name,
                row.role,
                row.leave_reason,
                row.left_at is not None,
                row.duration_seconds is not None,
            )

        assert shape("bob") == shape("carol")
