"""The draining Uvicorn and its worker supervisor: replaced workers, start-up failures, apps without a coordinator."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import httpx
import psutil
import pytest
import uvicorn
from starlette.applications import Starlette

from library_api.app import create_app
from library_api.server.draining import STARTUP_FAILURE
from library_api.server.tls import find_shutdown
from library_api.server.uvicorn import DrainingServer
from tests.conftest import fast_settings
from tests.support.polling import wait_for
from tests.support.processes import ServerProcess


def worker_pids(pid: int) -> set[int]:
    """The supervisor's worker processes (its direct children that are Python, not multiprocessing helpers)."""
    found = set()
    for child in psutil.Process(pid).children():
        try:
            if "multiprocessing.spawn" in " ".join(child.cmdline()):
                found.add(child.pid)
        except psutil.Error:  # exited (or a zombie not yet reaped) since it was listed
            continue
    return found


@pytest.mark.e2e
@pytest.mark.timeout(240)  # four worker start-ups and a drain, each a fresh interpreter importing the service
async def test_a_killed_worker_is_replaced_and_the_rest_stop_cleanly(tmp_path: Path) -> None:
    server = ServerProcess(
        database_url=f"sqlite+aiosqlite:///{tmp_path}/workers.db", directory=tmp_path, args=("--workers", "2")
    ).launch()
    try:
        await asyncio.to_thread(server.wait_ready)
        await asyncio.to_thread(wait_for, lambda: len(worker_pids(server.process.pid)) == 2, 60, "two workers")
        # Both workers must have finished starting: a victim killed mid-start-up never logs its start-up.
        await asyncio.to_thread(
            wait_for, lambda: server.log_text().count("Application startup complete") == 2, 120, "both start-ups"
        )
        first = worker_pids(server.process.pid)
        victim = min(first)
        psutil.Process(victim).kill()
        await asyncio.to_thread(
            wait_for,
            lambda: len(worker_pids(server.process.pid) - first) == 1 and victim not in worker_pids(server.process.pid),
            60,
            "a replacement worker",
        )
        # the replacement has started serving once a third start-up has completed
        await asyncio.to_thread(
            wait_for, lambda: server.log_text().count("Application startup complete") == 3, 120, "the replacement"
        )
        async with httpx.AsyncClient(base_url=server.base_url) as client:
            assert (await client.get("/health")).status_code == 200
        assert f"worker process {victim} died" in server.log_text()
    finally:
        exit_code = await asyncio.to_thread(server.stop, signal.SIGTERM, 120)
    assert exit_code == 0, server.log_text()
    log = server.log_text()
    assert "received SIGTERM; passing SIGTERM to 2 worker(s)" in log
    assert log.count("Application shutdown complete") >= 2
    assert "all worker processes stopped" in log


@pytest.mark.e2e
@pytest.mark.timeout(180)  # two worker start-ups that fail, and the supervisor's wait for both
async def test_workers_that_cannot_start_stop_the_supervisor(tmp_path: Path) -> None:
    # The database "file" is a directory: every worker's start-up (its migration) fails the same way.
    server = ServerProcess(
        database_url=f"sqlite+aiosqlite:///{tmp_path}", directory=tmp_path, args=("--workers", "2")
    ).launch()
    exit_code = await asyncio.to_thread(server.process.wait, 120)
    assert exit_code == STARTUP_FAILURE, server.log_text()
    assert "failed to start; stopping" in server.log_text()


async def test_an_application_without_a_coordinator_stops_at_once() -> None:
    server = DrainingServer(uvicorn.Config(Starlette(), log_config=None))
    server.config.load()
    assert find_shutdown(server.config.loaded_app) is None
    server.handle_exit(signal.SIGTERM, None)
    await server.on_tick(0)
    assert server.should_exit


async def test_the_coordinator_is_found_through_wrapping_layers(tmp_path: Path) -> None:
    app = create_app(fast_settings(database_url=f"sqlite+aiosqlite:///{tmp_path}/wrapped.db", upload_dir=tmp_path))

    class Wrapper:
        def __init__(self, inner: object) -> None:
            self.app = inner

    assert find_shutdown(Wrapper(Wrapper(app))) is app.state.context.shutdown
    assert find_shutdown(object()) is None
