"""Authenticated reads cost at most two SQL statements, counted on the engine and on the driver.

SQLAlchemy's ``before_cursor_execute`` event sees every statement that goes through SQLAlchemy; the hottest
reads skip it on PostgreSQL (:mod:`library_api.db.reads`), so every pooled asyncpg connection also gets a
query logger for the duration of the count, which sees those.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import event

from library_api.app import create_app
from library_api.db.base import utcnow
from library_api.dependencies.context import AppContext
from tests.conftest import fast_settings
from tests.support.factories import bearer, create_book, create_user, token_for


@asynccontextmanager
async def counted(ctx: AppContext) -> AsyncIterator[list[str]]:
    """Every statement sent while the block runs, whichever layer sent it."""
    statements: list[str] = []
    logged: list[Any] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        statements.append(statement)

    def driver_record(query: Any) -> None:
        statements.append(query.query)

    def on_checkout(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
        driver = getattr(dbapi_connection, "driver_connection", None)
        if hasattr(driver, "add_query_logger"):
            driver.add_query_logger(driver_record)
            logged.append(driver)

    engine = ctx.database.engine.sync_engine
    event.listen(engine, "before_cursor_execute", record)
    event.listen(engine, "checkout", on_checkout)
    try:
        yield statements
        await asyncio.sleep(0)  # the driver hands its log records to the loop with call_soon
    finally:
        event.remove(engine, "checkout", on_checkout)
        event.remove(engine, "before_cursor_execute", record)
        for driver in logged:
            driver.remove_query_logger(driver_record)


async def test_authenticated_reads_need_at_most_two_statements(committed_url: str, tmp_path: Path) -> None:
    app = create_app(fast_settings(database_url=committed_url, upload_dir=tmp_path))
    async with app.router.lifespan_context(app):
        ctx: AppContext = app.state.context
        reader = await create_user(ctx)
        book = await create_book(ctx, copies=3)
        headers = bearer(token_for(ctx, reader))
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            start = (utcnow() + timedelta(days=1)).isoformat()
            end = (utcnow() + timedelta(days=2)).isoformat()
            for _ in range(3):
                created = await client.post(
                    "/api/v1/bookings", json={"book_id": book.id, "start": start, "end": end}, headers=headers
                )
                assert created.status_code == 201
            booking_id = created.json()["id"]
            routes = ["/api/v1/auth/me", "/api/v1/bookings?limit=20", f"/api/v1/bookings/{booking_id}"]
            for path in routes:
                for state in ("cold", "warm"):
                    if state == "cold":
                        ctx.accounts.forget(reader.id)
                    async with counted(ctx) as statements:
                        response = await client.get(path, headers=headers)
                    assert response.status_code == 200, response.text
                    assert len(statements) <= 2, (path, state, statements)
                    if state == "warm":
                        # /auth/me answers from the account-state cache, the reader's list from the page cache
                        # (filled by the cold read); one booking runs one SELECT.
                        expected = 1 if path == f"/api/v1/bookings/{booking_id}" else 0
                        assert len(statements) == expected, (path, statements)
                    else:
                        assert len(statements) >= 1, (path, statements)


async def test_reads_with_an_api_token_need_at_most_two_statements(committed_url: str, tmp_path: Path) -> None:
    app = create_app(fast_settings(database_url=committed_url, upload_dir=tmp_path))
    async with app.router.lifespan_context(app):
        ctx: AppContext = app.state.context
        reader = await create_user(ctx)
        book = await create_book(ctx, copies=3)
        async with ctx.database.sessionmaker() as session:
            _, token = await ctx.api_tokens.create(session, name="desk", roles=["librarian"], issuer=None)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            start = (utcnow() + timedelta(days=1)).isoformat()
            end = (utcnow() + timedelta(days=2)).isoformat()
            created = await client.post(
                "/api/v1/bookings",
                json={"book_id": book.id, "start": start, "end": end},
                headers=bearer(token_for(ctx, reader)),
            )
            assert created.status_code == 201
            routes = ["/api/v1/bookings?limit=20", f"/api/v1/bookings/{created.json()['id']}"]
            for path in routes:
                for headers in (bearer(token), {"X-API-Key": token}):
                    for state in ("cold", "warm"):
                        if state == "cold":
                            ctx.api_tokens.forget(token)
                        async with counted(ctx) as statements:
                            response = await client.get(path, headers=headers)
                        assert response.status_code == 200, response.text
                        assert len(statements) == (2 if state == "cold" else 1), (path, state, statements)
