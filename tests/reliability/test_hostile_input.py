"""Hostile input against a real server process: each attempt gets a clear 4xx, writes nothing, and the service
keeps serving.

One ``library-api serve`` process (SQLite, a 1 s request-head deadline, a 4 KiB WebSocket message limit) takes
oversized and streamed bodies, deeply nested JSON, huge query strings, invalid UTF-8, slow-header clients
(slowloris), malformed WebSocket frames and oversized messages, and path traversal in the upload and static
routes. After every attempt a well-behaved client must still get its answer, and each test checks that the
access lines of its own requests hold no 5xx; the catalogue and the upload directory must be as they were. Each
test holds on its own: none reads what another left (the count of inputs tried is a figure each one reports).
"""

from __future__ import annotations

import base64
import contextlib
import os
import select
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from tests.reliability import budget
from tests.reliability.conftest import Record
from tests.support.factories import PASSWORD, unique_isbn
from tests.support.images import png
from tests.support.processes import ServerProcess

# One xdist worker runs this module's tests, so its module-scoped servers start once (docs/testing.md).
pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.xdist_group("hostile-input")]

HEAD_TIMEOUT = 1.0
WS_MAX_SIZE = 4096
LIBRARIAN = "hostile-librarian@example.org"


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    live = ServerProcess(
        {
            "RATE_LIMIT_ENABLED": "false",
            "HTTP_HEADER_TIMEOUT": str(HEAD_TIMEOUT),
            "WS_MAX_SIZE": str(WS_MAX_SIZE),
            "WS_ALLOW_ANONYMOUS": "true",
        },
        json_log=True,
    )
    live.env["DATABASE_URL"] = f"sqlite+aiosqlite:///{live.directory / 'hostile.db'}"
    assert live.run_cli("migrate").returncode == 0
    created = live.run_cli("users", "create", "--email", LIBRARIAN, "--password", PASSWORD, "--role", "librarian")
    assert created.returncode == 0, created.stderr
    live.start(wait="/health/ready")
    yield live
    assert live.stop_cleanly(), live.log_text()[-3000:]


@pytest.fixture(scope="module")
def librarian(server: ServerProcess) -> dict[str, str]:
    answer = httpx.post(
        server.base_url + "/api/v1/auth/login", data={"username": LIBRARIAN, "password": PASSWORD}, timeout=10
    )
    return {"Authorization": f"Bearer {answer.json()['access_token']}"}


@pytest.fixture(scope="module")
def book_id(server: ServerProcess, librarian: dict[str, str]) -> int:
    answer = httpx.post(
        server.base_url + "/api/v1/books",
        json={"isbn": unique_isbn(), "title": "Target", "authors": ["A"]},
        headers=librarian,
        timeout=10,
    )
    assert answer.status_code == 201, answer.text
    return int(answer.json()["id"])


def still_serving(server: ServerProcess) -> None:
    """A well-behaved client is answered at once."""
    answer = httpx.get(server.base_url + "/api/v1/books", timeout=5)
    assert answer.status_code == 200


def books_total(server: ServerProcess) -> int:
    return int(httpx.get(server.base_url + "/api/v1/books", timeout=5).json()["total"])


def raw_exchange(server: ServerProcess, payload: bytes, *, within: float = 10) -> bytes:
    """Send raw bytes on a fresh connection and read until the server closes it (or ``within`` passes)."""
    received = b""
    with socket.create_connection(("127.0.0.1", server.port), timeout=within) as sock:
        sock.sendall(payload)
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except (TimeoutError, ConnectionResetError):
                break
            if not chunk:
                break
            received += chunk
            if b"\r\n\r\n" in received and b"connection: close" not in received.lower():
                head, _, body = received.partition(b"\r\n\r\n")
                length = next(
                    (
                        int(line.split(b":")[1])
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length")
                    ),
                    None,
                )
                if length is not None and len(body) >= length:
                    break
    return received


def status_of(raw: bytes) -> int:
    return int(raw.split(b" ", 2)[1])


class Tally:
    """Counts the hostile inputs one test tried and any 5xx they drew."""

    def __init__(self) -> None:
        self.tried = 0
        self.server_errors = 0

    def saw(self, status: int) -> int:
        self.tried += 1
        self.server_errors += status >= 500
        return status


@pytest.fixture
def tally(server: ServerProcess, figures: Record) -> Iterator[Tally]:
    """This test's tally; afterwards, no access line of this test's requests may be a 5xx.

    The access lines are read up to a sentinel: a request made after the test's own, whose line is written after
    theirs by the one worker process.
    """
    logged_before = len(server.access_records())
    counted = Tally()
    yield counted
    sentinel = httpx.get(server.base_url + "/api/v1/books", params={"limit": 1}, timeout=10)
    server.wait_for_access(sentinel.headers["x-request-id"])
    statuses = [record.get("status") for record in server.access_records()[logged_before:]]
    errors = [status for status in statuses if isinstance(status, int) and status >= 500]
    figures(hostile_inputs=counted.tried, server_errors=counted.server_errors + len(errors))
    assert counted.tried > 0
    assert counted.server_errors == 0
    assert errors == []


def test_oversized_and_streamed_bodies_are_413(server: ServerProcess, librarian: dict[str, str], tally: Tally) -> None:
    before = books_total(server)
    for _ in range(budget.current().hostile_repeats):
        big = b'{"title": "' + b"x" * (2 * 1024 * 1024) + b'"}'
        declared = httpx.post(
            server.base_url + "/api/v1/books",
            content=big,
            headers={**librarian, "content-type": "application/json"},
            timeout=30,
        )
        assert tally.saw(declared.status_code) == 413
        assert declared.headers["content-type"] == "application/problem+json"

        def chunks() -> Iterator[bytes]:
            for _ in range(40):
                yield b"x" * 65536

        streamed = httpx.post(
            server.base_url + "/api/v1/books",
            content=chunks(),
            headers={**librarian, "content-type": "application/json"},
            timeout=30,
        )
        assert tally.saw(streamed.status_code) == 413
        still_serving(server)
    assert books_total(server) == before


def test_deeply_nested_json_is_refused(server: ServerProcess, librarian: dict[str, str], tally: Tally) -> None:
    before = books_total(server)
    for depth in (1_000, 100_000, 400_000):
        body = b"[" * depth + b"]" * depth
        answer = httpx.post(
            server.base_url + "/api/v1/books",
            content=body,
            headers={**librarian, "content-type": "application/json"},
            timeout=30,
        )
        assert 400 <= tally.saw(answer.status_code) < 500, answer.text[:300]
        assert answer.headers["content-type"] == "application/problem+json"
        levels = min(depth, 5_000)
        nested = (
            b'{"isbn": "'
            + unique_isbn().encode()
            + b'", "title": "T", "authors": ["A"], "description": '
            + b'{"d": ' * levels
            + b"{}"
            + b"}" * levels
            + b"}"
        )
        deep_field = httpx.post(
            server.base_url + "/api/v1/books",
            content=nested,
            headers={**librarian, "content-type": "application/json"},
            timeout=30,
        )
        assert 400 <= tally.saw(deep_field.status_code) < 500
        still_serving(server)
    assert books_total(server) == before


def test_huge_query_strings_are_refused(server: ServerProcess, tally: Tally) -> None:
    for size in (1_000, 64_000, 1_000_000):
        raw = raw_exchange(server, b"GET /api/v1/books?q=" + b"a" * size + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert 400 <= tally.saw(status_of(raw)) < 500, raw[:200]
        assert b"application/problem+json" in raw.partition(b"\r\n\r\n")[0]
        many = b"&".join([b"tag=t"] * 200)
        raw = raw_exchange(server, b"GET /api/v1/books?" + many + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert 400 <= tally.saw(status_of(raw)) < 500, raw[:200]
        still_serving(server)


def test_invalid_utf8_is_a_clear_4xx(server: ServerProcess, librarian: dict[str, str], tally: Tally) -> None:
    token = librarian["Authorization"].encode()
    body = b'{"title": "\xff\xfe"}'
    attempts = [
        b"POST /api/v1/books HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: "
        + token
        + b"\r\nContent-Type: application/json\r\nContent-Length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body,
        b"GET /api/v1/books?q=%FF%FE HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
        b"GET /api/v1/books/\xff HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
        b"GET /api/v1/books HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Request-ID: \xff\xfe\r\n\r\n",
    ]
    expected = [(400, 422), (422,), (400,), (200,)]
    for payload, statuses in zip(attempts, expected, strict=True):
        raw = raw_exchange(server, payload)
        head = raw.partition(b"\r\n\r\n")[0]
        assert tally.saw(status_of(raw)) in statuses, raw[:300]
        if status_of(raw) >= 400:
            assert b"application/problem+json" in head, raw[:300]
        assert b"\xff" not in head, "nothing the client sent that is not text is echoed back"
        still_serving(server)


def test_slow_header_clients_are_cut_off_and_others_served(server: ServerProcess, tally: Tally) -> None:
    slow = []
    for _ in range(20):
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        sock.sendall(b"GET /api/v1/books HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        slow.append(sock)
    idle = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    try:
        # Until the server has answered or closed every one of them (a socket turns readable), the trickling
        # ones included, a well-behaved client is answered each round.
        deadline = time.monotonic() + 60  # a bound on the wait: connections never cut off fail the test
        while len(select.select([*slow, idle], [], [], 0)[0]) < len(slow) + 1:
            assert time.monotonic() < deadline, "slow-header connections were never cut off"
            for sock in slow[:10]:
                with contextlib.suppress(OSError):
                    sock.sendall(b"X-Slow: 1\r\n")  # a trickle that never completes the head
            still_serving(server)
            time.sleep(0.2)  # the poll interval
        for sock in [*slow, idle]:
            sock.settimeout(10)
            answer = b""
            with contextlib.suppress(ConnectionResetError):
                while chunk := sock.recv(65536):
                    answer += chunk
            if answer:  # the client gets a 408 problem, then the connection closes
                assert tally.saw(status_of(answer)) == 408
                assert b"application/problem+json" in answer
            else:
                tally.saw(408)
    finally:
        for sock in [*slow, idle]:
            sock.close()
    still_serving(server)


def _websocket_handshake(server: ServerProcess) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    key = base64.b64encode(os.urandom(16))
    sock.sendall(
        b"GET /ws/hostile-raw HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


def _close_code(sock: socket.socket) -> int | None:
    """Read frames until a close frame arrives (its code) or the connection ends (``None``)."""
    sock.settimeout(10)
    data = b""
    with contextlib.suppress(ConnectionResetError, TimeoutError):
        while chunk := sock.recv(65536):
            data += chunk
    position = 0
    while position + 2 <= len(data):
        opcode, length = data[position] & 0x0F, data[position + 1] & 0x7F
        header = 2
        if length == 126:
            length, header = int.from_bytes(data[position + 2 : position + 4], "big"), 4
        elif length == 127:
            length, header = int.from_bytes(data[position + 2 : position + 10], "big"), 10
        payload = data[position + header : position + header + length]
        if opcode == 0x8:
            return int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
        position += header + length
    return None


@pytest.mark.parametrize(
    ("name", "frame", "expected"),
    [
        ("reserved opcode", b"\x83\x80" + b"\0\0\0\0", 1002),
        ("unmasked client frame", b"\x81\x05hello", 1002),
        ("reserved bits set", b"\xc1\x80" + b"\0\0\0\0", 1002),
        ("fragmented control frame", b"\x09\x80" + b"\0\0\0\0", 1002),
        ("invalid UTF-8 text", b"\x81\x82\0\0\0\0\xff\xfe", 1007),
    ],
)
def test_malformed_websocket_frames_close_the_connection(
    server: ServerProcess, tally: Tally, name: str, frame: bytes, expected: int
) -> None:
    sock = _websocket_handshake(server)
    try:
        sock.sendall(frame)
        code = _close_code(sock)
    finally:
        sock.close()
    tally.tried += 1
    assert code == expected, f"{name}: closed with {code}"
    still_serving(server)


def _next_until_closed(client: ClientConnection) -> None:
    """Read (and drop) messages until the server closes the connection; bounded by the receive timeout."""
    for _ in range(100):
        client.recv(timeout=10)


def test_an_oversized_websocket_message_closes_with_1009(
    server: ServerProcess, librarian: dict[str, str], tally: Tally
) -> None:
    url = f"ws://127.0.0.1:{server.port}/ws/hostile-big"
    with connect(url, additional_headers=librarian, open_timeout=10, max_size=None) as client:
        client.recv(timeout=10)  # welcome
        client.send("x" * (WS_MAX_SIZE * 4))
        with pytest.raises(ConnectionClosed) as closed:
            _next_until_closed(client)
    tally.tried += 1
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
    still_serving(server)


def test_path_traversal_reaches_nothing(
    server: ServerProcess, librarian: dict[str, str], book_id: int, tally: Tally
) -> None:
    uploads = Path(server.env["UPLOAD_DIR"])
    outside = server.directory / "evil.png"
    for path in (
        "/console/..%2f..%2fpyproject.toml",
        "/console/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        "/console/..\\..\\server.log",
        "/console/console.js%00.png",
        f"/api/v1/books/{book_id}/cover/..%2f..%2f..%2fserver.log",
    ):
        answer = httpx.get(server.base_url + path, timeout=10)
        assert 400 <= tally.saw(answer.status_code) < 500, path
    raw = raw_exchange(server, b"GET /console/../../server.log HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert 400 <= tally.saw(status_of(raw)) < 500
    for filename in ("../evil.png", "../../evil.png", "/tmp/evil.png", "..\\evil.png"):
        answer = httpx.put(
            f"{server.base_url}/api/v1/books/{book_id}/cover",
            files={"file": (filename, png(), "image/png")},
            headers=librarian,
            timeout=10,
        )
        tally.saw(answer.status_code)
        assert answer.status_code == 200  # stored under a name the service chooses, never the client's
        stored = [p for p in uploads.rglob("*") if p.is_file()]
        assert all(p.resolve().is_relative_to(uploads.resolve()) for p in stored)
        assert all("evil" not in p.name for p in stored)
    assert not outside.exists() and not Path("/tmp/evil.png").exists()
    assert len([p for p in uploads.rglob("*") if p.is_file()]) == 1, "earlier covers are replaced, not kept"
