"""More concurrent requests than database connections: every request is answered, 200 or 503, none left waiting.

A real ``library-api serve`` process on PostgreSQL runs with a pool of 2 connections, no overflow and a pool
timeout of 1 s. The test locks the ``bookings`` table from outside, so the two requests that get a connection
hold it while the other 98 of 100 concurrent authenticated requests queue for the pool. Those must come back
as 503 problems with ``Retry-After`` while the lock is still held: they cannot be waiting for the holders,
whose connections free only when the test lets them. Then the lock is released and the two holders finish with
200. None may be a 500 or a dropped connection. (How long the 503s take is the pool timeout's business; the
test bounds its wait only so that a request that never comes back fails it instead of hanging it.)
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest

from tests.support.databases import empty_postgres_database
from tests.support.processes import TEST_ENVIRONMENT, ServerProcess, migrated_server
from tests.support.services import POSTGRES_ADMIN_DSN, POSTGRES_HOST, POSTGRES_PORT, require_postgres

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

UNCACHED_LIST = "/api/v1/bookings?limit=20&status=active"
"""A reader's booking list that is read from the database every time: a filtered list is never served from the
reader's page cache (``bookings/page_cache.py``), and this test is about what the database read does."""


POOL_TIMEOUT = 1.0
WAIT_BOUND = 120.0
"""Only a bound on the wait for the 503s while the lock is held (a request never answered fails, not hangs)."""
CONCURRENT = 100
PASSWORD = "correct-horse-battery"


@pytest.fixture(scope="module")
async def database_name() -> AsyncIterator[str]:
    require_postgres()
    async with empty_postgres_database("library_saturation") as name:
        yield name


@pytest.fixture(scope="module")
async def server(database_name: str) -> AsyncIterator[ServerProcess]:
    env = {
        **TEST_ENVIRONMENT,
        "DATABASE_URL": f"postgresql+asyncpg://postgres@{POSTGRES_HOST}:{POSTGRES_PORT}/{database_name}",
        "DATABASE_POOL_SIZE": "2",
        "DATABASE_MAX_OVERFLOW": "0",
        "DATABASE_POOL_TIMEOUT": str(POOL_TIMEOUT),
        "PRINCIPAL_CACHE_TTL": "60",
        "ACCESS_LOG": "false",
    }
    async with migrated_server(env, workers=1) as live:
        yield live


async def reader_headers(http: httpx.AsyncClient) -> dict[str, str]:
    email = f"reader-{uuid.uuid4().hex[:10]}@example.org"
    body = {"email": email, "password": PASSWORD, "full_name": "Reader"}
    assert (await http.post("/api/v1/auth/register", json=body)).status_code == 201
    login = await http.post("/api/v1/auth/login", data={"username": email, "password": PASSWORD})
    assert login.status_code == 200, login.text
    headers = {"Authorization": f"Bearer {login.json()['access_token']}"}
    assert (await http.get(UNCACHED_LIST, headers=headers)).status_code == 200
    return headers


async def test_a_saturated_pool_answers_every_request_in_time(server: ServerProcess, database_name: str) -> None:
    # A new connection per request: a kept-alive connection can be closed by the server for idleness just as a
    # request is sent on it, and that race is the client's to handle, not what this test is about.
    limits = httpx.Limits(max_connections=CONCURRENT, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=server.base_url, timeout=30, limits=limits) as http:
        headers = await reader_headers(http)
        locker = await asyncpg.connect(POSTGRES_ADMIN_DSN.rsplit("/", 1)[0] + f"/{database_name}")
        transaction = locker.transaction()
        await transaction.start()
        await locker.execute("LOCK TABLE bookings IN ACCESS EXCLUSIVE MODE")
        answered: list[tuple[int, httpx.Response | None, str]] = []
        busy = asyncio.Event()

        async def one() -> None:
            try:
                response = await http.get(UNCACHED_LIST, headers=headers)
                answered.append((response.status_code, response, ""))
            except httpx.HTTPError as exc:
                answered.append((0, None, repr(exc)))
            if len(answered) >= CONCURRENT - 2:  # all but the two lock-blocked holders have their answer
                busy.set()

        try:
            tasks = [asyncio.create_task(one()) for _ in range(CONCURRENT)]
            with contextlib.suppress(TimeoutError):  # the assertions below report what came back
                await asyncio.wait_for(busy.wait(), timeout=WAIT_BOUND)
            answered_while_locked = len(answered)
        finally:
            await transaction.rollback()
            await locker.close()
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=30)
    assert answered_while_locked >= CONCURRENT - 2, "requests queued for the pool waited for the lock's holders"

    statuses = sorted(status for status, *_ in answered)
    assert len(answered) == CONCURRENT
    assert set(statuses) <= {200, 503}, [(s, error) for s, _, error in answered if s not in {200, 503}]
    assert statuses.count(503) >= CONCURRENT - 2 and statuses.count(200) >= 1, statuses
    for status, response, _ in answered:
        assert response is not None
        if status == 503:
            assert response.headers["retry-after"] == "1"
            assert response.headers["content-type"] == "application/problem+json"
    assert "Traceback" not in server.log_text()
