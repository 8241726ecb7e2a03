"""The live console across a real service restart: it resumes with its position's epoch and shows the ``resync``."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import uvicorn
from fastapi import FastAPI
from playwright.async_api import WebSocket, async_playwright, expect

from library_api.app import create_app
from library_api.dependencies.context import AppContext
from library_api.security.permissions import Role
from tests.conftest import fast_settings
from tests.support.factories import PASSWORD, create_book, create_user
from tests.support.live import QuietServer
from tests.support.polling import wait_until
from tests.support.ports import listening_socket, port_of
from tests.support.services import unavailable
from tests.web.test_console import ARGS, CHROMIUM

pytestmark = [pytest.mark.e2e, pytest.mark.parametrize("backend", ["sqlite"], indirect=True)]


@contextlib.asynccontextmanager
async def serve_on(app: FastAPI, listener: socket.socket) -> AsyncIterator[None]:
    """Run ``app`` on ``listener`` (the same port again after a restart, as a restarted service would be).

    The server gets a copy of the socket and closes it when it stops; the test's copy keeps the port bound and
    listening between the two lives, so no one else can take it (connections made meanwhile wait in its queue).
    """
    config = uvicorn.Config(app, log_config=None, lifespan="on")
    server = QuietServer(config)
    task = asyncio.create_task(server.serve(sockets=[listener.dup()]))
    await wait_until(lambda: server.started or task.done(), within=15, what="the server to start")
    if task.done():
        task.result()
    try:
        yield
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, timeout=30)


async def test_the_console_resyncs_after_the_service_restarts(committed_url: str, tmp_path: Path) -> None:
    if shutil.which(CHROMIUM) is None:
        unavailable(f"Chromium is not installed at {CHROMIUM} (apt-get install chromium)")
    listener = listening_socket()
    port = port_of(listener)

    def app() -> FastAPI:
        return create_app(fast_settings(database_url=committed_url, upload_dir=tmp_path, broadcast_interval=0))

    sent: list[dict[str, Any]] = []

    def watch(socket: WebSocket) -> None:
        socket.on("framesent", lambda payload: sent.append(orjson.loads(payload)))

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = await (await browser.new_context()).new_page()
            page.on("websocket", watch)
            first = app()
            async with serve_on(first, listener):
                ctx: AppContext = first.state.context
                reader = await create_user(ctx, Role.READER)
                await page.goto(f"http://127.0.0.1:{port}/")
                await expect(page.locator("body")).to_have_attribute("data-ready", "true")
                await page.fill("#email", reader.email)
                await page.fill("#password", PASSWORD)
                await page.click("#login-button")
                await expect(page.get_by_test_id("who")).to_contain_text("Logged in as")
                await page.click("#connect-button")
                await expect(page.get_by_test_id("state")).to_have_attribute("data-state", "connected")
                await page.fill("#topic", "books")
                await page.click("#subscribe-button")
                await expect(page.get_by_test_id("subscriptions").locator("li[data-topic=books]")).to_be_visible()
                for n in range(3):
                    await create_book(ctx, title=f"first life {n}")
                feed = page.get_by_test_id("feed").locator("li[data-type='book.created']")
                await expect(feed).to_have_count(3)

            second = app()
            async with serve_on(second, listener):
                ctx = second.state.context
                for n in range(5):
                    await create_book(ctx, title=f"second life {n}")
                await expect(page.get_by_test_id("state")).to_have_attribute("data-state", "connected", timeout=20_000)
                await expect(page.get_by_test_id("resyncs")).to_have_text("1")
                await expect(page.get_by_test_id("banner")).to_contain_text("reload what you show")
                await create_book(ctx, title="after the restart")
                await expect(feed.filter(has_text="after the restart")).to_have_count(1)
            # The first life's books and the live one; never the second life's as a "replay" of id 4 onwards.
            await expect(feed).to_have_count(4)
        finally:
            await browser.close()
            listener.close()

    resumes = [m for m in sent if m.get("type") == "subscribe" and m.get("last_event_id") is not None]
    assert resumes, sent
    assert resumes[0]["last_event_id"] == 3
    assert isinstance(resumes[0]["last_event_epoch"], str)
