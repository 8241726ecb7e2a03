"""A kept-alive connection at shutdown, on a real ``library-api serve``: idle between requests, it is closed cleanly.

The load test (``tests/reliability/test_shutdown_under_load.py``) covers connections whose next request is
already waiting when the server stops; this checks the quiet path of ``HeadDeadlineProtocol.shutdown``.
"""

from __future__ import annotations

import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.processes import ServerProcess

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.parametrize("backend", ["sqlite"], indirect=True),
    pytest.mark.children_unmeasured,
]

REQUEST = b"GET /api/v1/books HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


@pytest.fixture
def server(committed_url: str, tmp_path: Path) -> Iterator[ServerProcess]:
    running = ServerProcess(database_url=committed_url, directory=tmp_path, env={"SHUTDOWN_TIMEOUT": "2"}).launch()
    try:
        running.wait_ready(timeout=90)
        yield running
    finally:
        if running.process.poll() is None:
            running.process.kill()
            running.process.wait()


def read_until_closed(connection: socket.socket, within: float) -> bytes:
    """Everything the server sends until it closes the connection (fails after ``within`` seconds)."""
    deadline = time.monotonic() + within
    received = b""
    while time.monotonic() < deadline:
        connection.settimeout(max(deadline - time.monotonic(), 0.01))
        chunk = connection.recv(65536)
        if not chunk:
            return received
        received += chunk
    raise AssertionError(f"still open after {within} s: {received[:200]!r}")


def read_response(connection: socket.socket) -> bytes:
    """One complete response (head and ``content-length`` bytes of body)."""
    received = b""
    while b"\r\n\r\n" not in received:
        received += connection.recv(65536)
    head, _, body = received.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        body += connection.recv(65536)
    return head + b"\r\n\r\n" + body


def test_an_idle_kept_alive_connection_is_closed_after_its_answers(server: ServerProcess) -> None:
    port = int(server.base_url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as idle:
        idle.sendall(REQUEST)
        first = read_response(idle)
        assert first.startswith(b"HTTP/1.1 200 ")
        assert b"connection: close" not in first.lower()
        server.process.send_signal(signal.SIGTERM)
        assert read_until_closed(idle, within=20) == b""  # closed between requests, nothing half-sent
    assert server.process.wait(timeout=30) == 0
