"""Slowloris flood for tests (run as a script, not a test module): N sockets dribbling an
HTTP upgrade a byte every PERIOD seconds, each reopened when the server cuts it off.

    python tests/_dribble.py HOST PORT N [PERIOD]

Prints "ready" once every socket has been opened; runs until killed.
"""

from __future__ import annotations

import contextlib
import socket
import sys
import time

HEAD = b"GET /meetings HTTP/1.1\r\nHost: x\r\n"


def _open(host: str, port: int) -> list[object]:
    sock = socket.socket()
    sock.setblocking(False)
    with contextlib.suppress(BlockingIOError):  # non-blocking: the connect goes on
        sock.connect((host, port))
    return [sock, 0]


def main() -> None:
    host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    period = float(sys.argv[4]) if len(sys.argv) > 4 else 0.1
    sockets = [_open(host, port) for _ in range(n)]
    print("ready", flush=True)
    while True:
        start = time.monotonic()
        for entry in sockets:
            sock, sent = entry
            assert isinstance(sock, socket.socket) and isinstance(sent, int)
            try:
                sock.send(HEAD if sent == 0 else b"X")
                entry[1] = sent + 1
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:
                if sent == 0:
                    continue  # still connecting
                sock.close()  # cut off by the server: come back
                entry[:] = _open(host, port)
        time.sleep(max(0.0, period - (time.monotonic() - start)))


if __name__ == "__main__":
    main()
