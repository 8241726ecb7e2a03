"""Live servers for the real-time tests: the app under Uvicorn on loopback, inside the test's event loop."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path

import pytest_asyncio

from library_api.app import create_app
from library_api.dependencies.context import AppContext
from library_api.server.uvicorn import TLSWebSocketsProtocol
from tests.conftest import fast_settings
from tests.support.live import Live, serve_in_loop

StartLive = Callable[..., Awaitable[tuple[Live, AppContext]]]

SQLITE_ONLY = {"argnames": "backend", "argvalues": ["sqlite"], "indirect": True}
"""The hub does not depend on the database engine; the embedded one keeps these tests fast."""


@pytest_asyncio.fixture
async def start_live(committed_url: str, tmp_path: Path) -> AsyncIterator[StartLive]:
    """Start the application (settings overridable per test) under a real Uvicorn on a free port."""
    async with AsyncExitStack() as stack:

        async def start(**values: object) -> tuple[Live, AppContext]:
            defaults: dict[str, object] = {
                "database_url": committed_url,
                "upload_dir": tmp_path / "uploads",
                "broadcast_interval": 0,
            }
            defaults.update(values)
            settings = fast_settings(**defaults)
            app = create_app(settings)
            # The service's own WebSocket protocol and message limit, as ``library-api serve`` runs them.
            live = await stack.enter_async_context(
                serve_in_loop(app, ws=TLSWebSocketsProtocol, ws_max_size=settings.ws_max_size)
            )
            return live, app.state.context

        yield start
