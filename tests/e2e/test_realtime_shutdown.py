"""Graceful shutdown with WebSocket clients, for real: a server process, 50 clients, SIGTERM and SIGINT.

The server is Uvicorn with the hook the server adapters install (``tests/support/drain_server.py``): the
first signal drains the application, then Uvicorn shuts down. What is asserted here is the application's
half: readiness, refusal of newcomers, the ``shutdown`` message, progress logs, leaving clients, 1001 at the
deadline, HTTP served throughout, exit code 0.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from library_api.app import build_context
from library_api.context import AppContext
from library_api.db.engine import create_database
from library_api.security.permissions import Role
from tests.conftest import fast_settings
from tests.support.factories import bearer, create_user, token_for
from tests.support.live import receive, receive_until
from tests.support.processes import TEST_ENVIRONMENT, ServerProcess
from tests.support.services import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.parametrize("backend", ["sqlite"], indirect=True)]

REPO = Path(__file__).resolve().parents[2]
TIMEOUT = 6
INTERVAL = 1
PROGRESS = re.compile(r"shutdown progress: (\d+) connection\(s\) open, (\d+) s elapsed, (\d+) s left")


@pytest_asyncio.fixture
async def ctx(committed_url: str, tmp_path: Path) -> AsyncIterator[AppContext]:
    settings = fast_settings(database_url=committed_url, upload_dir=tmp_path)
    database = create_database(settings)
    yield build_context(settings, database)
    await database.dispose()


@pytest.fixture
def server(committed_url: str, tmp_path: Path) -> Iterator[ServerProcess]:
    port = free_port()
    env = {
        **os.environ,
        **TEST_ENVIRONMENT,
        "DATABASE_URL": committed_url,
        "UPLOAD_DIR": str(tmp_path / "up"),
        "SHUTDOWN_TIMEOUT": str(TIMEOUT),
        "SHUTDOWN_PROGRESS_INTERVAL": str(INTERVAL),
        "BROADCAST_INTERVAL": "0",
        "LOG_FORMAT": "console",
    }
    env.pop("LIBRARY_API_OVERRIDES", None)
    env.pop("REDIS_URL", None)
    log_path = tmp_path / "server.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.support.drain_server", str(port)],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    running = ServerProcess(process=process, base_url=f"http://127.0.0.1:{port}", log_path=log_path)
    try:
        running.wait_ready(timeout=90)
        yield running
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def ws_url(server: ServerProcess, client_id: str) -> str:
    return server.base_url.replace("http://", "ws://") + f"/ws/{client_id}"


async def close_of(client: ClientConnection, within: float) -> tuple[int | None, str | None, float]:
    """Wait for the server to close ``client``: code, reason and the monotonic time it happened."""
    deadline = time.monotonic() + within
    try:
        while time.monotonic() < deadline:
            await asyncio.wait_for(client.recv(), timeout=max(deadline - time.monotonic(), 0.01))
    except ConnectionClosed:
        return client.close_code, client.close_reason, time.monotonic()
    raise AssertionError(f"not closed within {within} s")


async def test_sigterm_drains_fifty_clients_then_exits_cleanly(server: ServerProcess, ctx: AppContext) -> None:
    token = token_for(ctx, await create_user(ctx, Role.READER))
    clients = [
        await connect(ws_url(server, f"client-{n}"), additional_headers=bearer(token), open_timeout=30)
        for n in range(50)
    ]
    for client in clients:
        assert (await receive(client))["type"] == "welcome"

    signalled = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as http:
        ready = await http.get("/health/ready")
        for _ in range(100):
            if ready.status_code == 503:
                break
            await asyncio.sleep(0.02)
            ready = await http.get("/health/ready")
        assert ready.status_code == 503
        assert ready.json()["checks"]["shutdown"] == "draining"

        notices = await asyncio.gather(*(receive_until(c, lambda m: m["type"] == "shutdown") for c in clients))
        for notice in notices:
            assert notice["topic"] == "system"
            assert 0 < notice["data"]["seconds_left"] <= TIMEOUT
            assert notice["data"]["deadline"].endswith("+00:00")

        async with connect(ws_url(server, "latecomer"), additional_headers=bearer(token)) as latecomer:
            code, reason, _ = await close_of(latecomer, within=5)
        assert (code, reason) == (1001, "server shutting down; reconnect later")

        # In-flight and new HTTP requests are still served while the clients leave.
        assert (await http.get("/api/v1/books")).status_code == 200

        await asyncio.sleep(1.6 * INTERVAL)
        leaving, staying = clients[:20], clients[20:]
        await asyncio.gather(*(client.close() for client in leaving))

        closes = await asyncio.gather(*(close_of(client, within=TIMEOUT + 10) for client in staying))
    for code, reason, at in closes:
        assert (code, reason) == (1001, "server shutting down; reconnect later")
        assert TIMEOUT - 1 <= at - signalled <= TIMEOUT + 4, at - signalled

    exit_code = await asyncio.to_thread(server.process.wait, 30)
    assert exit_code == 0, server.log()
    log = server.log()
    assert "shutdown started: 50 connection(s) open, waiting up to 6 s for them to leave" in log
    progress = [tuple(map(int, match.groups())) for match in PROGRESS.finditer(log)]
    assert len(progress) >= TIMEOUT // INTERVAL - 2, log
    assert progress[0][0] == 50
    assert progress[-1][0] == 30
    assert [elapsed for _, elapsed, _ in progress] == sorted({elapsed for _, elapsed, _ in progress})
    for _, elapsed, left in progress:
        assert elapsed + left == pytest.approx(TIMEOUT, abs=1)
    assert "shutdown: closing 30 remaining connection(s) (timeout reached)" in log
    assert "Application shutdown complete" in log


async def test_a_second_sigint_closes_everyone_at_once(server: ServerProcess, ctx: AppContext) -> None:
    token = token_for(ctx, await create_user(ctx, Role.READER))
    clients = [await connect(ws_url(server, f"impatient-{n}"), additional_headers=bearer(token)) for n in range(5)]
    for client in clients:
        await receive(client)
    server.process.send_signal(signal.SIGINT)
    for client in clients:
        await receive_until(client, lambda m: m["type"] == "shutdown")
    forced = time.monotonic()
    server.process.send_signal(signal.SIGINT)
    closes = await asyncio.gather(*(close_of(client, within=5) for client in clients))
    for code, _, at in closes:
        assert code == 1001
        assert at - forced < 2
    assert await asyncio.to_thread(server.process.wait, 30) == 0
    assert "shutdown: closing 5 remaining connection(s) (forced by a second signal)" in server.log()
