"""Strings that reach the database but that it cannot hold (issue 11 #6, found by a
hostile run): a ban reason or employee id holding U+0000 failed the host's request inside
PostgreSQL ("text fields cannot contain NUL") and closed the host with 1011; a token
whose sub or name held a lone surrogate failed its join with 1011 on both backends.
They are now refused where they come in, on both backends alike.
"""

from __future__ import annotations

import base64
import hmac
import json
import time
from pathlib import Path

import pytest
import trio
from _rawws import raw_client
from _signaling import server_settings, start_server

from meshroom import Role
from meshroom.auth import TokenError, TokenKeys, mint_token, verify_token
from meshroom.protocol import ErrorCode, ProtocolError, decode_request
from meshroom.protocol.messages import CLIENT_EVENTS
from meshroom.store.testing import (  # noqa: F401  (fixtures)
    db_url,
    postgres_admin_url,
    postgres_url,
    sqlite_url,
)

STRING_FIELDS = [
    (event, spec.name)
    for event, fields in CLIENT_EVENTS.items()
    for spec in fields
    if spec.kind == "string"
]


@pytest.mark.parametrize(("event", "name"), STRING_FIELDS)
@pytest.mark.parametrize("text", ["\x00", "bob\x00", "\x00x" * 3])
def test_a_string_field_holding_nul_is_invalid_field(event: str, name: str, text: str) -> None:
    data = {s.name: "x" if s.kind == "string" else {} for s in CLIENT_EVENTS[event] if s.required}
    data[name] = text
    with pytest.raises(ProtocolError) as info:
        decode_request(json.dumps({"event": event, "id": 3, "data": data}))
    assert info.value.code is ErrorCode.INVALID_FIELD
    assert info.value.field == f"data.{name}"
    assert "NUL" in info.value.message


@pytest.mark.parametrize("claim", ["meeting_id", "emp_id", "display_name"])
def test_a_token_claim_holding_nul_is_refused(claim: str) -> None:
    keys = TokenKeys.shared_secret("s" * 48)
    values = {"meeting_id": "m-1", "emp_id": "alice", "display_name": "Alice"}
    values[claim] = values[claim][:2] + "\x00"
    token = mint_token(keys, role=Role.PARTICIPANT, **values)
    with pytest.raises(TokenError, match="NUL"):
        verify_token(keys, token)


async def test_nul_in_a_ban_an_unban_and_a_token_is_refused_not_1011(
    tmp_path: Path,
    db_url: str,  # noqa: F811
) -> None:
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            server = await start_server(nursery, server_settings(tmp_path, database_url=db_url))
            meeting = await server.meeting()
            async with raw_client(server.url) as host, raw_client(server.url) as bob:
                joined = await host.authenticate(server.token(meeting, "alice", Role.HOST))
                assert joined["event"] == "room:joined"
                assert (await bob.authenticate(server.token(meeting, "bob")))["event"] == (
                    "room:joined"
                )
                for n, (event, data) in enumerate(
                    [
                        ("host:ban", {"targetEmpId": "bob", "reason": "spam\x00"}),
                        ("host:unban", {"targetEmpId": "b\x00ob"}),
                        ("host:kick", {"targetEmpId": "\x00"}),
                    ]
                ):
                    await host.send_json(event, data, id=n)
                    while (answer := await host.receive_json()).get("id") != n:
                        assert answer["event"] == "peer:joined"  # (bob, before the answer)
                    assert answer["event"] == "error"
                    assert answer["data"]["code"] == "INVALID_FIELD"
                # The host's session is intact, and bob is still there.
                await host.send_json("host:ban", {"targetEmpId": "bob", "reason": "spam"}, id=9)
                while (answer := await host.receive_json()).get("id") != 9:
                    assert (answer["event"], answer["data"]["empId"]) == ("peer:left", "bob")
                assert answer["event"] == "ack"
            async with raw_client(server.url) as eve:
                token = server.token(meeting, "e\x00ve")
                await eve.send_json("auth", {"meetingAccessToken": token}, id=1)
                frames = await eve.frames_until_closed()
                assert [f["data"]["code"] for f in frames] == ["AUTH_FAILED"]
                assert eve.close_code == 4001
            server.server.request_shutdown()


def _signed(secret: str, claims: dict[str, object]) -> str:
    """An HS256 token signed by hand: PyJWT would write a lone surrogate as it is."""

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    head = b64(b'{"alg":"HS256","typ":"JWT"}')
    body = b64(json.dumps(claims).encode())  # (json.dumps writes "\ud800" as an escape)
    signature = hmac.digest(secret.encode(), f"{head}.{body}".encode(), "sha256")
    return f"{head}.{body}.{b64(signature)}"


@pytest.mark.parametrize("claim", ["mid", "sub", "name"])
@pytest.mark.parametrize("text", ["\ud800", "A\udfffB"], ids=["high", "low"])
def test_a_token_claim_holding_a_lone_surrogate_is_refused(claim: str, text: str) -> None:
    now = int(time.time())
    claims: dict[str, object] = {
        "mid": "m-1", "sub": "eve", "name": "Eve", "role": "PARTICIPANT", "iat": now,
        "exp": now + 600, "jti": "j", "aud": "meshroom", "iss": "meshroom",
    }  # fmt: skip
    claims[claim] = text
    with pytest.raises(TokenError, match="lone surrogates"):
        verify_token(TokenKeys.shared_secret("s" * 48), _signed("s" * 48, claims))


@pytest.mark.parametrize("claim", ["sub", "name"])
async def test_a_lone_surrogate_in_a_token_is_auth_failed_not_1011(
    tmp_path: Path,
    db_url: str,  # noqa: F811
    claim: str,
) -> None:
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            server = await start_server(nursery, server_settings(tmp_path, database_url=db_url))
            meeting = await server.meeting()
            now = int(time.time())
            claims: dict[str, object] = {
                "mid": meeting.id, "sub": "eve", "name": "Eve", "role": "PARTICIPANT",
                "iat": now, "exp": now + 600, "jti": "j", "aud": "meshroom", "iss": "meshroom",
            }  # fmt: skip
            claims[claim] = "E\ud800ve"
            async with raw_client(server.url) as eve:
                token = _signed(server.settings.secret, claims)
                await eve.send_json("auth", {"meetingAccessToken": token}, id=1)
                frames = await eve.frames_until_closed()
                assert [f["data"]["code"] for f in frames] == ["AUTH_FAILED"]
                assert eve.close_code == 4001
            server.server.request_shutdown()
