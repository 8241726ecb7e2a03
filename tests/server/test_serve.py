"""``library-api serve`` as a real process: it answers on loopback and stops cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from tests.support.processes import ServerProcess


@pytest.mark.e2e
async def test_single_worker_serves_and_stops_on_sigterm(tmp_path: Path) -> None:
    server = ServerProcess(
        database_url=f"sqlite+aiosqlite:///{tmp_path}/serve.db",
        directory=tmp_path,
        env={"SEED_SAMPLE_ON_EMPTY": "true"},
    ).launch()
    try:
        await asyncio.to_thread(server.wait_ready)
        async with httpx.AsyncClient(base_url=server.base_url) as client:
            books = (await client.get("/api/v1/books", params={"q": "the"})).json()
            assert books["total"] > 0
            assert (await client.get("/health")).json()["status"] == "ok"
    finally:
        await asyncio.to_thread(server.stop)
    assert "loaded the sample catalogue" in server.log_text()
    assert "Application shutdown complete" in server.log_text()


@pytest.mark.e2e
async def test_reload_mode_serves_and_stops_on_sigterm(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()  # the directory the reloader watches, relative to the working directory
    server = ServerProcess(
        database_url=f"sqlite+aiosqlite:///{tmp_path}/reload.db", directory=tmp_path, args=("--reload",)
    ).launch()
    try:
        await asyncio.to_thread(server.wait_ready)
        async with httpx.AsyncClient(base_url=server.base_url) as client:
            assert (await client.get("/health")).json()["status"] == "ok"
    finally:
        exit_code = await asyncio.to_thread(server.stop)
    assert exit_code == 0, server.log_text()
    assert "with reload" in server.log_text()


@pytest.mark.e2e
@pytest.mark.parametrize(("event_loop", "uvloop_loaded"), [(None, True), ("asyncio", False), ("uvloop", True)])
async def test_the_event_loop_is_uvloop_where_installed_unless_asyncio_is_asked_for(
    tmp_path: Path, event_loop: str | None, uvloop_loaded: bool
) -> None:
    env = {} if event_loop is None else {"EVENT_LOOP": event_loop}
    server = ServerProcess(database_url=f"sqlite+aiosqlite:///{tmp_path}/loop.db", directory=tmp_path, env=env).launch()
    try:
        await asyncio.to_thread(server.wait_ready)
        async with httpx.AsyncClient(base_url=server.base_url) as client:
            assert (await client.get("/health")).status_code == 200
        mapped = await asyncio.to_thread(Path(f"/proc/{server.process.pid}/maps").read_text)
    finally:
        await asyncio.to_thread(server.stop)
    assert ("uvloop/loop." in mapped) is uvloop_loaded
