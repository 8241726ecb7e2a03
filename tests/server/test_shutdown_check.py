"""``library-api client shutdown-test`` against a real server process, as an operator runs it.

The server runs with a short ``SHUTDOWN_TIMEOUT`` so that the clients that stay are closed with 1001 within
the test; the command signals the server itself (``--pid``) or asks the operator, who here is the test.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect

from tests.support.polling import wait_for
from tests.support.processes import ServerProcess

pytestmark = pytest.mark.e2e

PASSWORD = "correct horse battery staple 42"


@pytest.fixture
def server(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[ServerProcess]:
    args: tuple[str, ...] = getattr(request, "param", ())
    env = {"SHUTDOWN_TIMEOUT": "3", "SHUTDOWN_PROGRESS_INTERVAL": "1"}
    started = ServerProcess(
        database_url=f"sqlite+aiosqlite:///{tmp_path}/library.db", directory=tmp_path, args=args, env=env
    ).launch()
    try:
        started.wait_ready()
        yield started
    finally:
        started.stop()


def register(server: ServerProcess, email: str) -> str:
    """A reader account; its access token."""
    with httpx.Client(base_url=server.base_url, timeout=10) as http:
        created = http.post(
            "/api/v1/auth/register", json={"email": email, "password": PASSWORD, "full_name": "Shutdown Check"}
        )
        assert created.status_code == 201, created.text
        login = http.post("/api/v1/auth/login", data={"username": email, "password": PASSWORD})
        return str(login.json()["access_token"])


async def run_check(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "library_api", "client", "shutdown-test", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip


async def test_the_check_signals_the_server_and_reports_who_left_and_who_was_closed(server: ServerProcess) -> None:
    register(server, "operator@example.org")
    check = await run_check(
        "--url", server.base_url, "--email", "operator@example.org", "--password", PASSWORD,
        "--clients", "4", "--leave", "2", "--pid", str(server.process.pid), "--wait", "60",
    )  # fmt: skip
    out, err = (part.decode() for part in await asyncio.wait_for(check.communicate(), timeout=90))
    assert check.returncode == 0, out + err
    assert "4 client(s) connected" in out
    assert f"sent SIGTERM to process {server.process.pid}" in out
    assert "4 of 4 told to leave; 2 left; 2 closed with 1001" in out
    assert out.count(", left at +") == 2
    assert out.count(", closed 1001 at +") == 2
    assert "new connection during the drain: refused" in out
    assert "server: stopped at +" in out
    assert out.rstrip().endswith("PASS: a graceful shutdown")
    assert server.process.wait(timeout=30) == 0
    assert "shutdown started: 4 connection(s) open" in server.log_text()


@pytest.mark.parametrize("server", [("--server", "hypercorn")], indirect=True)
async def test_the_check_asks_the_operator_and_sees_the_port_close(server: ServerProcess) -> None:
    token = register(server, "asked@example.org")
    check = await run_check("--url", server.base_url, "--token", token, "--clients", "2", "--wait", "60")
    assert check.stdout is not None
    while b"now send SIGTERM to the server" not in (line := await asyncio.wait_for(check.stdout.readline(), 30)):
        assert line, "the check ended before asking for the signal"
    server.process.send_signal(signal.SIGTERM)
    out, err = (part.decode() for part in await asyncio.wait_for(check.communicate(), timeout=90))
    assert check.returncode == 0, out + err
    assert "2 of 2 told to leave; 1 left; 1 closed with 1001" in out
    assert "PASS: a graceful shutdown" in out


async def test_a_server_that_is_not_signalled_fails_the_check_and_health_counts_its_clients(
    server: ServerProcess,
) -> None:
    token = register(server, "idle@example.org")
    url = server.base_url.replace("http", "ws", 1)
    async with connect(f"{url}/ws/watcher", additional_headers={"Authorization": f"Bearer {token}"}) as watcher:
        await watcher.recv()
        health = httpx.get(f"{server.base_url}/health", timeout=5).json()  # noqa: ASYNC210 - the server is another process
        assert health["connections"] == 1
        assert health["service"] == "Library API"
    wait_for(lambda: httpx.get(f"{server.base_url}/health", timeout=5).json()["connections"] == 0, 10, "the close")
    check = await run_check("--url", server.base_url, "--token", token, "--clients", "1", "--wait", "2")
    out, _ = (part.decode() for part in await asyncio.wait_for(check.communicate(), timeout=30))
    assert check.returncode == 1
    assert "0 of 1 told to leave" in out
    assert "no shutdown message, still open" in out
    assert "server: did not stop" in out
    assert out.rstrip().endswith("FAIL: see the lines above")
    bad = await run_check("--url", server.base_url, "--signal", "KILL")
    _, bad_err = await asyncio.wait_for(bad.communicate(), timeout=30)
    assert bad.returncode == 2
    assert "--signal: TERM or INT" in bad_err.decode()
