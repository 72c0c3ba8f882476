"""What nodes say to each other over Redis: one envelope format, no I/O.

Every message a node publishes to another node's channel is an envelope: one
line of JSON (the header) and, after it, the raw payloads whose lengths the
header lists (``"n"``). Frames relayed for a client are carried byte for byte,
so nothing is re-encoded on the way through.

Kinds (``"k"``):

======  ===========  ==========================================================
kind    direction    meaning
======  ===========  ==========================================================
open    edge→owner   a client of the edge node authenticated for a room the
                     owner runs (token, resume token, last seq, request id)
in      edge→owner   messages the client sent (payloads)
gone    edge→owner   the client's connection ended (close code; timed out?)
out     owner→edge   frames for the client (payloads)
close   owner→edge   close the client's connection (code, reason)
cmd     any→owner    a host control to run on the room (op, args, reply-to)
reply   owner→any    the answer to a ``cmd`` (ok + result, or error + message)
======  ===========  ==========================================================

``in``/``gone`` and ``out``/``close`` carry a per-link sequence number
(``"s"``): Redis pub/sub drops what is published while a subscriber reconnects,
and a gap must end the link rather than lose a frame silently.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson


class WireError(Exception):
    """An envelope that is not one this version of meshroom writes."""


def pack(header: dict[str, Any], payloads: Sequence[bytes] = ()) -> bytes:
    if payloads:
        header = {**header, "n": [len(p) for p in payloads]}
    return orjson.dumps(header) + b"\n" + b"".join(payloads)


def unpack(data: bytes) -> tuple[dict[str, Any], list[bytes]]:
    head, newline, body = data.partition(b"\n")
    if not newline:
        raise WireError("no header line")
    try:
        header = orjson.loads(head)
    except orjson.JSONDecodeError as exc:
        raise WireError(f"header is not JSON: {exc}") from None
    if not isinstance(header, dict) or not isinstance(header.get("k"), str):
        raise WireError("header is not an object with a kind")
    lengths = header.get("n", [])
    if not isinstance(lengths, list) or not all(
        isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in lengths
    ):
        raise WireError("payload lengths are not a list of sizes")
    if sum(lengths) != len(body):
        raise WireError(f"payloads hold {len(body)} bytes, the header says {sum(lengths)}")
    payloads = []
    at = 0
    for n in lengths:
        payloads.append(body[at : at + n])
        at += n
    return header, payloads
