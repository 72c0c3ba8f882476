"""Close reasons are cut to 123 bytes on a UTF-8 character boundary (issue 11 #5).

A reason cut inside a character is invalid UTF-8; a standard client then fails the
connection (1007, or 1006 in a browser) and never learns the close code.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
from _rawws import raw_client
from _signaling import server_settings, start_server
from hypothesis import given, settings
from hypothesis import strategies as st
from wsproto.connection import Connection, ConnectionType
from wsproto.events import CloseConnection

from meshroom.transports import frames

# 2-, 3- and 4-byte characters: é, CJK, an emoji, and a flag (two 4-byte code points).
WIDE = ["é", "会", "😀", "🇫🇷"]


def _client_reads(wire: bytes) -> CloseConnection:
    """What a standard client (wsproto) makes of a server close frame."""
    client = Connection(ConnectionType.CLIENT)
    client.receive_data(wire)
    (event,) = list(client.events())
    assert isinstance(event, CloseConnection)
    return event


@pytest.mark.parametrize("char", WIDE)
@pytest.mark.parametrize("pad", range(4))
def test_a_long_reason_is_cut_on_a_character_boundary_at_every_cut_position(
    char: str, pad: int
) -> None:
    # pad ASCII bytes in front move the 123-byte cut through every byte of a character.
    reason = "x" * pad + char * 100
    wire = frames.close_frame(4000, reason)
    assert len(wire) <= 2 + 125  # a control frame's payload is at most 125 bytes
    event = _client_reads(wire)
    assert event.code == 4000
    assert reason.startswith(event.reason)
    # As much as fits: less than one more character would have.
    kept = len(event.reason.encode())
    assert 123 - len(char.encode()) < kept <= 123


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200), st.integers(min_value=1000, max_value=4999))
def test_any_reason_gives_a_close_frame_a_client_accepts(reason: str, code: int) -> None:
    payload = frames.close_reason(reason)
    assert len(payload) <= 123
    assert reason.encode("utf-8", "replace").startswith(payload)
    payload.decode("utf-8")  # valid UTF-8, whatever was cut


@pytest.mark.parametrize(
    ("char", "pad"), [(c, p) for c in WIDE[:3] for p in range(len(c.encode()))]
)
async def test_a_refusal_naming_a_wide_event_reaches_the_client_with_its_code(
    tmp_path: Path, char: str, pad: int
) -> None:
    """The issue's reproduction: a first frame whose event name is long emoji/CJK text."""
    with trio.fail_after(15):
        async with trio.open_nursery() as nursery:
            server = await start_server(nursery, server_settings(tmp_path))
            async with raw_client(server.url) as client:
                await client.send_json("a" * pad + char * 60)
                received = await client.frames_until_closed()
                assert [f["data"]["code"] for f in received] == ["AUTH_REQUIRED"]
                assert client.close_code == 4000
            server.server.request_shutdown()
