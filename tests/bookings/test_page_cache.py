"""A reader's own booking pages from the cache: hits, and no write ever followed by the page from before it.

On both databases, in one process and across two applications sharing one database and one Redis (two
workers); the race of a slow reader against a writer on both stores; and a Redis outage during a change.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

import httpx
import pytest

from library_api.bookings.page_cache import BookingPages, pages_enabled, scope_of
from library_api.books.repository import Window
from library_api.cache.backends import CacheBackend, MemoryBackend, RedisBackend
from library_api.db.base import utcnow
from library_api.dependencies.context import AppContext
from library_api.events import DomainEvent
from library_api.resilience.breaker import CircuitBreaker, CircuitState
from library_api.resilience.redis import GuardedRedis
from library_api.security.permissions import Role
from tests.conftest import AppFactory
from tests.support.factories import create_book, user_headers
from tests.support.http import client_for
from tests.support.private_services import PrivateRedis
from tests.support.services import REDIS_URL, require_redis

LIST = "/api/v1/bookings"


def period(days: int = 1) -> dict[str, str]:
    start = utcnow().replace(microsecond=0) + timedelta(days=days)
    return {"start": start.isoformat(), "end": (start + timedelta(days=1)).isoformat()}


def bookings_hits(metrics: str) -> float:
    for line in metrics.splitlines():
        if line.startswith('cache_hits_total{cache="bookings"}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def hits(client: httpx.AsyncClient) -> float:
    return bookings_hits((await client.get("/metrics")).text)


async def book(client: httpx.AsyncClient, headers: dict[str, str], book_id: int, days: int = 1) -> int:
    created = await client.post(LIST, json={"book_id": book_id, **period(days)}, headers=headers)
    assert created.status_code == 201, created.text
    return int(created.json()["id"])


def answer_headers(response: httpx.Response) -> dict[str, str]:
    """The headers of an answer but its request id (each request's own)."""
    return {name: value for name, value in response.headers.items() if name != "x-request-id"}


def statuses(response: httpx.Response) -> list[tuple[int, str]]:
    assert response.status_code == 200, response.text
    return [(item["id"], item["status"]) for item in response.json()["items"]]


async def test_a_page_is_served_from_the_cache_until_the_readers_bookings_change(
    client: httpx.AsyncClient, ctx: AppContext
) -> None:
    reader, headers = await user_headers(ctx)
    other, other_headers = await user_headers(ctx)
    _, librarian = await user_headers(ctx, Role.LIBRARIAN)
    title = await create_book(ctx, copies=5)
    first = await book(client, headers, title.id)

    before = await hits(client)
    read = await client.get(LIST, headers=headers)
    again = await client.get(LIST, headers=headers)
    assert await hits(client) == before + 1  # the second read was a hit...
    assert (again.content, answer_headers(again)) == (read.content, answer_headers(read))  # the very same answer
    assert statuses(read) == [(first, "active")]

    others = await book(client, other_headers, title.id)  # another reader's change: a page of their own
    assert statuses(await client.get(LIST, headers=other_headers)) == [(others, "active")]
    assert statuses(await client.get(LIST, headers=headers)) == [(first, "active")]

    second = await book(client, headers, title.id, days=2)
    assert statuses(await client.get(LIST, headers=headers)) == [(second, "active"), (first, "active")]
    assert (await client.post(f"{LIST}/{second}/cancel", headers=headers)).status_code == 200
    assert statuses(await client.get(LIST, headers=headers)) == [(second, "cancelled"), (first, "active")]
    assert (await client.post(f"{LIST}/{first}/return", headers=librarian)).status_code == 200  # by someone else
    assert statuses(await client.get(LIST, headers=headers)) == [(second, "cancelled"), (first, "returned")]
    assert reader.id != other.id


async def test_each_window_is_its_own_page_with_its_link(client: httpx.AsyncClient, ctx: AppContext) -> None:
    _, headers = await user_headers(ctx)
    title = await create_book(ctx, copies=5)
    ids = [await book(client, headers, title.id, days=day) for day in (1, 2, 3)]

    first = await client.get(LIST, params={"limit": 2}, headers=headers)
    cursor = first.json()["next_cursor"]
    assert cursor is not None and f"cursor={cursor}" in first.headers["link"]
    second = await client.get(LIST, params={"limit": 2, "cursor": cursor}, headers=headers)
    assert [item["id"] for item in first.json()["items"]] == ids[:0:-1]
    assert [item["id"] for item in second.json()["items"]] == ids[:1]
    assert "link" not in second.headers
    before = await hits(client)
    cached = await client.get(LIST, params={"limit": 2}, headers=headers)
    assert await hits(client) == before + 1
    assert (cached.content, cached.headers["link"]) == (first.content, first.headers["link"])
    bad = await client.get(LIST, params={"limit": 2, "cursor": "not-a-cursor"}, headers=headers)
    assert bad.status_code == 400  # an invalid cursor is an error every time, never a page


async def test_deleting_a_book_forgets_the_pages_that_showed_its_closed_bookings(
    client: httpx.AsyncClient, ctx: AppContext
) -> None:
    _, headers = await user_headers(ctx)
    _, librarian = await user_headers(ctx, Role.LIBRARIAN)
    kept, gone = await create_book(ctx, copies=1), await create_book(ctx, copies=1)
    stays = await book(client, headers, kept.id)
    goes = await book(client, headers, gone.id)
    assert (await client.post(f"{LIST}/{goes}/cancel", headers=headers)).status_code == 200
    assert statuses(await client.get(LIST, headers=headers)) == [(goes, "cancelled"), (stays, "active")]

    assert (await client.delete(f"/api/v1/books/{gone.id}", headers=librarian)).status_code == 204
    assert statuses(await client.get(LIST, headers=headers)) == [(stays, "active")]


async def test_librarians_and_filtered_lists_are_read_each_time(client: httpx.AsyncClient, ctx: AppContext) -> None:
    _, headers = await user_headers(ctx)
    _, librarian = await user_headers(ctx, Role.LIBRARIAN)
    title = await create_book(ctx, copies=2)
    await book(client, headers, title.id)
    before = await hits(client)
    for _ in range(2):
        assert (await client.get(LIST, headers=librarian)).status_code == 200
        assert (await client.get(LIST, params={"status": "active"}, headers=headers)).status_code == 200
    assert await hits(client) == before


@pytest.fixture
def store(cache_backend: CacheBackend) -> CacheBackend:
    """Each cache store in turn (the ``cache_backend`` fixture of ``tests/conftest.py``)."""
    return cache_backend


async def test_a_page_read_before_a_change_is_never_served_after_it(store: CacheBackend) -> None:
    pages = BookingPages(store, enabled=True, ttl=60)
    window = Window(limit=20, offset=0, cursor=None, total_cap=1000)
    reading, release = asyncio.Event(), asyncio.Event()
    loads: list[bytes] = []

    async def slow_load() -> bytes:
        reading.set()
        await release.wait()  # the database answered before the change below committed
        loads.append(b"old page")
        return b"old page"

    async def load(body: bytes) -> bytes:
        loads.append(body)
        return body

    slow = asyncio.create_task(pages.page(7, window, slow_load))
    await reading.wait()
    await pages.on_event(DomainEvent(type="booking.created", topics=("bookings",), data={"user_id": 7}, owner_id=7))
    release.set()
    assert await slow == b"old page"  # the reader that started before the change gets what it read...
    assert await pages.page(7, window, lambda: load(b"new page")) == b"new page"  # ...nobody after it
    assert await pages.page(7, window, lambda: load(b"unused")) == b"new page"  # and the new one is kept
    await pages.on_event(DomainEvent(type="book.deleted", topics=("books",), data={"id": 3}))
    assert await pages.page(7, window, lambda: load(b"after the deletion")) == b"after the deletion"
    assert loads == [b"old page", b"new page", b"after the deletion"]
    assert scope_of(7) == "bookings:7"


def test_pages_are_cached_only_where_every_worker_hears_of_a_change() -> None:
    memory = MemoryBackend(max_entries=10)
    assert pages_enabled("memory", memory, workers=1)
    assert not pages_enabled("memory", memory, workers=2)  # another worker's change would go unheard
    assert not pages_enabled(None, memory, workers=1)
    redis = RedisBackend(GuardedRedis(REDIS_URL, socket_timeout=1.0, breaker=CircuitBreaker("Redis", 3, 5)), "t_")
    assert pages_enabled("redis", redis, workers=4)


async def test_with_the_cache_off_every_read_goes_to_the_database(app_factory: AppFactory) -> None:
    app = await app_factory(cache_enabled=False)
    ctx: AppContext = app.state.context
    _, headers = await user_headers(ctx)
    title = await create_book(ctx, copies=2)
    async with client_for(app) as client:
        await book(client, headers, title.id)
        for _ in range(2):
            assert len((await client.get(LIST, headers=headers)).json()["items"]) == 1
        assert await hits(client) == 0


@pytest.mark.redis
async def test_a_change_through_one_worker_is_seen_through_the_other(
    app_factory: AppFactory, committed_url: str
) -> None:
    require_redis()
    prefix = f"t{uuid.uuid4().hex[:10]}_"
    shared = {"database_url": committed_url, "redis_url": REDIS_URL, "cache_key_prefix": prefix, "workers": 2}
    first, second = await app_factory(**shared), await app_factory(**shared)
    _, headers = await user_headers(first.state.context)
    title = await create_book(first.state.context, copies=3)
    async with client_for(first) as one, client_for(second) as two:
        earlier = await book(one, headers, title.id)
        for worker in (one, two):  # both read the page, the second worker from the cache the first filled
            assert statuses(await worker.get(LIST, headers=headers)) == [(earlier, "active")]
        assert await hits(two) == 1
        later = await book(one, headers, title.id, days=2)
        assert statuses(await two.get(LIST, headers=headers)) == [(later, "active"), (earlier, "active")]
        assert (await two.post(f"{LIST}/{earlier}/cancel", headers=headers)).status_code == 200
        assert statuses(await one.get(LIST, headers=headers)) == [(later, "active"), (earlier, "cancelled")]


@pytest.mark.redis
async def test_a_change_redis_did_not_hear_of_is_never_served_once_it_answers_again(
    app_factory: AppFactory, committed_url: str
) -> None:
    server = PrivateRedis()
    server.start()
    try:
        shared = {
            "database_url": committed_url,
            "redis_url": server.url,
            "cache_key_prefix": f"t{uuid.uuid4().hex[:10]}_",
            "workers": 2,
            "redis_socket_timeout": 0.2,
            "redis_breaker_failures": 2,
            "redis_breaker_reset_seconds": 600,
        }
        first, second = await app_factory(**shared), await app_factory(**shared)
        _, headers = await user_headers(first.state.context)
        title = await create_book(first.state.context, copies=3)
        breakers = [worker.state.context.redis.breaker for worker in (first, second)]
        async with client_for(first) as one, client_for(second) as two:
            earlier = await book(one, headers, title.id)
            assert statuses(await two.get(LIST, headers=headers)) == [(earlier, "active")]  # cached in Redis

            server.pause()  # Redis hangs: the change below cannot be announced
            later = await book(one, headers, title.id, days=2)
            during = [statuses(await worker.get(LIST, headers=headers)) for worker in (two, one)]
            assert during == [[(later, "active"), (earlier, "active")]] * 2  # read from the database meanwhile
            assert first.state.context.redis.state is CircuitState.OPEN  # the writer's calls timed out

            server.resume()  # the page from before the change is still in Redis: it must never be served
            for breaker in breakers:
                breaker.reset_timeout = 0  # the next call to Redis is a trial, which now succeeds
            for worker in (two, one):
                assert statuses(await worker.get(LIST, headers=headers)) == [(later, "active"), (earlier, "active")]
            assert all(breaker.state is CircuitState.CLOSED for breaker in breakers)
    finally:
        if server.process is not None:
            server.resume()
            server.stop()
