"""A real coturn (Debian's ``coturn`` package) on loopback, for the TURN tests."""

from __future__ import annotations

import os
import secrets
import socket
import struct
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import trio

STUN_MAGIC_COOKIE = 0x2112A442


@dataclass(frozen=True)
class Coturn:
    port: int
    secret: str
    realm: str
    log: Path

    @property
    def url(self) -> str:
        return f"turn:127.0.0.1:{self.port}?transport=udp"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _stun_binding_answered(port: int, timeout: float = 0.2) -> bool:
    """Send one STUN Binding request; True if a Binding success response comes back."""
    transaction = secrets.token_bytes(12)
    request = struct.pack("!HHI", 0x0001, 0, STUN_MAGIC_COOKIE) + transaction
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.sendto(request, ("127.0.0.1", port))
            data, _ = sock.recvfrom(2048)
        except OSError:  # timeout, or ICMP port unreachable while coturn starts
            return False
    return len(data) >= 20 and data[:2] == b"\x01\x01" and data[8:20] == transaction


@contextmanager
def coturn_process(binary: str, workdir: Path) -> Iterator[tuple[Coturn, subprocess.Popen[bytes]]]:
    """Start coturn with ``use-auth-secret`` on 127.0.0.1; stop it (and only it) on exit."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = _free_udp_port()
    relay_low = 40000 + (os.getpid() * 97 + port) % 20000
    server = Coturn(
        port=port,
        secret=secrets.token_urlsafe(24),
        realm="meshroom.test",
        log=workdir / "turnserver.log",
    )
    args = [
        binary,
        "-n",  # no configuration file
        "--no-cli",
        "--listening-ip=127.0.0.1",
        "--relay-ip=127.0.0.1",
        f"--listening-port={port}",
        f"--min-port={relay_low}",
        f"--max-port={relay_low + 200}",
        "--use-auth-secret",
        f"--static-auth-secret={server.secret}",
        f"--realm={server.realm}",
        # Both peers and their relayed addresses are on loopback here.
        "--allow-loopback-peers",
        "--no-tcp",  # UDP only: a TCP listener could find the port taken
        "--no-tls",
        "--no-dtls",
        "--no-tcp-relay",
        "--fingerprint",
        "--no-software-attribute",
        f"--userdb={workdir / 'turndb'}",
        f"--pidfile={workdir / 'turnserver.pid'}",
        f"--log-file={server.log}",
        "--simple-log",
        "--no-stdout-log",
    ]
    process = subprocess.Popen(
        args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
    )
    try:
        yield server, process
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


async def wait_ready(server: Coturn, process: subprocess.Popen[bytes]) -> None:
    """Probe with STUN Binding requests until coturn answers (bound it with trio.fail_after)."""
    while True:
        if process.poll() is not None:
            raise RuntimeError(
                f"coturn exited with {process.returncode}:\n{server.log_text()[-2000:]}"
            )
        # Each probe waits up to 0.2 s for the answer, which is the readiness signal.
        if await trio.to_thread.run_sync(_stun_binding_answered, server.port):
            return
        await trio.lowlevel.checkpoint()
