"""Two applications on one database and one Redis behave as two workers: one cache, one set of counters.

And when Redis stops answering, each keeps serving: the cache is bypassed, rate limits count per process, and
everything goes back to normal by itself when Redis answers again.
"""

from __future__ import annotations

import uuid

import pytest
from fastapi import FastAPI

from library_api.resilience.breaker import CircuitState
from library_api.security.permissions import Role
from tests.conftest import AppFactory
from tests.support.factories import create_book, user_headers
from tests.support.http import client_for
from tests.support.private_services import PrivateRedis
from tests.support.services import REDIS_URL, require_redis

pytestmark = pytest.mark.redis


async def two_workers(app_factory: AppFactory, tmp_path: object, redis_url: str, **values: object) -> list[FastAPI]:
    prefix = f"t{uuid.uuid4().hex[:10]}_"
    first = await app_factory(redis_url=redis_url, cache_key_prefix=prefix, **values)
    url = first.state.context.settings.database_url
    second = await app_factory(database_url=url, redis_url=redis_url, cache_key_prefix=prefix, **values)
    return [first, second]


async def test_a_change_made_through_one_worker_is_seen_by_the_other(app_factory: AppFactory, tmp_path: object) -> None:
    require_redis()
    first, second = await two_workers(app_factory, tmp_path, REDIS_URL)
    book = await create_book(first.state.context, title="Old title")
    _, librarian = await user_headers(first.state.context, Role.LIBRARIAN)
    async with client_for(first) as one, client_for(second) as two:
        cached = await two.get(f"/api/v1/books/{book.id}")
        assert (await one.get(f"/api/v1/books/{book.id}")).headers["etag"] == cached.headers["etag"]
        assert (await one.patch(f"/api/v1/books/{book.id}", json={"title": "New title"}, headers=librarian)).is_success
        seen = await two.get(f"/api/v1/books/{book.id}")
        metrics = (await one.get("/metrics")).text
    assert cached.json()["title"] == "Old title"
    assert seen.json()["title"] == "New title"
    assert 'cache_hits_total{cache="book"} 1.0' in metrics  # the first worker's read hit the shared cache


async def test_rate_limits_are_exact_across_workers(app_factory: AppFactory, tmp_path: object) -> None:
    require_redis()
    workers = await two_workers(
        app_factory, tmp_path, REDIS_URL, rate_limit_enabled=True, rate_limit_default="7/minute"
    )
    statuses = []
    async with client_for(workers[0]) as one, client_for(workers[1]) as two:
        for number in range(12):
            statuses.append((await (one if number % 2 else two).get("/api/v1/books")).status_code)
    assert statuses.count(200) == 7
    assert statuses.count(429) == 5


class Clock:
    """Monotonic seconds that move only when the test says so (the breakers' pause is timed by it)."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


async def test_without_redis_the_service_keeps_serving_and_recovers(
    app_factory: AppFactory, tmp_path: object, private_redis: PrivateRedis
) -> None:
    first, second = await two_workers(
        app_factory,
        tmp_path,
        private_redis.url,
        rate_limit_enabled=True,
        rate_limit_default="4/minute",
        redis_socket_timeout=0.2,
        redis_breaker_failures=2,
        redis_breaker_reset_seconds=5,
    )
    clock = Clock()
    breakers = [worker.state.context.redis.breaker for worker in (first, second)]
    for breaker in breakers:
        breaker.clock = clock
    book = await create_book(first.state.context, title="Before the outage")
    _, librarian = await user_headers(first.state.context, Role.LIBRARIAN)
    url = f"/api/v1/books/{book.id}"
    async with client_for(first) as one, client_for(second) as two:
        assert (await two.get(url)).json()["title"] == "Before the outage"  # now cached in Redis

        private_redis.pause()  # Redis hangs: every call times out until the circuit opens
        patched = await one.patch(url, json={"title": "During the outage"}, headers=librarian)
        reads = [await two.get(url) for _ in range(5)]
        ready = await two.get("/health/ready")
        assert patched.status_code == 200
        assert [r.json()["title"] for r in reads if r.status_code == 200] == ["During the outage"] * 4
        assert [r.status_code for r in reads] == [200, 200, 200, 200, 429]  # 4/minute, counted in this process
        assert ready.status_code == 200
        assert ready.json()["status"] == "degraded"
        # Open, not half-open: the clock has not moved, so after the two calls that timed out every later call was
        # refused by the breaker at once, without waiting for Redis.
        assert second.state.context.redis.state is CircuitState.OPEN

        private_redis.resume()  # the stale answer is still in Redis: it must never be served
        assert (await two.get("/health/ready")).json()["status"] == "degraded"  # still paused: no trial yet
        clock.now += 5  # the pause is over: the next call to Redis is a trial
        for worker in (one, two):
            assert (await worker.get("/health/ready")).json()["status"] == "ready"
        assert all(breaker.state is CircuitState.CLOSED for breaker in breakers)
        assert (await one.get(url)).json()["title"] == "During the outage"
        assert (await two.get(url)).json()["title"] == "During the outage"
        metrics = (await one.get("/metrics")).text
    assert 'circuit_breaker_state{dependency="redis"} 0.0' in metrics
