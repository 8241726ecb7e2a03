"""The request body limit: declared and streamed bodies, and the larger limit of cover uploads."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx

from library_api.dependencies.context import AppContext
from library_api.security.permissions import Role
from tests.support.factories import create_book, user_headers


async def test_declared_length_over_the_limit_is_refused(client: httpx.AsyncClient, ctx: AppContext) -> None:
    body = b"{" + b" " * ctx.settings.max_request_body_size + b"}"
    response = await client.post("/api/v1/auth/register", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert response.json()["type"] == "urn:library-api:problem:content-too-large"


async def test_streamed_body_over_the_limit_is_refused(client: httpx.AsyncClient, ctx: AppContext) -> None:
    chunk = b" " * 65536

    async def stream() -> AsyncIterator[bytes]:
        for _ in range(ctx.settings.max_request_body_size // len(chunk) + 2):
            yield chunk

    response = await client.post(
        "/api/v1/auth/register", content=stream(), headers={"content-type": "application/json"}
    )
    assert response.status_code == 413
    assert response.headers["content-type"] == "application/problem+json"


async def test_cover_route_allows_more_than_the_general_limit(client: httpx.AsyncClient, ctx: AppContext) -> None:
    _, librarian = await user_headers(ctx, Role.LIBRARIAN)
    book = await create_book(ctx)
    # bigger than the general limit, smaller than MAX_UPLOAD_SIZE: the route answers, not the middleware
    payload = b"x" * (ctx.settings.max_request_body_size + 1024)
    response = await client.put(
        f"/api/v1/books/{book.id}/cover", files={"file": ("a.png", payload, "image/png")}, headers=librarian
    )
    assert response.status_code == 415
