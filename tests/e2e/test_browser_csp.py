"""The default Content-Security-Policy in a real browser: the service's own page, its script file and a WebSocket
to the same host work; an inline script is refused. Chromium from Debian, driven by Playwright."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.async_api import async_playwright, expect

from tests.support.measure import unmeasured
from tests.support.polling import wait_for
from tests.support.ports import listening_socket, port_of
from tests.support.processes import TEST_ENVIRONMENT
from tests.support.services import unavailable

pytestmark = pytest.mark.e2e

CHROMIUM = Path("/usr/bin/chromium")
ROOT = Path(__file__).resolve().parents[2]


def answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture
def page_server(tmp_path: Path) -> Iterator[str]:
    """The service with a test page (``tests/support/csp_app.py``) under Uvicorn; yields its base URL."""
    if not CHROMIUM.exists():
        unavailable(f"Chromium is not installed at {CHROMIUM}")
    # the headers and page are measured in process (tests/http, tests/web); here only the browser is under test
    env = unmeasured({**os.environ, **TEST_ENVIRONMENT, "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'csp.db'}"})
    with listening_socket() as listener:  # Uvicorn serves on it (--fd): only this server can answer on the port
        fd, port = listener.fileno(), port_of(listener)
        command = [sys.executable, "-m", "uvicorn", "tests.support.csp_app:page_app", "--factory", "--fd", str(fd)]
        server = subprocess.Popen(
            command, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, pass_fds=(fd,)
        )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: answers(f"{base}/health"), 60, "the page server")
        yield base
    finally:
        server.terminate()
        server.wait(timeout=30)


async def test_own_script_and_same_host_websocket_work_inline_script_is_refused(page_server: str) -> None:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            page = await browser.new_page()
            response = await page.goto(f"{page_server}/csp-check")
            assert response is not None
            assert "script-src 'self'" in (await response.all_headers())["content-security-policy"]
            # Playwright's own waiting (its isolated world), not a predicate evaluated in the page: the page's CSP
            # forbids eval, so a string predicate that has to be polled would be refused
            await expect(page.locator("#socket")).not_to_have_text("pending", timeout=15_000)
            assert await page.text_content("#socket") == "pong:ping"
            assert await page.text_content("#inline") == "inline script did not run"
            assert "script-src" in (await page.text_content("#violations") or "")
        finally:
            await browser.close()
