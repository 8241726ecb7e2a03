"""Hot reads: the driver path answers exactly what SQLAlchemy answers, and a dead connection still means 503."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import httpx
import pytest
from sqlalchemy import Float, bindparam, func, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import QueuePool

from library_api.app import create_app
from library_api.db.engine import create_database
from library_api.db.reads import HotRead
from library_api.dependencies.context import AppContext
from library_api.users.models import User
from tests.conftest import fast_settings
from tests.support.factories import bearer, create_user, token_for

UNCACHED_LIST = "/api/v1/bookings?limit=20&status=active"
"""A reader's booking list that is read from the database every time: a filtered list is never served from the
reader's page cache (``bookings/page_cache.py``), and this test is about what the database read does."""


_USERS_FROM = HotRead(
    select(User.id, User.email, User.created_at, User.is_active).where(User.id >= bindparam("first")).order_by(User.id)
)


async def test_the_driver_path_returns_what_sqlalchemy_returns(ctx: AppContext) -> None:
    users = [await create_user(ctx) for _ in range(3)]
    hot = await _USERS_FROM.fetch(ctx.database, {"first": users[1].id})
    async with ctx.database.read_connection() as connection:
        reference = (await connection.execute(_USERS_FROM.statement, {"first": users[1].id})).mappings().all()
    assert [dict(row) for row in hot] == [dict(row) for row in reference]
    assert [row["id"] for row in hot] == [users[1].id, users[2].id]
    assert all(row["created_at"].tzinfo is not None for row in hot)


def test_the_postgresql_text_is_compiled_once_with_positional_parameters() -> None:
    assert _USERS_FROM.parameter_names == ("first",)
    assert "$1" in _USERS_FROM.postgresql_text
    assert "users" in _USERS_FROM.postgresql_text


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
async def test_a_connection_killed_under_a_hot_read_is_retried_through_sqlalchemy(
    committed_url: str, tmp_path: Path
) -> None:
    """A backend terminated between two reads: the driver fails, SQLAlchemy judges it a disconnect, 503 follows."""
    app = create_app(fast_settings(database_url=committed_url, upload_dir=tmp_path, database_pool_size=1))
    async with app.router.lifespan_context(app):
        ctx: AppContext = app.state.context
        reader = await create_user(ctx)
        headers = bearer(token_for(ctx, reader))
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            assert (await client.get(UNCACHED_LIST, headers=headers)).status_code == 200
            async with ctx.database.read_connection() as connection:
                backend = (await connection.execute(text("SELECT pg_backend_pid()"))).scalar_one()
            admin = await asyncpg.connect(committed_url.replace("postgresql+asyncpg://", "postgresql://"))
            try:
                assert await admin.fetchval("SELECT pg_terminate_backend($1)", backend) is True
            finally:
                await admin.close()
            killed = await client.get(UNCACHED_LIST, headers=headers)
            assert killed.status_code == 503, killed.text
            assert killed.headers["content-type"] == "application/problem+json"
            assert killed.json()["type"].endswith("database-unavailable")
            again = await client.get(UNCACHED_LIST, headers=headers)
            assert again.status_code == 200, again.text


async def test_a_statement_error_is_reported_by_sqlalchemy(committed_url: str, tmp_path: Path) -> None:
    """A statement the server refuses reaches the caller as SQLAlchemy's error, never as the driver's."""
    app = create_app(fast_settings(database_url=committed_url, upload_dir=tmp_path))
    async with app.router.lifespan_context(app):
        ctx: AppContext = app.state.context
        broken = HotRead(select(User.id).where(User.id == bindparam("first") / 0))
        if ctx.database.dialect == "sqlite":
            assert list(await broken.fetch(ctx.database, {"first": 1})) == []  # SQLite's x / 0 is NULL
            return
        with pytest.raises(DBAPIError, match="division by zero"):
            await broken.fetch(ctx.database, {"first": 1})


_SLEEP = HotRead(select(func.pg_sleep(bindparam("seconds", type_=Float))))
_BACKEND = HotRead(select(func.pg_backend_pid().label("pid")))


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
async def test_connections_come_back_to_the_pool_and_overflow_ones_are_closed(committed_url: str) -> None:
    database = create_database(fast_settings(database_url=committed_url, database_pool_size=1, database_max_overflow=1))
    pool = database.engine.pool
    assert isinstance(pool, QueuePool)
    try:
        async with database.pooled_connection() as first:
            async with database.pooled_connection() as second:
                assert pool.checkedout() == 2
                overflow = second.driver_connection
            assert pool.checkedin() == 1  # the pool had room: the connection went back for reuse
            kept = first.driver_connection
        assert (pool.checkedout(), pool.checkedin()) == (0, 1)
        assert overflow is not None and not overflow.is_closed()
        assert kept is not None and kept.is_closed()  # the pool was full again: the overflow connection was closed
    finally:
        await database.dispose()


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
async def test_a_read_cancelled_mid_statement_closes_its_connection(committed_url: str) -> None:
    database = create_database(fast_settings(database_url=committed_url, database_pool_size=1, database_max_overflow=0))
    admin = await asyncpg.connect(committed_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        sleeper = asyncio.create_task(_SLEEP.fetch(database, {"seconds": 30}))
        backend = None
        async with asyncio.timeout(10):
            while backend is None:
                backend = await admin.fetchval(
                    "SELECT pid FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep%' AND state = 'active'"
                )
                await asyncio.sleep(0.02)  # polling the server for the statement to start, bounded above
        sleeper.cancel()
        with pytest.raises(asyncio.CancelledError):
            await sleeper
        assert database.engine.pool.checkedout() == 0
        rows = await _BACKEND.fetch(database, {})
        assert rows[0]["pid"] != backend  # the interrupted connection was not handed out again
        await admin.execute("SELECT pg_terminate_backend($1)", backend)
    finally:
        await admin.close()
        await database.dispose()
