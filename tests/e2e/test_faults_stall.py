"""A PostgreSQL that stalls (every server process frozen with SIGSTOP): bounded waits, 503s, one booking per key.

The cluster is a private one; the freeze is bounded (the test always sends SIGCONT, also when it fails). While
frozen the kernel still accepts connections and queues statements, so only the driver's own timeouts (set from
``DATABASE_STATEMENT_TIMEOUT_MS``) can end a request; once thawed the server cancels every statement whose
timeout passed meanwhile (``QueryCanceledError``). Neither may reach a client as a 500.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
from sqlalchemy import func, select, text
from sqlalchemy.exc import DBAPIError

from library_api.app import create_app
from library_api.db import migrate
from library_api.db.base import utcnow
from library_api.db.engine import DEFAULT_CONNECT_TIMEOUT, DRIVER_TIMEOUT_GRACE, create_engine, driver_timeouts
from library_api.dependencies.context import AppContext
from library_api.holdings.models import Booking
from library_api.resilience.database import is_database_timeout
from tests.conftest import fast_settings
from tests.support.factories import bearer, create_book, create_user, token_for
from tests.support.private_services import PrivatePostgres, running_postgres

# One xdist worker runs this module, so its module-scoped servers start once (docs/testing.md).
pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("faults-stall")]

UNCACHED_LIST = "/api/v1/bookings?limit=20&status=active"
"""A reader's booking list that is read from the database every time: a filtered list is never served from the
reader's page cache (``bookings/page_cache.py``), and this test is about what the database read does."""


STATEMENT_TIMEOUT_MS = 1000
POOL_TIMEOUT = 2.0


def cluster_processes(postgres: PrivatePostgres) -> list[int]:
    """The postmaster and every process it started (backends, checkpointer, ...)."""
    postmaster = int((postgres.data_dir / "postmaster.pid").read_text().split()[0])
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                if int(fields[1]) == postmaster:
                    children.append(int(entry.name))
    return [postmaster, *children]


@contextlib.contextmanager
def frozen(postgres: PrivatePostgres) -> Iterator[None]:
    """Every server process stopped (SIGSTOP) for the block, then continued, whatever happens in it."""
    processes = cluster_processes(postgres)
    for pid in processes:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in processes:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


@pytest.fixture(scope="module")
def postgres() -> Iterator[PrivatePostgres]:
    with running_postgres() as cluster:
        yield cluster


@pytest_asyncio.fixture
async def service(postgres: PrivatePostgres, tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, AppContext]]:
    settings = fast_settings(
        database_url=postgres.database_url("library"),
        upload_dir=tmp_path,
        database_statement_timeout_ms=STATEMENT_TIMEOUT_MS,
        database_pool_timeout=POOL_TIMEOUT,
        database_pool_size=4,
        broadcast_interval=0,
    )
    engine = create_engine(settings)
    await migrate.upgrade(engine)
    await engine.dispose()
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver", timeout=None) as client:
            yield client, app.state.context


def request_bound() -> float:
    """The longest a request may take against a stalled database: a pool wait, a connect, a statement and
    the rollback of what it began, each bounded by the settings, plus slack for a loaded machine."""
    driver = STATEMENT_TIMEOUT_MS / 1000 + DRIVER_TIMEOUT_GRACE
    return POOL_TIMEOUT + 3 * driver + 10


async def test_a_frozen_database_gives_503_and_a_retried_booking_books_once(
    postgres: PrivatePostgres, service: tuple[httpx.AsyncClient, AppContext]
) -> None:
    client, ctx = service
    book = await create_book(ctx, copies=3)
    reader = await create_user(ctx)
    headers = bearer(token_for(ctx, reader))
    start = utcnow().replace(microsecond=0) + timedelta(days=1)
    body = {"book_id": book.id, "start": start.isoformat(), "end": (start + timedelta(days=2)).isoformat()}
    key = {**headers, "Idempotency-Key": str(uuid.uuid4())}
    # Warm the pool, so that the freeze meets both pooled connections and new ones.
    assert (await client.get(UNCACHED_LIST, headers=headers)).status_code == 200

    with frozen(postgres):
        async with asyncio.timeout(request_bound()):
            answers = await asyncio.gather(
                client.post("/api/v1/bookings", json=body, headers=key),
                *(client.get(UNCACHED_LIST, headers=headers) for _ in range(6)),
                *(client.get(f"/api/v1/bookings/{n}", headers=headers) for n in range(1, 4)),
            )
    statuses = [answer.status_code for answer in answers]
    assert set(statuses) == {503}, [(a.status_code, a.text[:200]) for a in answers]
    for answer in answers:
        assert answer.headers["content-type"] == "application/problem+json"
        assert int(answer.headers["retry-after"]) > 0
        assert answer.json()["type"].rsplit(":", 1)[1] in {"database-timeout", "database-unavailable", "database-busy"}

    # Thawed: the client retries its booking with the same key until the service answers; one booking results.
    retried: httpx.Response | None = None
    for _ in range(20):
        async with asyncio.timeout(request_bound()):
            retried = await client.post("/api/v1/bookings", json=body, headers=key)
        if retried.status_code != 503:
            break
        await asyncio.sleep(float(retried.headers["retry-after"]) / 5)
    assert retried is not None and retried.status_code == 201, retried.text if retried else None
    again = await client.post("/api/v1/bookings", json=body, headers=key)
    assert again.status_code == 201
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json() == retried.json()
    async with ctx.database.sessionmaker() as session:
        count = await session.scalar(select(func.count()).select_from(Booking).where(Booking.user_id == reader.id))
    assert count == 1


async def test_a_statement_the_server_cancels_is_a_timeout(postgres: PrivatePostgres, tmp_path: Path) -> None:
    """What a thawed server does to statements whose timeout passed: SQLSTATE 57014, a 503, never a 500."""
    settings = fast_settings(
        database_url=postgres.database_url("library"), upload_dir=tmp_path, database_statement_timeout_ms=100
    )
    engine = create_engine(settings)
    try:
        with pytest.raises(DBAPIError) as caught:
            async with engine.connect() as connection:
                await connection.execute(text("SELECT pg_sleep(5)"))
    finally:
        await engine.dispose()
    assert is_database_timeout(caught.value)
    assert not is_database_timeout(ValueError("not a database error"))
    assert driver_timeouts(fast_settings(database_statement_timeout_ms=0)) == (DEFAULT_CONNECT_TIMEOUT, None)
    assert driver_timeouts(settings) == (0.1 + DRIVER_TIMEOUT_GRACE, 0.1 + DRIVER_TIMEOUT_GRACE)
