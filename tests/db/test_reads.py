"""Hot reads: the driver path answers exactly what SQLAlchemy answers, and a dead connection still means 503."""

from __future__ import annotations

from pathlib import Path

import asyncpg
import httpx
import pytest
from sqlalchemy import bindparam, select, text
from sqlalchemy.exc import DBAPIError

from library_api.app import create_app
from library_api.context import AppContext
from library_api.db.reads import HotRead
from library_api.users.models import User
from tests.conftest import fast_settings
from tests.support.factories import bearer, create_user, token_for

_USERS_FROM = HotRead(
    select(User.id, User.email, User.created_at, User.is_active).where(User.id >= bindparam("first")).order_by(User.id)
)


async def test_the_driver_path_returns_what_sqlalchemy_returns(ctx: AppContext) -> None:
    users = [await create_user(ctx) for _ in range(3)]
    async with ctx.database.read_connection() as connection:
        hot = await _USERS_FROM.fetch(connection, {"first": users[1].id})
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
            assert (await client.get("/api/v1/bookings", headers=headers)).status_code == 200
            async with ctx.database.read_connection() as connection:
                backend = (await connection.execute(text("SELECT pg_backend_pid()"))).scalar_one()
            admin = await asyncpg.connect(committed_url.replace("postgresql+asyncpg://", "postgresql://"))
            try:
                assert await admin.fetchval("SELECT pg_terminate_backend($1)", backend) is True
            finally:
                await admin.close()
            killed = await client.get("/api/v1/bookings", headers=headers)
            assert killed.status_code == 503, killed.text
            assert killed.headers["content-type"] == "application/problem+json"
            assert killed.json()["type"].endswith("database-unavailable")
            again = await client.get("/api/v1/bookings", headers=headers)
            assert again.status_code == 200, again.text


async def test_a_statement_error_is_reported_by_sqlalchemy(committed_url: str, tmp_path: Path) -> None:
    """A statement the server refuses reaches the caller as SQLAlchemy's error, never as the driver's."""
    app = create_app(fast_settings(database_url=committed_url, upload_dir=tmp_path))
    async with app.router.lifespan_context(app):
        ctx: AppContext = app.state.context
        broken = HotRead(select(User.id).where(User.id == bindparam("first") / 0))
        async with ctx.database.read_connection() as connection:
            if connection.dialect.name == "sqlite":
                assert list(await broken.fetch(connection, {"first": 1})) == []  # SQLite's x / 0 is NULL
                return
            with pytest.raises(DBAPIError, match="division by zero"):
                await broken.fetch(connection, {"first": 1})
