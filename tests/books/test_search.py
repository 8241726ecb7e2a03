"""Catalogue search through HTTP on both databases: full-text matches ranked, web-search syntax, fallbacks."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import httpx
import pytest

from library_api.books.search import parse_query
from library_api.db.base import utcnow
from library_api.dependencies.context import AppContext
from library_api.security.permissions import Role
from tests.support.factories import create_book, user_headers


async def page(client: httpx.AsyncClient, **params: object) -> dict[str, Any]:
    response = await client.get("/api/v1/books", params=params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def booking_for(book_id: int) -> dict[str, object]:
    """A booking of ``book_id`` holding its copy from now for a day."""
    start = utcnow().replace(microsecond=0)
    return {"book_id": book_id, "start": start.isoformat(), "end": (start + timedelta(days=1)).isoformat()}


async def titles(client: httpx.AsyncClient, **params: object) -> list[str]:
    return [item["title"] for item in (await page(client, **params))["items"]]


async def test_a_title_match_outranks_an_author_match_which_outranks_a_description_match(
    client: httpx.AsyncClient, ctx: AppContext
) -> None:
    # Created description first, so that the id order (the tie-break) is the reverse of the expected ranking.
    await create_book(ctx, title="Coastal Charts", description="Every lighthouse of the northern coast")
    await create_book(ctx, title="Harbour Lights", authors=["Lighthouse Keeper"])
    await create_book(ctx, title="The Lighthouse")
    await create_book(ctx, title="Unrelated Novel", description="Nothing to see here")

    assert await titles(client, q="lighthouse") == ["The Lighthouse", "Harbour Lights", "Coastal Charts"]
    # an explicit sort is still honoured, over the same matches
    assert await titles(client, q="lighthouse", sort="title") == ["Coastal Charts", "Harbour Lights", "The Lighthouse"]
    assert await titles(client, q="lighthouse", sort="relevance", limit=1) == ["The Lighthouse"]


async def test_tags_and_descriptions_are_searched(client: httpx.AsyncClient, ctx: AppContext) -> None:
    await create_book(ctx, title="Plain Title", tags=["cartography"])
    await create_book(ctx, title="Other Title", description="A treatise on cartography")
    await create_book(ctx, title="Third Title")

    found = await page(client, q="cartography")
    assert sorted(item["title"] for item in found["items"]) == ["Other Title", "Plain Title"]
    assert (found["total"], found["total_relation"]) == (2, "eq")


async def test_web_search_syntax_phrases_exclusions_and_or(client: httpx.AsyncClient, ctx: AppContext) -> None:
    await create_book(ctx, title="Silent River")
    await create_book(ctx, title="River of Silent Night")
    await create_book(ctx, title="Winter Orchard")

    assert await titles(client, q='"silent river"') == ["Silent River"]
    assert await titles(client, q="river -night") == ["Silent River"]
    assert await titles(client, q='-"silent river" river') == ["River of Silent Night"]
    assert sorted(await titles(client, q="orchard or night")) == ["River of Silent Night", "Winter Orchard"]
    assert await titles(client, q="river orchard") == []  # every word must appear
    assert await titles(client, q="-river") == (
        [] if ctx.database.engine.dialect.name == "sqlite" else ["Winter Orchard"]
    )


async def test_partial_words_are_found_after_full_matches(client: httpx.AsyncClient, ctx: AppContext) -> None:
    await create_book(ctx, title="Dunes of the South")
    await create_book(ctx, title="Dune")
    await create_book(ctx, title="Arrakis", authors=["Dune Author"])

    # full-text matches of the word first (title, then author), then the title where it is only part of a word
    assert await titles(client, q="dune") == ["Dune", "Arrakis", "Dunes of the South"]
    assert await titles(client, q="arrak") == ["Arrakis"]
    assert await titles(client, q="dune", sort="-title") == ["Dunes of the South", "Dune", "Arrakis"]


async def test_a_typo_still_finds_the_book_through_trigram_similarity(
    client: httpx.AsyncClient, ctx: AppContext
) -> None:
    await create_book(ctx, title="Neuromancer", authors=["William Gibson"])
    await create_book(ctx, title="Count Zero", authors=["William Gibson"])
    await create_book(ctx, title="Old Name")

    if ctx.database.engine.dialect.name == "sqlite":
        # documented: SQLite has no trigram similarity, so its fallback is the substring alone
        assert await titles(client, q="neuromacner") == []
        assert await titles(client, q="neuroman") == ["Neuromancer"]
        return
    assert await titles(client, q="neuromacner") == ["Neuromancer"]
    assert await titles(client, q="gibsen zero") == ["Count Zero"]  # every word, each with its typo
    assert await titles(client, q="gibsen") == ["Neuromancer", "Count Zero"]
    assert await titles(client, q="new name") == []  # one similar word is not enough
    assert await titles(client, q='"neuromacner"') == []  # a query with operators is taken as typed
    assert await titles(client, q="neuromacner", sort="title") == []  # typos are for the ranked search only


async def test_relevance_pages_follow_the_cursor_without_gaps_or_repeats(
    client: httpx.AsyncClient, ctx: AppContext
) -> None:
    for number in range(7):
        await create_book(ctx, title=f"Volume {number}", description="compass " * (number % 3 + 1))
    await create_book(ctx, title="Compass")
    expected = await titles(client, q="compass", limit=100)
    assert expected[0] == "Compass" and len(expected) == 8

    seen: list[str] = []
    params: dict[str, object] = {"q": "compass", "limit": 3}
    while True:
        response = await client.get("/api/v1/books", params=params)
        body = response.json()
        seen += [item["title"] for item in body["items"]]
        if body["next_cursor"] is None:
            assert "Link" not in response.headers
            break
        assert 'rel="next"' in response.headers["Link"]
        params["cursor"] = body["next_cursor"]
    assert seen == expected
    # the description's repeated word ranks a volume higher: three mentions before two before one
    assert expected[1:4] == ["Volume 2", "Volume 5", "Volume 1"]


async def test_search_follows_every_write(client: httpx.AsyncClient, ctx: AppContext) -> None:
    _, librarian = await user_headers(ctx, Role.LIBRARIAN)
    book = await create_book(ctx, title="Quartz Garden", tags=["minerals"])
    changed = await client.patch(
        f"/api/v1/books/{book.id}", json={"title": "Basalt Garden", "tags": ["geology"]}, headers=librarian
    )
    assert changed.status_code == 200
    assert await titles(client, q="quartz") == []
    assert await titles(client, q="minerals") == []
    assert await titles(client, q="basalt geology") == ["Basalt Garden"]
    assert (await client.delete(f"/api/v1/books/{book.id}", headers=librarian)).status_code == 204
    assert await titles(client, q="basalt") == []


async def test_relevance_without_q_is_the_title_order_and_a_foreign_cursor_is_refused(
    client: httpx.AsyncClient, ctx: AppContext
) -> None:
    await create_book(ctx, title="Beta")
    await create_book(ctx, title="Alpha")
    assert await titles(client, sort="relevance") == ["Alpha", "Beta"]

    title_cursor = (await page(client, sort="title", limit=1))["next_cursor"]
    refused = await client.get("/api/v1/books", params={"q": "alpha", "cursor": title_cursor})
    assert refused.status_code == 400
    assert refused.json()["type"] == "urn:library-api:problem:invalid-cursor"


@pytest.mark.parametrize(
    ("q", "fts5", "plain"),
    [
        ("Silent River", '("Silent" AND "River")', "silent river"),
        ('"silent river" -night', '("silent river" NOT "night")', None),
        ("a or b -c", '("a") OR ("b" NOT "c")', None),
        ("-only", None, None),
        ('say "hi', '("say" AND "hi")', None),
        ('a"b && -', '("a""b")', 'a"b && -'),
    ],
)
def test_queries_are_read_with_the_web_search_syntax(q: str, fts5: str | None, plain: str | None) -> None:
    query = parse_query(q)
    assert query.fts5() == fts5
    assert query.plain == plain


async def test_ranked_search_keeps_every_other_filter(client: httpx.AsyncClient, ctx: AppContext) -> None:
    _, reader = await user_headers(ctx, Role.READER)
    await create_book(ctx, title="Atlas of Tides", tags=["maps"], year=1990)
    held = await create_book(ctx, title="Atlas of Winds", tags=["maps"], year=1995)
    await create_book(ctx, title="Atlas of Stars", tags=["sky"], year=1995)
    booked = await client.post("/api/v1/bookings", json=booking_for(held.id), headers=reader)
    assert booked.status_code == 201, booked.text

    assert await titles(client, q="atlas", tag="maps") == ["Atlas of Tides", "Atlas of Winds"]
    assert await titles(client, q="atlas", tag="maps", available=True) == ["Atlas of Tides"]
    assert await titles(client, q="atlas", tag="maps", available=False) == ["Atlas of Winds"]
    assert await titles(client, q="atla", year_from=1995) == ["Atlas of Winds", "Atlas of Stars"]
