"""The adapters' own signal handling: the first SIGTERM drains WebSocket clients, a second signal forces the end.

Run for the single-process Uvicorn adapter (``DrainingServer``) and the Hypercorn adapter's serving loop, over
mTLS so that the drain is exercised on TLS connections as well.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path

import httpx
import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from tests.support.certs import PKI
from tests.support.processes import ServerProcess

pytestmark = pytest.mark.e2e


async def read_until_closed(socket: websockets.ClientConnection) -> None:
    """Read until the server closes the connection (raises ``ConnectionClosed``); 20 s without a message fail."""
    while True:
        await asyncio.wait_for(socket.recv(), 20)


@pytest.mark.parametrize("server", ["uvicorn", "hypercorn"])
async def test_sigterm_drains_and_a_second_signal_forces_the_close(pki: PKI, tmp_path: Path, server: str) -> None:
    args = ("--cert", str(pki.cert("server")), "--key", str(pki.key("server")), "--ca", str(pki.ca))
    process = ServerProcess(
        database_url=f"sqlite+aiosqlite:///{tmp_path}/library.db",
        directory=tmp_path,
        args=(*args, "--server", server),
        env={"SHUTDOWN_TIMEOUT": "120", "SHUTDOWN_PROGRESS_INTERVAL": "1"},
        scheme="https",
    ).launch()
    context = pki.client_context("librarian")
    try:
        await asyncio.to_thread(process.wait_ready, verify=context)
        url = process.base_url.replace("https://", "wss://") + "/ws/drained"
        async with websockets.connect(url, ssl=context, open_timeout=10) as socket:
            assert json.loads(await asyncio.wait_for(socket.recv(), 10))["type"] == "welcome"
            process.process.send_signal(signal.SIGTERM)
            async with httpx.AsyncClient(base_url=process.base_url, verify=context, timeout=5) as http:
                deadline = time.monotonic() + 10
                while (await http.get("/health/ready")).status_code != 503:
                    assert time.monotonic() < deadline, "readiness never turned 503"
                    await asyncio.sleep(0.05)
            notice = None
            while notice is None or notice["type"] != "shutdown":
                notice = json.loads(await asyncio.wait_for(socket.recv(), 10))
            assert process.process.poll() is None  # still draining: the client has not left
            process.process.send_signal(signal.SIGINT)
            with pytest.raises(ConnectionClosed):
                await read_until_closed(socket)
            assert socket.close_code == 1001
        # SHUTDOWN_TIMEOUT is 120 s: an exit within the wait's bound is the second signal's doing, as the log says.
        code = await asyncio.to_thread(process.process.wait, 30)
        assert code == 0
    finally:
        await asyncio.to_thread(process.stop)
    assert "forced by a second signal" in process.log_text()
