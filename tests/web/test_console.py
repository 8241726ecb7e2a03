"""The live console in real headless Chromium (Debian's, driven by Playwright), against a live server."""

from __future__ import annotations

import shutil
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
from playwright.async_api import Browser, ConsoleMessage, Page, async_playwright, expect

from library_api.app import create_app
from library_api.dependencies.context import AppContext
from library_api.security.permissions import Role
from tests.conftest import fast_settings
from tests.support.factories import PASSWORD, bearer, create_user, token_for, unique_isbn
from tests.support.live import Live, serve_in_loop
from tests.support.polling import wait_until
from tests.support.services import unavailable

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

pytestmark = [pytest.mark.e2e, pytest.mark.parametrize("backend", ["sqlite"], indirect=True)]


@pytest_asyncio.fixture
async def browser() -> AsyncIterator[Browser]:
    if shutil.which(CHROMIUM) is None:
        unavailable(f"Chromium is not installed at {CHROMIUM} (apt-get install chromium)")
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield launched
        await launched.close()


@pytest_asyncio.fixture
async def served(committed_url: str, tmp_path: Path) -> AsyncIterator[tuple[Live, AppContext]]:
    async with AsyncExitStack() as stack:
        app = create_app(fast_settings(database_url=committed_url, upload_dir=tmp_path, broadcast_interval=0.5))
        live = await stack.enter_async_context(serve_in_loop(app))
        yield live, app.state.context


async def open_console(browser: Browser, live: Live, errors: list[str]) -> Page:
    page = await (await browser.new_context()).new_page()

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            errors.append(message.text)

    page.on("console", on_console)
    page.on("pageerror", lambda error: errors.append(str(error)))
    response = await page.goto(live.http + "/")
    assert response is not None
    assert "script-src 'self'" in (response.headers.get("content-security-policy") or "")
    await expect(page.locator("body")).to_have_attribute("data-ready", "true")
    return page


async def log_in(page: Page, email: str) -> None:
    await page.fill("#email", email)
    await page.fill("#password", PASSWORD)
    await page.click("#login-button")
    await expect(page.get_by_test_id("who")).to_contain_text(f"Logged in as {email}")


async def test_librarian_logs_in_connects_follows_books_and_broadcasts(
    browser: Browser, served: tuple[Live, AppContext]
) -> None:
    live, ctx = served
    librarian = await create_user(ctx, Role.LIBRARIAN)
    errors: list[str] = []
    page = await open_console(browser, live, errors)
    await expect(page.get_by_test_id("state")).to_have_text("disconnected")
    await expect(page.locator("#broadcast-panel")).to_be_hidden()

    await log_in(page, librarian.email)
    await expect(page.locator("#broadcast-panel")).to_be_visible()
    await page.fill("#client-id", "console-librarian")
    await page.click("#connect-button")
    await expect(page.get_by_test_id("state")).to_have_attribute("data-state", "connected")
    await expect(page.get_by_test_id("state")).to_contain_text("console-librarian on worker")
    await page.fill("#topic", "books")
    await page.click("#subscribe-button")
    await expect(page.get_by_test_id("subscriptions").locator("li[data-topic=books]")).to_contain_text("books")

    async with httpx.AsyncClient(base_url=live.http, headers=bearer(token_for(ctx, librarian))) as http:
        created = await http.post(
            "/api/v1/books", json={"isbn": unique_isbn(), "title": "Seen in Chromium", "authors": ["A"], "copies": 1}
        )
    assert created.status_code == 201
    event = page.get_by_test_id("feed").locator("li[data-type='book.created']")
    await expect(event).to_contain_text("Seen in Chromium")
    await expect(event).to_contain_text("books #1")
    await expect(page.get_by_test_id("feed").locator("li[data-type=heartbeat]").first).to_contain_text("connections")

    await page.fill("#broadcast-message", "The reading room closes at six")
    await page.click("#broadcast-button")
    await expect(page.get_by_test_id("broadcast-result")).to_have_text("Sent to broadcast as #1.")
    await expect(page.get_by_test_id("feed").locator("li[data-type=broadcast]")).to_contain_text("closes at six")
    await expect(page.get_by_test_id("received")).not_to_have_text("0")
    assert errors == []


async def test_reader_sees_no_broadcast_form_and_follows_the_server_through_a_shutdown(
    browser: Browser, served: tuple[Live, AppContext]
) -> None:
    live, ctx = served
    reader = await create_user(ctx, Role.READER)
    errors: list[str] = []
    page = await open_console(browser, live, errors)
    await log_in(page, reader.email)
    await expect(page.locator("#broadcast-panel")).to_be_hidden()
    await page.click("#connect-button")
    await expect(page.get_by_test_id("state")).to_have_attribute("data-state", "connected")

    await ctx.hub.begin_drain(time.time() + 30)
    await expect(page.get_by_test_id("state")).to_have_attribute("data-state", "draining")
    await expect(page.get_by_test_id("banner")).to_contain_text("The server is shutting down")
    await ctx.hub.close_remaining()
    await expect(page.get_by_test_id("state")).to_contain_text("closed 1001 server shutting down")
    await expect(page.get_by_test_id("state")).to_have_attribute("data-state", "reconnecting")
    await wait_until(lambda: ctx.hub.connections_refused >= 1, within=15, what="the page to try again")
    await expect(page.get_by_test_id("reconnects")).not_to_have_text("0")
    # Chromium reports the refused reconnection (closed before it opened) on the console; nothing else.
    assert all("WebSocket" in error for error in errors), errors


async def test_wrong_password_is_shown_and_nothing_connects(browser: Browser, served: tuple[Live, AppContext]) -> None:
    live, ctx = served
    reader = await create_user(ctx, Role.READER)
    errors: list[str] = []
    page = await open_console(browser, live, errors)
    await page.fill("#email", reader.email)
    await page.fill("#password", "not the password")
    await page.click("#login-button")
    await expect(page.get_by_test_id("login-error")).to_be_visible()
    await expect(page.get_by_test_id("login-error")).not_to_be_empty()
    await expect(page.get_by_test_id("who")).to_have_text("Not logged in.")
    await page.click("#connect-button")
    await expect(page.get_by_test_id("state")).to_contain_text("4401")
    assert ctx.hub.active() == 0


async def test_assets_are_served_by_name_only(served: tuple[Live, AppContext]) -> None:
    live, _ = served
    async with httpx.AsyncClient(base_url=live.http) as http:
        script = await http.get("/console/console.js")
        assert script.status_code == 200
        assert script.headers["content-type"].startswith("text/javascript")
        style = await http.get("/console/console.css")
        assert style.headers["content-type"].startswith("text/css")
        missing = await http.get("/console/index.html")
        assert missing.status_code == 404
        assert missing.headers["content-type"] == "application/problem+json"
        escape = await http.get("/console/..%2F..%2Fconfig.py")
        assert escape.status_code == 404
