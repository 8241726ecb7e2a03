"""Fixes the contract fuzzer asked for, pinned: JSON types taken at their word, a unique ISBN on every path,
a cover for a missing book, and e-mail addresses the document calls valid."""

from __future__ import annotations

import httpx

from library_api.dependencies.context import AppContext
from library_api.security.permissions import Role
from tests.support.factories import PASSWORD, create_book, create_user, user_headers
from tests.support.images import png


async def test_booleans_are_not_numbers_and_numbers_are_not_booleans(
    client: httpx.AsyncClient, ctx: AppContext
) -> None:
    _, librarian = await user_headers(ctx, Role.LIBRARIAN)
    _, admin = await user_headers(ctx, Role.ADMIN)
    reader = await create_user(ctx)
    book = await create_book(ctx)
    year = await client.patch(f"/api/v1/books/{book.id}", json={"year": False}, headers=librarian)
    whole = await client.patch(f"/api/v1/books/{book.id}", json={"year": 1999.0}, headers=librarian)
    active = await client.patch(f"/api/v1/users/{reader.id}", json={"is_active": 0}, headers=admin)
    assert year.status_code == 422
    assert whole.status_code == 200 and whole.json()["year"] == 1999
    assert active.status_code == 422
    assert (await client.get(f"/api/v1/users/{reader.id}", headers=admin)).json()["is_active"] is True


async def test_taking_another_books_isbn_with_new_authors_is_a_409(client: httpx.AsyncClient, ctx: AppContext) -> None:
    _, librarian = await user_headers(ctx, Role.LIBRARIAN)
    first = await create_book(ctx)
    second = await create_book(ctx)
    answer = await client.patch(
        f"/api/v1/books/{second.id}", json={"isbn": first.isbn, "authors": ["Someone Else"]}, headers=librarian
    )
    assert answer.status_code == 409, answer.text
    assert (await client.get(f"/api/v1/books/{second.id}")).json()["isbn"] == second.isbn


async def test_a_cover_for_a_missing_book_is_a_404_whatever_the_file(
    client: httpx.AsyncClient, ctx: AppContext
) -> None:
    _, librarian = await user_headers(ctx, Role.LIBRARIAN)
    for content in (b"", b"not an image", png()):
        answer = await client.put(
            "/api/v1/books/2147483646/cover", files={"file": ("f", content, "image/png")}, headers=librarian
        )
        assert answer.status_code == 404, answer.text


async def test_test_domains_are_accepted_and_undeliverable_ones_refused(client: httpx.AsyncClient) -> None:
    accepted = await client.post(
        "/api/v1/auth/register", json={"email": "$~@Qwx.Lab.TEST", "password": PASSWORD, "full_name": "T"}
    )
    refused = await client.post(
        "/api/v1/auth/register", json={"email": "someone@printer.local", "password": PASSWORD, "full_name": "T"}
    )
    too_long = await client.post(
        "/api/v1/auth/register", json={"email": "a" * 250 + "@x.org", "password": PASSWORD, "full_name": "T"}
    )
    assert accepted.status_code == 201 and accepted.json()["email"] == "$~@qwx.lab.test"
    assert refused.status_code == 422
    assert too_long.status_code == 422
