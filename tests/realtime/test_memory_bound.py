"""Unauthenticated large frames against a real ``library-api serve`` process: refused, and memory stays bounded.

The attack of the finding: many sockets open without a credential, each sends one frame of several MiB, and the
attacker ignores the close and goes on sending. Before the fix a worker buffered every frame whole (about 34 MiB
per socket at the old 16 MiB ``WS_MAX_SIZE``); now the server refuses a frame larger than ``WS_MAX_SIZE`` while
reading its header. Each socket must be told 1009, and the worker's peak resident memory (``VmHWM``, reset before
the attack) may grow by no more than what the limits allow, a small fraction of what was sent.

The clients are raw sockets in threads, so that reading the close frame never races with a failing write.
"""

from __future__ import annotations

import base64
import os
import select
import socket
import struct
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.realtime.conftest import SQLITE_ONLY
from tests.support.processes import ServerProcess

pytestmark = [pytest.mark.parametrize(**SQLITE_ONLY), pytest.mark.children_unmeasured]

SOCKETS = 16
FRAME = 8 * 1024 * 1024
"""Each socket declares a frame of 8 MiB and sends it (128 MiB in all) unless the server hangs up first."""

WS_MAX_SIZE = 64 * 1024
"""The default of the setting, which the server process runs with."""

READ_CHUNK = 256 * 1024
"""The most a server reads from one socket at a time (asyncio's and Hypercorn's read sizes are below it)."""

SLACK = 16 * 1024 * 1024
"""Allocator and interpreter noise of a worker handling a burst of connections."""

BOUND = SOCKETS * 2 * (WS_MAX_SIZE + READ_CHUNK) + SLACK
"""What the limits let the attack cost: per socket at most one message and one read, held twice (bytes and the
decoded text), plus the slack. About 26 MiB, against the 128 MiB sent."""

CHUNK = b"x" * (256 * 1024)
WAIT = 30.0
"""Seconds a socket waits for the server to read or answer before the attempt counts as hung."""


def vm_kib(pid: int, field: str) -> int:
    """A ``/proc/<pid>/status`` memory figure (``VmRSS``, ``VmHWM``) in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name == field:
            return int(value.split()[0])
    raise AssertionError(f"no {field} for process {pid}")


def reset_peak(pid: int) -> None:
    """Make ``VmHWM`` start again from the current resident size (Linux ``clear_refs`` 5)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def handshake(port: int, client_id: str) -> tuple[socket.socket, bytes]:
    """Open a WebSocket without any credential; the socket and whatever followed the 101 response.

    The client offers permessage-deflate, as an attacker would to make small frames inflate; the server must not
    agree to it (``WS_PER_MESSAGE_DEFLATE`` is off).
    """
    sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
    key = base64.b64encode(os.urandom(16))
    sock.sendall(
        b"GET /ws/" + client_id.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n"
        b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n"
    )
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        assert chunk, "the server hung up during the handshake"
        head += chunk
    response, _, rest = head.partition(b"\r\n\r\n")
    assert response.split(b" ")[1] == b"101", response
    assert b"sec-websocket-extensions" not in response.lower(), response
    return sock, rest


def close_code(received: bytes) -> int | None:
    """The code of the first close frame in a stream of server frames (``None`` while none is complete)."""
    at = 0
    while at + 2 <= len(received):
        opcode, length, at = received[at] & 0x0F, received[at + 1] & 0x7F, at + 2
        if length == 126:
            length, at = struct.unpack("!H", received[at : at + 2])[0], at + 2
        elif length == 127:
            length, at = struct.unpack("!Q", received[at : at + 8])[0], at + 8
        if at + length > len(received):
            return None
        if opcode == 0x8:
            return int(struct.unpack("!H", received[at : at + 2])[0]) if length >= 2 else 1005
        at += length
    return None


def flood(sock: socket.socket, received: bytes) -> int | None:
    """Send one masked text frame of ``FRAME`` bytes, ignoring any close, until sent or hung up; the close code seen."""
    header = bytes([0x81, 0x80 | 127]) + struct.pack("!Q", FRAME) + b"\0\0\0\0"  # zero mask: payload as is
    pending = memoryview(header)
    left = FRAME
    buffer = bytearray(received)
    sock.setblocking(False)
    with sock:
        while True:
            writers = [sock] if pending or left else []
            readable, writable, _ = select.select([sock], writers, [], WAIT)
            assert readable or writable, f"the server neither read nor answered for {WAIT} s"
            if readable:
                try:
                    data = sock.recv(65536)
                except OSError:
                    data = b""
                if not data:
                    return close_code(buffer)
                buffer += data
            if writable:
                if not pending:
                    pending, left = memoryview(CHUNK)[: min(left, len(CHUNK))], left - min(left, len(CHUNK))
                try:
                    pending = pending[sock.send(pending) :]
                except OSError:
                    pending, left = memoryview(b""), 0  # hung up on us: read what it said before
            if not pending and not left and close_code(buffer) is not None:
                return close_code(buffer)


@pytest.fixture(params=["uvicorn", "hypercorn"])
def server(request: pytest.FixtureRequest, committed_url: str, tmp_path: Path) -> Iterator[ServerProcess]:
    """One server process with the default limits (all the attacker's sockets may wait to authenticate)."""
    running = ServerProcess(
        database_url=committed_url,
        directory=tmp_path,
        args=("--server", str(request.param)),
        env={"WS_MAX_PENDING_PER_ADDRESS": str(SOCKETS), "BROADCAST_INTERVAL": "0"},
    ).launch()
    try:
        running.wait_ready(timeout=90)
        yield running
    finally:
        running.stop()


def test_unauthenticated_large_frames_are_refused_1009_and_memory_stays_bounded(server: ServerProcess) -> None:
    pid = server.process.pid
    port = int(server.base_url.rsplit(":", 1)[1])
    warm_up = handshake(port, "warm-up")  # the code paths of a refusal run once before the measurement
    assert flood(*warm_up) == 1009
    sockets = [handshake(port, f"attacker-{n}") for n in range(SOCKETS)]
    baseline = vm_kib(pid, "VmRSS") * 1024
    reset_peak(pid)

    with ThreadPoolExecutor(max_workers=SOCKETS) as pool:
        codes = list(pool.map(lambda pair: flood(*pair), sockets))

    growth = vm_kib(pid, "VmHWM") * 1024 - baseline
    assert codes == [1009] * SOCKETS
    assert growth < BOUND, f"peak memory grew by {growth / 2**20:.1f} MiB (bound {BOUND / 2**20:.1f} MiB)"
    assert server.process.poll() is None
