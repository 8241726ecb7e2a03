"""Graceful shutdown with WebSocket clients, for real: ``library-api serve``, 50 clients, SIGTERM and SIGINT.

The server is the service's own command, with one worker and with two (the supervisor of
``library_api.server.draining`` passes the signal on to each worker). Asserted: readiness turns 503, newcomers
are refused, every client gets the ``shutdown`` message, progress logs at the interval, leaving clients reduce
the count, the rest are closed with 1001 at the deadline, a slow HTTP request started before the signal
completes with 200, and the process exits 0.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect

from library_api.dependencies.context import AppContext
from library_api.security.permissions import Role
from tests.support.factories import PASSWORD, bearer, create_user, token_for
from tests.support.live import closed_with, receive, receive_until
from tests.support.polling import WaitTimeout, wait_until
from tests.support.processes import ServerProcess

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.parametrize("backend", ["sqlite"], indirect=True),
    pytest.mark.children_unmeasured,
]

TIMEOUT = 6
INTERVAL = 1
PROGRESS = re.compile(r"shutdown progress: (\d+) connection\(s\) open, (\d+) s elapsed, (\d+) s left")
ACCEPTED = re.compile(r'"WebSocket /ws/client-(\d+)" \[accepted\]')
STARTED = re.compile(r"shutdown started: (\d+) connection\(s\) open, waiting up to 6 s for them to leave")
CLOSING = re.compile(
    r"shutdown: closing (\d+) remaining connection\(s\) \((timeout reached|forced by a second signal)\)"
)


@pytest.fixture
def ctx(committed_ctx: AppContext) -> AppContext:
    """The services wired against this test's committed database (``committed_ctx``)."""
    return committed_ctx


LAYOUTS = [("uvicorn", 1), ("uvicorn", 2), ("gunicorn", 2)]
"""Server and worker count of each run: Uvicorn alone, the Uvicorn supervisor, and Gunicorn's arbiter."""


@pytest.fixture(params=LAYOUTS, ids=["uvicorn-1", "uvicorn-2", "gunicorn-2"])
def layout(request: pytest.FixtureRequest) -> tuple[str, int]:
    server_name, count = request.param
    return str(server_name), int(count)


@pytest.fixture
def workers(layout: tuple[str, int]) -> int:
    return layout[1]


@pytest.fixture
def shutdown_timeout() -> int:
    """``SHUTDOWN_TIMEOUT`` of the server; a test that must not reach it parametrises a longer one."""
    return TIMEOUT


@pytest.fixture
def server(
    committed_url: str, tmp_path: Path, layout: tuple[str, int], shutdown_timeout: int
) -> Iterator[ServerProcess]:
    server_name, workers = layout
    running = ServerProcess(
        database_url=committed_url,
        directory=tmp_path,
        args=("--server", server_name, "--workers", str(workers)),
        env={
            "SHUTDOWN_TIMEOUT": str(shutdown_timeout),
            "SHUTDOWN_PROGRESS_INTERVAL": str(INTERVAL),
            "BROADCAST_INTERVAL": "0",
            "LOG_FORMAT": "json",
            "WS_MAX_CONNECTIONS_PER_PRINCIPAL": "100",  # one reader holds the fifty clients of the drain test
        },
    ).launch()
    try:
        running.wait_ready(timeout=90)
        running.wait_for_log("Application startup complete", count=workers, timeout=120)
        yield running
    finally:
        if running.process.poll() is None:
            running.process.kill()
            running.process.wait()


def records(server: ServerProcess) -> list[dict[str, object]]:
    """The server's JSON log lines, parsed; lines that are not JSON (there should be none) are skipped."""
    parsed = []
    for line in server.log_text().splitlines():
        if line.startswith("{"):
            parsed.append(json.loads(line))
    return parsed


def messages_by_worker(server: ServerProcess) -> dict[int, list[str]]:
    """Each process's log messages in order, keyed by its pid."""
    found: dict[int, list[str]] = defaultdict(list)
    for record in records(server):
        found[int(str(record["pid"]))].append(str(record["message"]))
    return found


async def test_sigterm_drains_fifty_clients_then_exits_cleanly(
    server: ServerProcess, ctx: AppContext, workers: int
) -> None:
    user = await create_user(ctx, Role.READER)
    token = token_for(ctx, user)
    clients = [
        await connect(server.ws_url(f"client-{n}"), additional_headers=bearer(token), open_timeout=30)
        for n in range(50)
    ]
    for client in clients:
        assert (await receive(client))["type"] == "welcome"

    # A slow client: the request line, headers and half the body are on the wire before the signal.
    body = f"username={user.email}&password={PASSWORD}".encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", int(server.base_url.rsplit(":", 1)[1]))
    writer.write(
        b"POST /api/v1/auth/login HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body[:10]
    )
    await writer.drain()
    server.process.send_signal(signal.SIGTERM)
    async with httpx.AsyncClient(
        base_url=server.base_url, timeout=10, limits=httpx.Limits(max_keepalive_connections=0)
    ) as http:
        for _ in range(10 * workers):
            ready = await http.get("/health/ready")
            deadline = time.monotonic() + 30  # a bound on the wait, not a timing
            while ready.status_code != 503 and time.monotonic() < deadline:
                ready = await http.get("/health/ready")
            assert ready.status_code == 503
            assert ready.json()["checks"]["shutdown"] == "draining"

        notices = await asyncio.gather(*(receive_until(c, lambda m: m["type"] == "shutdown") for c in clients))
        for notice in notices:
            assert notice["topic"] == "system"
            assert 0 < notice["data"]["seconds_left"] <= TIMEOUT
            assert notice["data"]["deadline"].endswith("+00:00")

        writer.write(body[10:])
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), timeout=10)
        writer.close()
        assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
        assert b'"token_type":"bearer"' in answer.replace(b" ", b"")

        for attempt in range(2 * workers):
            async with connect(server.ws_url(f"latecomer-{attempt}"), additional_headers=bearer(token)) as late:
                code, reason = await closed_with(late, within=5)
            assert (code, reason) == (1001, "server shutting down; reconnect later")

        # New HTTP requests are still served while the clients leave.
        assert (await http.get("/api/v1/books")).status_code == 200

        await wait_for_progress(server, INTERVAL * 2 + 1)
        leaving, staying = clients[:20], clients[20:]
        await asyncio.gather(*(client.close() for client in leaving))

        closes = await asyncio.gather(*(closed_with(client, within=TIMEOUT + 10) for client in staying))
    # Closed by the deadline, not before: each worker logs that it closes the rest because the timeout was reached.
    assert set(closes) == {(1001, "server shutting down; reconnect later")}

    exit_code = await asyncio.to_thread(server.process.wait, 30)
    assert exit_code == 0, server.log_text()
    by_worker = {
        pid: lines for pid, lines in messages_by_worker(server).items() if any(STARTED.search(m) for m in lines)
    }
    assert len(by_worker) == workers, server.log_text()
    started = closing = 0
    for lines in by_worker.values():
        text = "\n".join(lines)
        assert "Application shutdown complete" in text
        opened = opened_at_signal(lines)
        started += opened
        if not opened:  # the kernel gave every client to the other worker: nothing to wait for here
            continue
        progress = [tuple(map(int, match.groups())) for match in PROGRESS.finditer(text)]
        assert progress[0][0] == opened, text
        accepted = accepted_clients(text)
        if accepted and all(number < len(leaving) for number in accepted):
            # every client of this worker was among those that left: its drain ended as soon as they had gone
            assert not CLOSING.search(text), text
            continue
        # In order; two ticks may round to the same second when the loop is late on a loaded machine.
        assert [elapsed for _, elapsed, _ in progress] == sorted(elapsed for _, elapsed, _ in progress)
        for _, elapsed, left in progress:
            # One reading of the clock, each part rounded to a whole second for the log: they add up to the timeout.
            assert elapsed + left in (TIMEOUT - 1, TIMEOUT, TIMEOUT + 1)
        closed = [int(match.group(1)) for match in CLOSING.finditer(text)]
        assert all(match.group(2) == "timeout reached" for match in CLOSING.finditer(text))
        closing += sum(closed)
        assert progress[-1][0] == sum(closed)
    assert (started, closing) == (50, 30)


def accepted_clients(text: str) -> list[int]:
    """The numbers of the ``client-N`` WebSocket connections a worker accepted."""
    return [int(number) for number in ACCEPTED.findall(text)]


def opened_at_signal(lines: list[str]) -> int:
    """How many connections a worker had when its drain started (0 when it logged no drain)."""
    for line in lines:
        match = STARTED.search(line)
        if match:
            return int(match.group(1))
    return 0


async def wait_for_progress(server: ServerProcess, within: float) -> None:
    """Wait until every worker that had clients at the signal has logged at least one progress line."""

    def progressed() -> bool:
        draining = [lines for lines in messages_by_worker(server).values() if opened_at_signal(lines)]
        return bool(draining) and all(any(PROGRESS.search(m) for m in lines) for lines in draining)

    try:
        await wait_until(progressed, within=within + 5, what="a progress line of every draining worker", interval=0.05)
    except WaitTimeout:
        raise AssertionError(f"no progress line within {within} s:\n{server.log_text()}") from None


# Gunicorn's arbiter treats SIGINT as a quick shutdown of its own; a second SIGINT is the Uvicorn adapters' feature.
# The drain would last ten minutes: everyone closed within the wait below is the second signal's doing.
@pytest.mark.parametrize("shutdown_timeout", [600])
@pytest.mark.parametrize("layout", LAYOUTS[:2], ids=["uvicorn-1", "uvicorn-2"], indirect=True)
async def test_a_second_sigint_closes_everyone_at_once(server: ServerProcess, ctx: AppContext) -> None:
    token = token_for(ctx, await create_user(ctx, Role.READER))
    clients = [await connect(server.ws_url(f"impatient-{n}"), additional_headers=bearer(token)) for n in range(6)]
    for client in clients:
        await receive(client)
    server.process.send_signal(signal.SIGINT)
    for client in clients:
        await receive_until(client, lambda m: m["type"] == "shutdown")
    server.process.send_signal(signal.SIGINT)
    closes = await asyncio.gather(*(closed_with(client, within=30) for client in clients))
    assert {code for code, _ in closes} == {1001}
    assert await asyncio.to_thread(server.process.wait, 30) == 0
    reasons = [match.group(2) for match in CLOSING.finditer(server.log_text())]
    assert reasons and set(reasons) == {"forced by a second signal"}
    assert sum(int(match.group(1)) for match in CLOSING.finditer(server.log_text())) == 6
