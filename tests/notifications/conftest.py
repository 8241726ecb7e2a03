"""The SMTP server, its CA and the applications of the mail tests, shared by every module of this package."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
from fastapi import FastAPI
from sqlalchemy import select

from library_api.app import create_app
from library_api.db.base import utcnow
from library_api.dependencies.context import AppContext
from library_api.notifications.models import OutboxEmail
from tests.conftest import fast_settings
from tests.support.certs import ServerTls, server_tls
from tests.support.factories import bearer
from tests.support.smtp import Inbox, SmtpServer


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> ServerTls:
    return server_tls(tmp_path_factory.mktemp("smtp-ca"))


@pytest.fixture
def smtp(tls: ServerTls) -> Iterator[SmtpServer]:
    server = SmtpServer(inbox=Inbox(), starttls=tls.server_context)
    server.start()
    yield server
    server.stop()


StartApp = Callable[..., Awaitable[AppContext]]

apps: dict[int, FastAPI] = {}
"""The application behind each context started by ``start_app`` in the running test."""


@pytest_asyncio.fixture
async def start_app(committed_url: str, tmp_path: Path, tls: ServerTls) -> AsyncIterator[StartApp]:
    """Applications (lifespan running, so the notifier's tasks too) on this test's committed database."""
    async with AsyncExitStack() as stack:
        apps.clear()

        async def start(port: int | None, **values: object) -> AppContext:
            mail: dict[str, object] = {}
            if port is not None:
                mail = {
                    "smtp_host": "127.0.0.1",
                    "smtp_port": port,
                    "smtp_security": "starttls",
                    "smtp_ca_file": tls.ca_file,
                    "email_from": "noreply@library.example.com",
                    "email_poll_interval": 0.2,
                    "email_retry_delay": 0.2,
                }
            mail.update(values)
            app = create_app(fast_settings(database_url=committed_url, upload_dir=tmp_path, **mail))
            await stack.enter_async_context(app.router.lifespan_context(app))
            context: AppContext = app.state.context
            apps[id(context)] = app
            return context

        yield start


def window(days_from_now: float = 1, length_days: float = 2) -> dict[str, str]:
    start = utcnow() + timedelta(days=days_from_now)
    return {"start": start.isoformat(), "end": (start + timedelta(days=length_days)).isoformat()}


async def book_one(ctx: AppContext, token: str, book_id: int) -> httpx.Response:
    transport = httpx.ASGITransport(app=apps[id(ctx)])
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        return await http.post("/api/v1/bookings", json={"book_id": book_id, **window()}, headers=bearer(token))


async def outbox(ctx: AppContext) -> list[OutboxEmail]:
    async with ctx.database.sessionmaker() as session:
        return list((await session.execute(select(OutboxEmail).order_by(OutboxEmail.id))).scalars())
