"""The React example (``examples/react/``) built with Vite and driven in real Chromium against ``library-api serve``.

The example is built as a user builds it: ``npm ci`` from its lock file (cached outside Git, see
``tests.support.npm``) and ``vite build``. The built page is served from an origin of its own (a static file
server on another port), so the service must let that origin in through its settings: ``BACKEND_CORS_ORIGINS``
for the sign-in and catalogue requests, ``WS_ALLOWED_ORIGINS`` for the WebSocket handshake. The service runs on
SQLite with the Redis broker, so that its topic numbering (epoch) outlives a restart.

A reader signs in on the page, which loads the catalogue (a cross-origin REST call) and follows ``books`` through
``useLiveEvents``; a book a librarian creates through the API afterwards appears on the page. The service is then
restarted on the same port: the page reconnects by itself and subscribes again **with its position** (the last
event's id and epoch, seen in the frames it sends), is answered without ``resync``, and shows the next book
created, each event once.

Skips locally without npm, Node.js, Chromium or Redis, with the reason; fails under ``CI=true``.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from playwright.async_api import Browser, Page, WebSocket, async_playwright, expect

from tests.support.factories import PASSWORD, unique_isbn
from tests.support.npm import node_major, stage, tool
from tests.support.polling import wait_until
from tests.support.processes import TEST_ENVIRONMENT, ServerProcess
from tests.support.services import REDIS_URL, require_redis, unavailable
from tests.web.test_console import ARGS, CHROMIUM

pytestmark = pytest.mark.e2e

READER = "reader@react.example.com"
LIBRARIAN = "librarian@react.example.com"


class QuietFiles(SimpleHTTPRequestHandler):
    """The built page's files, without a log line per request."""

    def log_message(self, format: str, *args: Any) -> None:
        return


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``examples/react`` installed with ``npm ci`` and built with ``vite build``: the ``dist`` directory."""
    if shutil.which(CHROMIUM) is None:
        unavailable(f"Chromium is not installed at {CHROMIUM} (apt-get install chromium)")
    if node_major() < 18:
        pytest.skip("the examples need Node.js 18 or later")
    project = stage("react", tmp_path_factory.mktemp("react-example"))
    vite = project / "node_modules" / "vite" / "bin" / "vite.js"
    done = subprocess.run(
        [tool("node"), str(vite), "build", "--logLevel", "warn"],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, f"vite build failed:\n{done.stdout}\n{done.stderr}"
    return project / "dist"


@pytest.fixture(scope="module")
def page_origin(built: Path) -> Iterator[str]:
    """The origin serving the built page (a static file server on a port of its own)."""
    files = ThreadingHTTPServer(("127.0.0.1", 0), partial(QuietFiles, directory=str(built)))
    thread = threading.Thread(target=files.serve_forever, name="react-example-files", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{files.server_address[1]}"
    finally:
        files.shutdown()
        files.server_close()
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def service(page_origin: str) -> Iterator[ServerProcess]:
    """``library-api serve`` letting the page's origin in, with a librarian and a reader account."""
    require_redis()
    prefix = f"react-{uuid.uuid4().hex[:8]}"
    env = {
        **TEST_ENVIRONMENT,
        "REDIS_URL": REDIS_URL,
        "REALTIME_REDIS_PREFIX": prefix,
        "CACHE_KEY_PREFIX": f"{prefix}-cache:",
        "SECRET_KEY": f"react-example-{uuid.uuid4().hex}{uuid.uuid4().hex}",
        "BACKEND_CORS_ORIGINS": page_origin,
        "WS_ALLOWED_ORIGINS": page_origin,
        "ACCESS_LOG": "false",
    }
    live = ServerProcess(env, measured=False)
    live.env["DATABASE_URL"] = f"sqlite+aiosqlite:///{live.directory / 'library.db'}"
    try:
        live.start()
        made = live.run_cli("users", "create", "--email", LIBRARIAN, "--role", "librarian", "--password", PASSWORD)
        assert made.returncode == 0, made.stderr
        reader = {"email": READER, "password": PASSWORD, "full_name": "Page Reader"}
        registered = httpx.post(f"{live.base_url}/api/v1/auth/register", json=reader, timeout=10)
        assert registered.status_code == 201, registered.text
        yield live
    finally:
        live.stop()


@pytest_asyncio.fixture
async def browser(built: Path) -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield launched
        await launched.close()


class Sockets:
    """Every WebSocket the page opens, with the JSON frames it sent and received, in order."""

    def __init__(self, page: Page) -> None:
        self.opened: list[tuple[list[dict[str, Any]], list[dict[str, Any]]]] = []
        page.on("websocket", self._opened)

    def _opened(self, socket: WebSocket) -> None:
        sent: list[dict[str, Any]] = []
        received: list[dict[str, Any]] = []
        self.opened.append((sent, received))
        socket.on("framesent", lambda payload: sent.append(json.loads(payload)))
        socket.on("framereceived", lambda payload: received.append(json.loads(payload)))

    def received(self, index: int, kind: str) -> list[dict[str, Any]]:
        """The frames of type ``kind`` the ``index``-th socket received."""
        return [frame for frame in self.opened[index][1] if frame.get("type") == kind] if self.opened else []

    def sent(self, index: int, kind: str) -> list[dict[str, Any]]:
        """The frames of type ``kind`` the page sent on the ``index``-th socket."""
        return [frame for frame in self.opened[index][0] if frame.get("type") == kind] if self.opened else []


async def create_book(service: ServerProcess, title: str) -> None:
    async with httpx.AsyncClient(base_url=service.base_url, timeout=10) as api:
        login = await api.post("/api/v1/auth/login", data={"username": LIBRARIAN, "password": PASSWORD})
        assert login.status_code == 200, login.text
        headers = {"Authorization": f"Bearer {login.json()['access_token']}"}
        body = {"isbn": unique_isbn(), "title": title, "authors": ["A. Writer"]}
        created = await api.post("/api/v1/books", json=body, headers=headers)
        assert created.status_code == 201, created.text


async def test_the_built_react_page_shows_new_books_and_resumes_after_a_restart(
    browser: Browser, service: ServerProcess, page_origin: str
) -> None:
    page = await (await browser.new_context()).new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    sockets = Sockets(page)
    await create_book(service, "On the shelf before the page loaded")
    await page.goto(f"{page_origin}/index.html?api={service.base_url}")
    await page.get_by_label("e-mail").fill(READER)
    await page.get_by_label("password").fill(PASSWORD)
    await page.get_by_role("button", name="Sign in").click()
    status = page.get_by_test_id("live-status")
    await expect(status).to_have_text("Live: subscribed", timeout=30_000)
    # The catalogue came through a cross-origin REST call (CORS preflight for the Authorization header).
    await expect(page.get_by_test_id("catalogue").locator("li")).to_have_text(["On the shelf before the page loaded"])

    await create_book(service, "Written after the page loaded")
    events = page.get_by_test_id("live-events").locator("li")
    await expect(events).to_have_text(["book.created: Written after the page loaded"], timeout=30_000)
    (seen,) = sockets.received(0, "book.created")

    await asyncio.to_thread(service.stop)
    await asyncio.to_thread(service.start)
    resubscribed = lambda: len(sockets.opened) > 1 and bool(sockets.received(-1, "subscribed"))  # noqa: E731
    await wait_until(resubscribed, within=30, what="the page to subscribe again on a new socket")
    last = len(sockets.opened) - 1
    (subscribe,) = sockets.sent(last, "subscribe")
    assert (subscribe["last_event_id"], subscribe["last_event_epoch"]) == (seen["id"], seen["epoch"])
    assert sockets.received(last, "resync") == []
    await expect(status).to_have_text("Live: subscribed")

    await create_book(service, "Written after the restart")
    await expect(events).to_have_text(
        ["book.created: Written after the page loaded", "book.created: Written after the restart"], timeout=30_000
    )
    assert errors == []
