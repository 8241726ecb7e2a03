"""Faults under load: Redis and PostgreSQL killed while clients keep calling, with private servers on free ports.

A private PostgreSQL cluster and a private Redis are started for this module; the service runs as a real
``library-api serve`` process against them. A bounded load generator (async httpx, a fixed number of clients
for a fixed time) keeps catalogue reads and bookings in flight while a dependency is killed:

- Redis killed with SIGKILL: catalogue reads never answer 5xx, readiness says ``degraded``, and when Redis is
  started again the service is ``ready`` without a restart;
- PostgreSQL crashed (``pg_ctl -m immediate``): calls answer 503 problems with ``Retry-After`` (never 500),
  readiness is 503, every booking the clients were told was created exists, none exceeds the copies, and once
  PostgreSQL is back the service recovers on its own.

A Gunicorn worker killed with SIGKILL under load is in ``test_shutdown_under_load.py``, with the other tests of
worker processes coming and going.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta

import asyncpg
import httpx
import pytest
import pytest_asyncio

from library_api.db.base import utcnow
from library_api.holdings.periods import peak_overlap
from tests.reliability.conftest import Record
from tests.support.factories import PASSWORD, bearer, unique_isbn
from tests.support.polling import wait_until
from tests.support.private_services import PrivatePostgres, PrivateRedis, accepts, running_postgres, running_redis
from tests.support.processes import TEST_ENVIRONMENT, ServerProcess

# One xdist worker runs this module's tests, so its module-scoped servers start once (docs/testing.md).
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.xdist_group("faults-under-load"),
    pytest.mark.children_unmeasured,
]

ADMIN = "faults-admin@example.org"
CLIENTS = 8
COPIES = 3


@pytest.fixture(scope="module")
def postgres() -> Iterator[PrivatePostgres]:
    with running_postgres(durable=True) as cluster:  # a crash must not lose an acknowledged booking
        yield cluster


@pytest.fixture(scope="module")
def redis() -> Iterator[PrivateRedis]:
    with running_redis() as server:
        yield server


@pytest_asyncio.fixture(scope="module")
async def server(postgres: PrivatePostgres, redis: PrivateRedis) -> AsyncIterator[ServerProcess]:
    live = ServerProcess(
        {
            **TEST_ENVIRONMENT,
            "DATABASE_URL": postgres.database_url("library"),
            "REDIS_URL": redis.url,
            "CACHE_KEY_PREFIX": f"load{uuid.uuid4().hex[:6]}_",
            "RATE_LIMIT_ENABLED": "false",
            "REDIS_SOCKET_TIMEOUT": "0.3",
            "REDIS_BREAKER_RESET_SECONDS": "1",
            "DATABASE_RETRY_BASE_DELAY": "0.05",
            "DATABASE_RETRY_MAX_DELAY": "0.5",
            "HEALTH_CHECK_TIMEOUT": "2",
        },
        json_log=True,
    )
    assert (await asyncio.to_thread(live.run_cli, "migrate")).returncode == 0
    created = await asyncio.to_thread(
        live.run_cli, "users", "create", "--email", ADMIN, "--password", PASSWORD, "--role", "admin"
    )
    assert created.returncode == 0, created.stderr
    await asyncio.to_thread(live.start, wait="/health/ready", timeout=120)
    yield live
    assert await asyncio.to_thread(live.stop_cleanly)


@dataclass
class Load:
    """What the clients saw while the load ran."""

    statuses: Counter[int] = field(default_factory=Counter)
    transport_errors: int = 0
    created: list[int] = field(default_factory=list)
    unavailable_without_retry_after: int = 0
    non_problem_errors: int = 0

    @property
    def requests(self) -> int:
        return sum(self.statuses.values()) + self.transport_errors

    def record(self, answer: httpx.Response) -> None:
        self.statuses[answer.status_code] += 1
        if answer.status_code >= 400 and answer.headers.get("content-type") != "application/problem+json":
            self.non_problem_errors += 1
        if answer.status_code == 503 and "retry-after" not in answer.headers:
            self.unavailable_without_retry_after += 1


async def run_load(
    base_url: str, request: Callable[[httpx.AsyncClient, int], Awaitable[httpx.Response]], seconds: float
) -> Load:
    """``CLIENTS`` clients calling ``request`` back to back for ``seconds``."""
    load = Load()
    deadline = time.monotonic() + seconds

    async def client(index: int) -> None:
        async with httpx.AsyncClient(base_url=base_url, timeout=15) as http:
            while time.monotonic() < deadline:
                try:
                    answer = await request(http, index)
                except httpx.TransportError:
                    load.transport_errors += 1
                    await asyncio.sleep(0.05)
                    continue
                load.record(answer)
                if answer.status_code == 201:
                    load.created.append(int(answer.json()["id"]))

    await asyncio.gather(*(client(index) for index in range(CLIENTS)))
    return load


async def test_redis_killed_under_catalogue_load(server: ServerProcess, redis: PrivateRedis, figures: Record) -> None:
    async def read(http: httpx.AsyncClient, index: int) -> httpx.Response:
        return await http.get("/api/v1/books", params={"limit": 5 + index % 3})

    async with httpx.AsyncClient(base_url=server.base_url, timeout=15) as http:
        during = asyncio.create_task(run_load(server.base_url, read, 4.0))
        await asyncio.sleep(1.0)
        await asyncio.to_thread(redis.stop)  # SIGKILL
        await asyncio.sleep(1.0)
        ready = await http.get("/health/ready")
        load = await during
        assert ready.status_code == 200 and ready.json()["status"] == "degraded", ready.text

        await asyncio.to_thread(redis.start)

        async def ready_again() -> bool:
            return (await http.get("/health/ready")).json()["status"] == "ready"

        await wait_until(ready_again, within=60, what="the service to be ready again", interval=0.1)
        after = await run_load(server.base_url, read, 1.0)
    figures(
        fault="redis SIGKILL",
        requests=load.requests,
        lost=load.transport_errors,
        server_errors=sum(n for s, n in load.statuses.items() if s >= 500),
    )
    assert load.requests > CLIENTS
    assert load.transport_errors == 0
    assert set(load.statuses) == {200}, load.statuses
    assert set(after.statuses) == {200}


async def test_postgres_crashed_under_booking_load(
    server: ServerProcess, postgres: PrivatePostgres, figures: Record
) -> None:
    async with httpx.AsyncClient(base_url=server.base_url, timeout=15) as http:
        login = await http.post("/api/v1/auth/login", data={"username": ADMIN, "password": PASSWORD})
        admin = bearer(login.json()["access_token"])
        book = await http.post(
            "/api/v1/books",
            json={"isbn": unique_isbn(), "title": "Crash", "authors": ["A"], "copies": COPIES},
            headers=admin,
        )
        assert book.status_code == 201, book.text
        book_id = book.json()["id"]

        async def book_or_read(client: httpx.AsyncClient, index: int) -> httpx.Response:
            if index % 2:
                return await client.get(f"/api/v1/books/{book_id}")
            start = utcnow().replace(microsecond=0) + timedelta(days=10 + index, hours=time.monotonic_ns() % 500)
            body = {"book_id": book_id, "start": start.isoformat(), "end": (start + timedelta(hours=1)).isoformat()}
            return await client.post("/api/v1/bookings", json=body, headers=admin)

        during = asyncio.create_task(run_load(server.base_url, book_or_read, 4.0))
        await asyncio.sleep(1.0)
        await asyncio.to_thread(postgres.crash)
        await asyncio.sleep(0.5)
        ready = await http.get("/health/ready")
        read = await http.get(f"/api/v1/books/{book_id}", headers={"Cache-Control": "no-cache"})
        load = await during
        assert ready.status_code == 503, ready.text
        assert read.status_code in (200, 503)  # a cached copy may still be served; never a 500

        await asyncio.to_thread(postgres.start)

        async def ready_again() -> bool:
            return (await http.get("/health/ready")).status_code == 200

        await wait_until(ready_again, within=60, what="the service to be ready again", interval=0.1)
        after = await run_load(server.base_url, book_or_read, 1.0)

    connection = await asyncpg.connect(f"postgresql://postgres@127.0.0.1:{postgres.port}/library")
    try:
        rows = await connection.fetch(
            "SELECT id, user_id, status, start_at, end_at FROM bookings WHERE book_id = $1", book_id
        )
    finally:
        await connection.close()
    stored = {row["id"] for row in rows}
    told_created = set(load.created) | set(after.created)
    figures(
        fault="postgresql crash",
        requests=load.requests,
        lost=load.transport_errors,
        statuses=dict(sorted(load.statuses.items())),
        server_errors=sum(n for s, n in load.statuses.items() if s >= 500 and s != 503),
        bookings_created=len(told_created),
        bookings_stored=len(stored),
    )
    assert accepts(postgres.port)
    assert load.statuses[503] > 0, "the crash was seen by the clients"
    assert set(load.statuses) <= {200, 201, 409, 503}, load.statuses
    assert load.unavailable_without_retry_after == 0
    assert load.non_problem_errors == 0
    assert load.transport_errors == 0
    assert told_created <= stored, "every booking a client was told of exists"
    assert all(row["user_id"] is not None and row["status"] == "active" for row in rows)
    periods = [(row["start_at"], row["end_at"]) for row in rows]
    assert peak_overlap(periods, min(start for start, _ in periods)) <= COPIES, "no instant is overbooked"
    assert set(after.statuses) <= {200, 201, 409}, after.statuses
