"""Which database errors mean "unreachable" (503, retried) and which do not (500, not retried)."""

from __future__ import annotations

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import create_async_engine

from library_api.resilience.database import is_database_unavailable
from tests.support.ports import refused_port
from tests.support.services import POSTGRES_ADMIN_DSN, require_postgres


async def test_refused_connection_is_unavailable() -> None:
    engine = create_async_engine(f"postgresql+asyncpg://postgres@127.0.0.1:{refused_port()}/x")
    with pytest.raises(OSError) as caught:
        async with engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
    await engine.dispose()
    assert is_database_unavailable(caught.value)


@pytest.mark.postgres
async def test_a_terminated_session_is_unavailable_a_bad_statement_is_not() -> None:
    require_postgres()
    url = POSTGRES_ADMIN_DSN.replace("postgresql://", "postgresql+asyncpg://")
    engine = create_async_engine(url)
    try:
        async with engine.connect() as connection:
            pid = (await connection.execute(text("SELECT pg_backend_pid()"))).scalar_one()
            admin = await asyncpg.connect(POSTGRES_ADMIN_DSN)
            await admin.execute("SELECT pg_terminate_backend($1)", pid)
            await admin.close()
            with pytest.raises(DBAPIError) as terminated:
                await connection.execute(text("SELECT 1"))
        assert is_database_unavailable(terminated.value)
        async with engine.connect() as connection:
            with pytest.raises(DBAPIError) as syntax:
                await connection.execute(text("SELEC 1"))
        assert not is_database_unavailable(syntax.value)
    finally:
        await engine.dispose()


def test_other_errors_are_not_unavailability() -> None:
    assert not is_database_unavailable(ValueError("x"))
    assert not is_database_unavailable(IntegrityError("INSERT", {}, Exception("duplicate")))
    assert is_database_unavailable(TimeoutError())
