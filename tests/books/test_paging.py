"""Lists through HTTP, page after page: cursors and ``Link`` headers, capped totals, bounded offsets.

The settings here cap the count at 3 and the offset at 4, so that the edges show on a handful of rows.
"""

from __future__ import annotations

import base64
import json
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

from library_api.app import create_app
from library_api.books.paging import InvalidCursor, decode_cursor, encode_cursor, next_cursor_in
from library_api.config import Settings
from library_api.db.base import utcnow
from library_api.db.engine import Database
from library_api.dependencies.context import AppContext
from library_api.security.permissions import Role
from tests.conftest import fast_settings
from tests.support.factories import create_book, user_headers

CAP = 3
MAX_OFFSET = 4


@pytest.fixture
def settings(shared_engine: AsyncEngine, tmp_path: Path) -> Settings:
    return fast_settings(
        database_url=shared_engine.url.render_as_string(hide_password=False),
        upload_dir=tmp_path / "uploads",
        list_total_cap=CAP,
        max_list_offset=MAX_OFFSET,
    )


async def walk(
    client: httpx.AsyncClient, path: str, headers: dict[str, str] | None = None, **params: object
) -> list[int]:
    """Every id of a list, following ``Link: rel=next`` from the first page; checks each page on the way."""
    ids: list[int] = []
    response = await client.get(path, params={"limit": 2, **params}, headers=headers)
    while True:
        assert response.status_code == 200, response.text
        body = response.json()
        ids += [item["id"] for item in body["items"]]
        link = response.headers.get("link")
        if body["next_cursor"] is None:
            assert link is None
            return ids
        assert link == f'<{path}?{_query(params, body["next_cursor"])}>; rel="next"'
        response = await client.get(link[1:].partition(">")[0], headers=headers)


def _query(params: dict[str, object], cursor: str) -> str:
    pairs = [f"{name}={value}" for name, value in {"limit": 2, **params}.items() if name != "offset"]
    return "&".join([*pairs, f"cursor={cursor}"])


@pytest.mark.parametrize(
    ("sort", "expected"),
    [
        ("title", ["Alpha", "Alpha", "Beta", "Gamma", "Omega"]),
        ("-title", ["Omega", "Gamma", "Beta", "Alpha", "Alpha"]),
        ("year", [1950, 1990, 1990, None, None]),
        ("-year", [1990, 1990, 1950, None, None]),
        ("created_at", None),
        ("-created_at", None),
        ("id", None),
        ("-id", None),
    ],
)
async def test_cursors_walk_every_sort_once_through_ties_and_unknown_years(
    client: httpx.AsyncClient, ctx: AppContext, sort: str, expected: list[object] | None
) -> None:
    books = [
        await create_book(ctx, title=title, year=year)
        for title, year in [("Gamma", 1990), ("Alpha", None), ("Omega", 1950), ("Alpha", 1990), ("Beta", None)]
    ]
    by_id = {book.id: book for book in books}
    ids = await walk(client, "/api/v1/books", sort=sort, offset=0)
    assert sorted(ids) == sorted(by_id)  # each book once
    if expected is None:
        ordered = sorted(by_id, key=lambda i: (by_id[i].created_at, i) if "created" in sort else i)
        assert ids == (ordered[::-1] if sort.startswith("-") else ordered)
    else:
        field = sort.lstrip("-")
        assert [getattr(by_id[i], field) for i in ids] == expected
        ties = [i for i in ids if getattr(by_id[i], field) == expected[0]]
        assert ties == sorted(ties, reverse=sort.startswith("-"))  # ties broken by id, in the sort's direction


async def test_totals_are_exact_up_to_the_cap_then_a_lower_bound(client: httpx.AsyncClient, ctx: AppContext) -> None:
    for number in range(5):
        await create_book(ctx, title=f"Capped {number}", tags=["many"] if number else ["many", "one"])
    many = (await client.get("/api/v1/books", params={"tag": "many", "limit": 1})).json()
    assert (many["total"], many["total_relation"]) == (CAP, "gte")
    one = (await client.get("/api/v1/books", params={"tag": "one"})).json()
    assert (one["total"], one["total_relation"], one["next_cursor"]) == (1, "eq", None)
    past = (await client.get("/api/v1/books", params={"tag": "one", "offset": 2})).json()
    assert (past["items"], past["total"], past["total_relation"]) == ([], 1, "eq")
    none = (await client.get("/api/v1/books", params={"tag": "none"})).json()
    assert (none["items"], none["total"], none["total_relation"]) == ([], 0, "eq")


async def test_availability_filters_use_the_copies_in_use_now(client: httpx.AsyncClient, ctx: AppContext) -> None:
    taken = await create_book(ctx, title="Taken", tags=["avail"])
    free = await create_book(ctx, title="Free", tags=["avail"], copies=2)
    _, reader = await user_headers(ctx)
    start = utcnow().replace(microsecond=0)
    period = {"start": start.isoformat(), "end": (start + timedelta(days=2)).isoformat()}
    for book_id in (taken.id, free.id):
        created = await client.post("/api/v1/bookings", json={"book_id": book_id, **period}, headers=reader)
        assert created.status_code == 201, created.text

    async def listed(available: bool) -> list[tuple[str, int]]:
        body = (await client.get("/api/v1/books", params={"tag": "avail", "available": available})).json()
        return [(item["title"], item["available_now"]) for item in body["items"]]

    assert await listed(True) == [("Free", 1)]
    assert await listed(False) == [("Taken", 0)]


@pytest.mark.parametrize(
    ("params", "slug"),
    [
        ({"cursor": "%%%"}, "invalid-cursor"),
        ({"cursor": encode_cursor("title", ["Alpha", 1])}, "invalid-cursor"),  # made for another sort
        ({"cursor": encode_cursor("id", ["1"])}, "invalid-cursor"),  # a key of the wrong type
        ({"cursor": encode_cursor("id", [True])}, "invalid-cursor"),
        ({"cursor": encode_cursor("id", [2**40])}, "invalid-cursor"),
        ({"cursor": encode_cursor("id", [1, 2])}, "invalid-cursor"),
        ({"cursor": base64.urlsafe_b64encode(json.dumps({"a": 1}).encode()).decode()}, "invalid-cursor"),
        ({"cursor": encode_cursor("id", [1]), "offset": 2}, "offset-with-cursor"),
        ({"offset": MAX_OFFSET + 1}, "offset-too-deep"),
    ],
)
async def test_bad_windows_are_400_problems(client: httpx.AsyncClient, params: dict[str, object], slug: str) -> None:
    response = await client.get("/api/v1/books", params={"sort": "id", **params})
    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["type"].endswith(slug)


@pytest.mark.parametrize("sort", ["created_at", "-created_at"])
async def test_creation_time_cursors_need_an_aware_instant(client: httpx.AsyncClient, sort: str) -> None:
    for bad in ("2026-01-01T00:00:00", "yesterday", 5):
        response = await client.get("/api/v1/books", params={"sort": sort, "cursor": encode_cursor(sort, [bad, 1])})
        assert response.status_code == 400, response.text


def test_cursors_round_trip_and_refuse_what_they_did_not_make() -> None:
    assert decode_cursor(encode_cursor("title", ['Ünïcode, "quoted"', 7]), "title", (str, int)) == (
        'Ünïcode, "quoted"',
        7,
    )
    with pytest.raises(InvalidCursor):
        decode_cursor("A" * 2000, "id", (int,))
    assert next_cursor_in(b'{"items":[],"next_cursor":null}') is None
    assert next_cursor_in(b'{"items":[]}') is None
    assert next_cursor_in(b'{"items":[],"next_cursor":"abc_-"}') == "abc_-"


async def test_booking_lists_page_by_cursor_for_readers_and_librarians(
    client: httpx.AsyncClient, ctx: AppContext
) -> None:
    title = await create_book(ctx, copies=10)
    _, reader = await user_headers(ctx)
    _, librarian = await user_headers(ctx, Role.LIBRARIAN)
    start = utcnow().replace(microsecond=0) + timedelta(days=1)
    period = {"start": start.isoformat(), "end": (start + timedelta(days=1)).isoformat()}
    ids = []
    for _ in range(5):
        created = await client.post("/api/v1/bookings", json={"book_id": title.id, **period}, headers=reader)
        ids.append(created.json()["id"])
    newest_first = ids[::-1]
    assert await walk(client, "/api/v1/bookings", reader) == newest_first
    assert await walk(client, "/api/v1/bookings", librarian, book_id=title.id) == newest_first
    mine = (await client.get("/api/v1/bookings", params={"limit": 2}, headers=reader)).json()
    assert (mine["total"], mine["total_relation"]) == (CAP, "gte")
    past = (await client.get("/api/v1/bookings", params={"offset": 4, "book_id": title.id}, headers=librarian)).json()
    assert ([item["id"] for item in past["items"]], past["total_relation"]) == (newest_first[4:], "gte")
    beyond = (await client.get("/api/v1/bookings", params={"offset": 4, "limit": 2}, headers=reader)).json()
    assert beyond["next_cursor"] is None
    deep = await client.get("/api/v1/bookings", params={"offset": MAX_OFFSET + 1}, headers=reader)
    assert deep.status_code == 400 and deep.json()["type"].endswith("offset-too-deep")
    wrong = await client.get("/api/v1/bookings", params={"cursor": encode_cursor("title", ["x", 1])}, headers=reader)
    assert wrong.status_code == 400 and wrong.json()["type"].endswith("invalid-cursor")


@pytest.mark.parametrize("cache_enabled", [True, False])
async def test_the_availability_horizon_is_read_only_for_answers_that_are_kept(
    settings: Settings, database: Database, cache_enabled: bool
) -> None:
    await create_book_in(database, settings)
    statements: list[str] = []

    def record(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        statements.append(statement)

    application = create_app(settings.model_copy(update={"cache_enabled": cache_enabled}), database=database)
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            event.listen(database.engine.sync_engine, "before_cursor_execute", record)
            try:
                assert (await http.get("/api/v1/books")).status_code == 200
            finally:
                event.remove(database.engine.sync_engine, "before_cursor_execute", record)
    horizon = [statement for statement in statements if "min(bookings.end_at)" in statement]
    assert len(horizon) == (1 if cache_enabled else 0)


async def create_book_in(database: Database, settings: Settings) -> None:
    """One book, written through the service as the API would."""
    application = create_app(settings, database=database)
    async with application.router.lifespan_context(application):
        await create_book(application.state.context, title="Horizon")


async def test_an_authors_books_follow_renames_and_appear_once(client: httpx.AsyncClient, ctx: AppContext) -> None:
    second = await create_book(ctx, title="Carol", authors=["Ann Lee", "ann lee"])
    await create_book(ctx, title="Bravo", authors=["Ann Lee"])
    _, librarian = await user_headers(ctx, Role.LIBRARIAN)
    renamed = await client.patch(f"/api/v1/books/{second.id}", json={"title": "Alpha"}, headers=librarian)
    assert renamed.status_code == 200, renamed.text

    async def titles(sort: str) -> list[str]:
        body = (await client.get("/api/v1/books", params={"author": "ANN LEE", "sort": sort})).json()
        return [item["title"] for item in body["items"]]

    assert await titles("title") == ["Alpha", "Bravo"]
    assert await titles("-title") == ["Bravo", "Alpha"]
    assert await walk(client, "/api/v1/books", author="ann lee", sort="-title") == [
        item["id"]
        for item in (await client.get("/api/v1/books", params={"author": "ann lee", "sort": "-title"})).json()["items"]
    ]
