"""The catalogue through HTTP: librarians manage it, everyone reads it."""

from __future__ import annotations

import httpx
import pytest

from library_api.dependencies.context import AppContext
from library_api.security.permissions import Role
from tests.support.factories import create_book, unique_isbn, user_headers


@pytest.fixture
async def librarian(ctx: AppContext) -> dict[str, str]:
    return (await user_headers(ctx, Role.LIBRARIAN))[1]


async def test_librarian_creates_updates_and_deletes_a_book(
    client: httpx.AsyncClient, librarian: dict[str, str]
) -> None:
    created = await client.post(
        "/api/v1/books",
        json={
            "isbn": "0-13-235088-2",
            "title": "Clean Code",
            "authors": ["Robert C. Martin"],
            "tags": ["Programming", "craft"],
            "year": 2008,
            "copies": 3,
        },
        headers=librarian,
    )
    assert created.status_code == 201, created.text
    book = created.json()
    assert book["isbn"] == "9780132350884"  # ISBN-10 normalised to ISBN-13
    assert book["tags"] == ["programming", "craft"]
    assert book["available_now"] == 3

    patched = await client.patch(
        f"/api/v1/books/{book['id']}", json={"title": "Clean Code (1st ed.)", "year": None}, headers=librarian
    )
    assert patched.status_code == 200
    assert patched.json()["title"] == "Clean Code (1st ed.)"
    assert patched.json()["year"] is None
    assert patched.json()["authors"] == ["Robert C. Martin"]  # untouched fields stay

    fetched = await client.get(f"/api/v1/books/{book['id']}")
    assert fetched.json()["title"] == "Clean Code (1st ed.)"

    assert (await client.delete(f"/api/v1/books/{book['id']}", headers=librarian)).status_code == 204
    gone = await client.get(f"/api/v1/books/{book['id']}")
    assert gone.status_code == 404
    assert gone.headers["content-type"] == "application/problem+json"


async def test_duplicate_isbn_in_either_notation_is_a_conflict(
    client: httpx.AsyncClient, librarian: dict[str, str]
) -> None:
    body = {"isbn": "978-0-13-235088-4", "title": "One", "authors": ["A"]}
    assert (await client.post("/api/v1/books", json=body, headers=librarian)).status_code == 201
    again = await client.post("/api/v1/books", json={**body, "isbn": "0132350882"}, headers=librarian)
    assert again.status_code == 409
    assert again.json()["type"] == "urn:library-api:problem:conflict"


@pytest.mark.parametrize("isbn", ["9780132350883", "0132350881", "12345", "978013235088X", "9770132350884"])
async def test_invalid_isbn_is_a_422_problem(client: httpx.AsyncClient, librarian: dict[str, str], isbn: str) -> None:
    response = await client.post(
        "/api/v1/books", json={"isbn": isbn, "title": "T", "authors": ["A"]}, headers=librarian
    )
    assert response.status_code == 422
    problem = response.json()
    assert response.headers["content-type"] == "application/problem+json"
    assert problem["type"] == "urn:library-api:problem:validation-error"
    assert [error["field"] for error in problem["errors"]] == ["body.isbn"]
    assert "Traceback" not in response.text


async def test_readers_and_anonymous_cannot_write(client: httpx.AsyncClient, ctx: AppContext) -> None:
    _, reader = await user_headers(ctx, Role.READER)
    body = {"isbn": unique_isbn(), "title": "T", "authors": ["A"]}
    assert (await client.post("/api/v1/books", json=body)).status_code == 401
    forbidden = await client.post("/api/v1/books", json=body, headers=reader)
    assert forbidden.status_code == 403
    assert "reader" not in forbidden.text  # the problem does not list the caller's roles


async def test_search_filters_sort_and_pagination(client: httpx.AsyncClient, ctx: AppContext) -> None:
    await create_book(ctx, title="Dune", authors=["Frank Herbert"], year=1965, tags=["sf", "classic"])
    await create_book(ctx, title="Dune Messiah", authors=["Frank Herbert"], year=1969, tags=["sf"])
    await create_book(ctx, title="Neuromancer", authors=["William Gibson"], year=1984, tags=["sf", "cyberpunk"])
    await create_book(ctx, title="Emma", authors=["Jane Austen"], year=1815, tags=["classic"])

    async def titles(**params: object) -> tuple[list[str], int]:
        response = await client.get("/api/v1/books", params=params)
        assert response.status_code == 200, response.text
        body = response.json()
        return [item["title"] for item in body["items"]], body["total"]

    assert await titles(q="dune") == (["Dune", "Dune Messiah"], 2)
    assert await titles(q="HERBERT", sort="-year") == (["Dune Messiah", "Dune"], 2)
    assert await titles(author="william gibson") == (["Neuromancer"], 1)
    assert await titles(tag=["sf", "classic"]) == (["Dune"], 1)
    assert await titles(year_from=1900, year_to=1970, sort="year") == (["Dune", "Dune Messiah"], 2)
    assert await titles(sort="title", limit=2) == (["Dune", "Dune Messiah"], 4)
    assert await titles(sort="title", limit=2, offset=2) == (["Emma", "Neuromancer"], 4)
    assert await titles(sort="title", limit=2, offset=10) == ([], 4)
    assert await titles(q="100%_") == ([], 0)  # LIKE wildcards are literal


@pytest.mark.parametrize(
    "params",
    [{"limit": 0}, {"limit": 101}, {"offset": -1}, {"sort": "nonsense"}, {"year_from": "x"}, {"q": ""}],
)
async def test_bad_list_parameters_are_422(client: httpx.AsyncClient, params: dict[str, object]) -> None:
    response = await client.get("/api/v1/books", params=params)
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"].startswith("query.")


async def test_update_validates_and_404s(client: httpx.AsyncClient, librarian: dict[str, str], ctx: AppContext) -> None:
    book = await create_book(ctx)
    assert (await client.patch("/api/v1/books/999999", json={"title": "x"}, headers=librarian)).status_code == 404
    assert (await client.patch(f"/api/v1/books/{book.id}", json={"copies": 0}, headers=librarian)).status_code == 422
    unknown = await client.patch(f"/api/v1/books/{book.id}", json={"id": 5}, headers=librarian)
    assert unknown.status_code == 422
    other = await create_book(ctx)
    clash = await client.patch(f"/api/v1/books/{book.id}", json={"isbn": other.isbn}, headers=librarian)
    assert clash.status_code == 409


async def test_tags_and_authors_filters_follow_updates(
    client: httpx.AsyncClient, librarian: dict[str, str], ctx: AppContext
) -> None:
    book = await create_book(ctx, title="Retagged", authors=["Old Name"], tags=["old"])
    await client.patch(f"/api/v1/books/{book.id}", json={"tags": ["new"], "authors": ["New Name"]}, headers=librarian)
    assert (await client.get("/api/v1/books", params={"tag": "old"})).json()["total"] == 0
    assert (await client.get("/api/v1/books", params={"tag": "new"})).json()["total"] == 1
    assert (await client.get("/api/v1/books", params={"author": "new name"})).json()["total"] == 1
    assert (await client.get("/api/v1/books", params={"q": "old name"})).json()["total"] == 0
