"""Each probe with the database and Redis really stopped and restarted, and recovery without a restart.

A private PostgreSQL cluster and a private Redis are started for this module on free ports; the service runs as
a real ``library-api serve`` process. PostgreSQL is stopped with ``pg_ctl stop`` and started again, Redis is
killed and started again (empty, as after a crash without persistence); the service process is never restarted.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from tests.support.polling import wait_until
from tests.support.private_services import PrivatePostgres, PrivateRedis, accepts, running_postgres, running_redis
from tests.support.processes import TEST_ENVIRONMENT, ServerProcess

# One xdist worker runs this module's tests, so its module-scoped servers start once (docs/testing.md).
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.xdist_group("faults"),
]


@pytest.fixture(scope="module")
def postgres() -> Iterator[PrivatePostgres]:
    with running_postgres() as cluster:
        yield cluster


@pytest.fixture(scope="module")
def redis() -> Iterator[PrivateRedis]:
    with running_redis() as server:
        yield server


def environment(postgres: PrivatePostgres, redis: PrivateRedis) -> dict[str, str]:
    return {
        **TEST_ENVIRONMENT,
        "DATABASE_URL": postgres.database_url("library"),
        "REDIS_URL": redis.url,
        "CACHE_KEY_PREFIX": f"faults{uuid.uuid4().hex[:6]}_",
        "RATE_LIMIT_ENABLED": "true",
        "REDIS_SOCKET_TIMEOUT": "0.3",
        "REDIS_BREAKER_RESET_SECONDS": "1",
        "DATABASE_RETRY_BASE_DELAY": "0.05",
        "DATABASE_RETRY_MAX_DELAY": "0.5",
        "HEALTH_CHECK_TIMEOUT": "2",
    }


@pytest.fixture(scope="module")
async def server(postgres: PrivatePostgres, redis: PrivateRedis) -> AsyncIterator[ServerProcess]:
    live = ServerProcess(environment(postgres, redis), json_log=True)
    migrated = await asyncio.to_thread(live.run_cli, "migrate")
    assert migrated.returncode == 0, migrated.stderr
    await asyncio.to_thread(live.start, wait="/health/ready", timeout=120)
    yield live
    assert await asyncio.to_thread(live.stop_cleanly)


def metric(text: str, line_start: str) -> float:
    for line in text.splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_database_stopped_and_restarted(server: ServerProcess, postgres: PrivatePostgres) -> None:
    async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as http:
        assert (await http.get("/api/v1/books")).status_code == 200

        await asyncio.to_thread(postgres.stop)
        live = await http.get("/health")
        startup = await http.get("/health/startup")
        ready = await http.get("/health/ready")
        detailed = await http.get("/health/detailed")
        read = await http.get("/api/v1/books", params={"q": "after the outage"})
        assert live.status_code == 200
        assert startup.status_code == 200  # it did start; it is just not ready
        assert ready.status_code == 503
        assert "database unreachable" in ready.json()["reasons"]
        assert detailed.status_code == 503
        assert detailed.json()["checks"]["database"]["status"] == "critical"
        assert read.status_code == 503
        assert read.headers["content-type"] == "application/problem+json"
        assert read.json()["type"] == "urn:library-api:problem:database-unavailable"
        assert int(read.headers["retry-after"]) >= 1

        await asyncio.to_thread(postgres.start)

        async def ready_again() -> bool:
            return (await http.get("/health/ready")).status_code == 200

        await wait_until(ready_again, within=30, what="the service to be ready again", interval=0.1)
        recovered = await http.get("/api/v1/books", params={"q": "after the outage"})
        assert recovered.status_code == 200
        assert recovered.json()["total"] == 0


async def test_redis_stopped_and_restarted(server: ServerProcess, redis: PrivateRedis) -> None:
    async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as http:
        await http.get("/api/v1/books")
        assert (await http.get("/api/v1/books")).status_code == 200
        hits_before = metric((await http.get("/metrics")).text, 'cache_hits_total{cache="list"}')
        assert hits_before >= 1

        logged_before = len(server.log_records())
        await asyncio.to_thread(redis.stop)
        served = [await http.get("/api/v1/books") for _ in range(5)]
        ready = await http.get("/health/ready")
        detailed = await http.get("/health/detailed")
        metrics = (await http.get("/metrics")).text
        assert all(response.status_code == 200 for response in served)  # straight from the database
        assert all("ratelimit" in response.headers for response in served)  # counted in process meanwhile
        # The breaker opened: from then on requests are answered without calling Redis at all.
        opened = [r for r in server.log_records()[logged_before:] if "circuit opened" in str(r.get("message"))]
        assert opened, "the Redis circuit should have opened"
        assert ready.status_code == 200
        assert ready.json()["status"] == "degraded"
        assert ready.json()["checks"]["redis"] == "degraded"
        assert detailed.json()["checks"]["redis"]["status"] == "warning"
        assert metric(metrics, 'circuit_breaker_state{dependency="redis"}') in (1.0, 2.0)
        assert metric(metrics, 'cache_hits_total{cache="list"}') == hits_before  # the cache is bypassed

        await asyncio.to_thread(redis.start)

        async def ready_again() -> bool:
            return (await http.get("/health/ready")).json()["status"] == "ready"

        await wait_until(ready_again, within=30, what="the service to be ready again", interval=0.1)

        async def cached_again() -> bool:
            # Its short socket timeout (0.3 s) lets a loaded machine miss a round; the cache must come back, not
            # necessarily on the first two reads.
            await http.get("/api/v1/books")
            return metric((await http.get("/metrics")).text, 'cache_hits_total{cache="list"}') > hits_before

        await wait_until(cached_again, within=30, what="the list to be served from Redis again", interval=0.1)
        metrics = (await http.get("/metrics")).text
        assert metric(metrics, 'circuit_breaker_state{dependency="redis"}') == 0.0


async def test_starting_while_the_database_is_down(postgres: PrivatePostgres, redis: PrivateRedis) -> None:
    await asyncio.to_thread(postgres.stop)
    live = ServerProcess(environment(postgres, redis), json_log=True)
    try:
        await asyncio.to_thread(live.start, wait="/health", timeout=120)
        async with httpx.AsyncClient(base_url=live.base_url, timeout=30) as http:
            assert (await http.get("/health/startup")).status_code == 503
            assert (await http.get("/health/ready")).json()["reasons"][0] == "starting: waiting for the database"
            await asyncio.to_thread(postgres.start)
            assert (await asyncio.to_thread(live.run_cli, "migrate")).returncode == 0

            async def started() -> bool:
                return (await http.get("/health/startup")).status_code == 200

            await wait_until(started, within=30, what="the service to start", interval=0.1)
            assert (await http.get("/health/ready")).status_code == 200
    finally:
        if not await asyncio.to_thread(accepts, postgres.port):
            await asyncio.to_thread(postgres.start)
        assert await asyncio.to_thread(live.stop_cleanly), live.log_text()[-3000:]
    retries = [r for r in live.log_records() if "database not reachable yet" in r["message"]]
    assert retries, "start-up should have retried the database"
