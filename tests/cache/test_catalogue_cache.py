"""Catalogue answers from the cache: ETags and 304s, invalidation by every write, and the clock."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from library_api.cache.backends import MemoryBackend
from library_api.db.base import utcnow
from library_api.dependencies.context import AppContext
from library_api.security.permissions import Role
from tests.conftest import AppFactory
from tests.support.factories import bearer, create_book, create_user, token_for, user_headers
from tests.support.http import client_for
from tests.support.images import png


def hits(text: str, kind: str) -> float:
    for line in text.splitlines():
        if line.startswith(f'cache_hits_total{{cache="{kind}"}}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_book_details_are_cached_with_an_etag_and_304(app_factory: AppFactory) -> None:
    app = await app_factory()
    book = await create_book(app.state.context, copies=2)
    async with client_for(app) as client:
        first = await client.get(f"/api/v1/books/{book.id}")
        second = await client.get(f"/api/v1/books/{book.id}")
        etag = first.headers["etag"]
        not_modified = await client.get(f"/api/v1/books/{book.id}", headers={"If-None-Match": etag})
        strong_form = await client.get(f"/api/v1/books/{book.id}", headers={"If-None-Match": etag[2:]})
        in_a_list = await client.get(f"/api/v1/books/{book.id}", headers={"If-None-Match": f'"other", {etag}'})
        star = await client.get(f"/api/v1/books/{book.id}", headers={"If-None-Match": "*"})
        stale = await client.get(f"/api/v1/books/{book.id}", headers={"If-None-Match": 'W/"0000"'})
        metrics = (await client.get("/metrics")).text
    assert first.status_code == second.status_code == 200
    assert first.content == second.content
    assert first.json()["available_now"] == 2
    assert etag.startswith('W/"') and second.headers["etag"] == etag
    assert first.headers["cache-control"] == "no-cache"
    for response in (not_modified, strong_form, in_a_list, star):
        assert response.status_code == 304
        assert response.content == b""
        assert response.headers["etag"] == etag
    assert stale.status_code == 200
    assert hits(metrics, "book") == 6


async def test_list_pages_are_cached_with_an_etag(app_factory: AppFactory) -> None:
    app = await app_factory()
    await create_book(app.state.context, title="Alpha")
    async with client_for(app) as client:
        first = await client.get("/api/v1/books", params={"q": "alph"})
        again = await client.get(
            "/api/v1/books", params={"q": "alph"}, headers={"If-None-Match": first.headers["etag"]}
        )
        other = await client.get("/api/v1/books", params={"q": "zzz"})
    assert first.json()["total"] == 1
    assert again.status_code == 304
    assert other.json()["total"] == 0
    assert other.headers["etag"] != first.headers["etag"]


async def test_every_catalogue_write_invalidates_what_it_changes(app_factory: AppFactory) -> None:
    app = await app_factory()
    ctx: AppContext = app.state.context
    _, librarian = await user_headers(ctx, Role.LIBRARIAN)
    reader = bearer(token_for(ctx, await create_user(ctx)))
    book = await create_book(ctx, copies=2, title="Before")
    url = f"/api/v1/books/{book.id}"
    async with client_for(app) as client:

        async def details() -> dict[str, object]:
            response = await client.get(url)
            assert response.status_code == 200, response.text
            return dict(response.json())

        async def listing() -> dict[str, object]:
            return dict((await client.get("/api/v1/books")).json())

        assert (await details())["title"] == "Before"
        assert (await listing())["total"] == 1

        await client.patch(url, json={"title": "After"}, headers=librarian)
        assert (await details())["title"] == "After"
        assert (await listing())["items"][0]["title"] == "After"  # type: ignore[index]

        await client.put(f"{url}/cover", files={"file": ("c.png", png(), "image/png")}, headers=librarian)
        assert (await details())["cover_url"] == f"{url}/cover"
        await client.delete(f"{url}/cover", headers=librarian)
        assert (await details())["cover_url"] is None

        now = utcnow()
        period = {"book_id": book.id, "start": now.isoformat(), "end": (now + timedelta(days=1)).isoformat()}
        booked = await client.post("/api/v1/bookings", json=period, headers=reader)
        assert booked.status_code == 201, booked.text
        assert (await details())["available_now"] == 1
        assert (await client.get("/api/v1/books", params={"available": "false"})).json()["total"] == 0
        second = await client.post("/api/v1/bookings", json=period, headers=reader)
        assert (await details())["available_now"] == 0
        assert (await client.get("/api/v1/books", params={"available": "false"})).json()["total"] == 1

        await client.post(f"/api/v1/bookings/{booked.json()['id']}/cancel", headers=reader)
        assert (await details())["available_now"] == 1
        await client.post(f"/api/v1/bookings/{second.json()['id']}/return", headers=librarian)
        assert (await details())["available_now"] == 2

        created = await client.post(
            "/api/v1/books", json={"isbn": "978-0-13-235088-4", "title": "New", "authors": ["A"]}, headers=librarian
        )
        assert created.status_code == 201
        assert (await listing())["total"] == 2
        assert (await client.delete(url, headers=librarian)).status_code == 204
        assert (await client.get(url)).status_code == 404
        assert (await listing())["total"] == 1


def metric(text: str, series: str) -> float:
    """The value of one series in a Prometheus exposition (0 when it is absent)."""
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_availability_follows_the_clock_without_any_write(client: httpx.AsyncClient, ctx: AppContext) -> None:
    """A booking that starts later changes ``available_now`` when it starts; the cached answer must not outlive it.

    The cache's clock (and its store's) is moved by the test: the answer is served from the cache a second before
    the booking starts, and read again, with the copy gone, exactly when it starts.
    """
    now = [time.time()]
    ctx.catalogue.clock = lambda: now[0]
    store = ctx.catalogue.backend
    assert isinstance(store, MemoryBackend)
    store.clock = lambda: now[0]
    book = await create_book(ctx, copies=3)
    reader = bearer(token_for(ctx, await create_user(ctx)))
    start = datetime.fromtimestamp(round(now[0]) + 60, UTC)  # within CACHE_DEFAULT_TIMEOUT
    period = {"book_id": book.id, "start": start.isoformat(), "end": (start + timedelta(hours=1)).isoformat()}
    assert (await client.post("/api/v1/bookings", json=period, headers=reader)).status_code == 201

    async def book_hits() -> float:
        return metric((await client.get("/metrics")).text, 'cache_hits_total{cache="book"}')

    url = f"/api/v1/books/{book.id}"
    assert (await client.get(url)).json()["available_now"] == 3
    hits = await book_hits()
    now[0] = start.timestamp() - 1
    assert (await client.get(url)).json()["available_now"] == 3
    assert await book_hits() == hits + 1  # served from the cache
    now[0] = start.timestamp()
    assert (await client.get(url)).json()["available_now"] == 2  # not a moment longer
    assert await book_hits() == hits + 1  # read again
    page = await client.get("/api/v1/books", params={"available": "true", "limit": 100})
    assert any(item["id"] == book.id and item["available_now"] == 2 for item in page.json()["items"])


async def test_with_the_cache_off_every_read_goes_to_the_database(app_factory: AppFactory) -> None:
    app = await app_factory(cache_enabled=False)
    book = await create_book(app.state.context)
    async with client_for(app) as client:
        responses = [await client.get(f"/api/v1/books/{book.id}") for _ in range(3)]
        metrics = (await client.get("/metrics")).text
        conditional = await client.get(
            f"/api/v1/books/{book.id}", headers={"If-None-Match": responses[0].headers["etag"]}
        )
    assert all(response.status_code == 200 for response in responses)
    assert hits(metrics, "book") == 0
    assert "cache_misses_total{" not in metrics
    assert conditional.status_code == 304  # ETags do not need the cache


@pytest.mark.parametrize("max_entries", [10])
async def test_the_memory_cache_is_bounded(app_factory: AppFactory, max_entries: int) -> None:
    app = await app_factory(cache_max_entries=max_entries)
    books = [await create_book(app.state.context) for _ in range(15)]
    async with client_for(app) as client:
        for book in books:
            assert (await client.get(f"/api/v1/books/{book.id}")).status_code == 200
    assert len(app.state.context.catalogue.backend._entries) == max_entries
