"""Cover uploads: recognised by content, size-limited, stored under random names, served back."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from library_api.books.covers import detect_image
from library_api.dependencies.context import AppContext
from library_api.security.permissions import Role
from tests.support.factories import create_book, user_headers
from tests.support.images import JPEG_1X1, png


@pytest.fixture
async def librarian(ctx: AppContext) -> dict[str, str]:
    return (await user_headers(ctx, Role.LIBRARIAN))[1]


def stored_files(ctx: AppContext) -> list[Path]:
    directory = ctx.books.covers.directory
    return sorted(directory.iterdir()) if directory.exists() else []


async def test_png_and_jpeg_are_stored_and_served(
    client: httpx.AsyncClient, ctx: AppContext, librarian: dict[str, str]
) -> None:
    book = await create_book(ctx)
    image = png()
    uploaded = await client.put(
        f"/api/v1/books/{book.id}/cover",
        files={"file": ("../../etc/passwd.jpg", image, "image/jpeg")},
        headers=librarian,
    )
    assert uploaded.status_code == 200, uploaded.text
    assert uploaded.json()["cover_url"] == f"/api/v1/books/{book.id}/cover"
    [stored] = stored_files(ctx)
    assert stored.suffix == ".png"  # the detected type, not the client's name
    assert len(stored.stem) == 32 and "passwd" not in stored.name

    served = await client.get(f"/api/v1/books/{book.id}/cover")
    assert served.status_code == 200
    assert served.headers["content-type"] == "image/png"
    assert served.content == image

    replaced = await client.put(
        f"/api/v1/books/{book.id}/cover", files={"file": ("cover.jpg", JPEG_1X1, "image/jpeg")}, headers=librarian
    )
    assert replaced.status_code == 200
    [new_file] = stored_files(ctx)
    assert new_file.suffix == ".jpg" and new_file != stored  # the old file is gone
    assert (await client.get(f"/api/v1/books/{book.id}/cover")).headers["content-type"] == "image/jpeg"

    assert (await client.delete(f"/api/v1/books/{book.id}/cover", headers=librarian)).status_code == 204
    assert stored_files(ctx) == []
    assert (await client.get(f"/api/v1/books/{book.id}/cover")).status_code == 404


async def test_renamed_text_file_is_415_and_nothing_is_written(
    client: httpx.AsyncClient, ctx: AppContext, librarian: dict[str, str]
) -> None:
    book = await create_book(ctx)
    response = await client.put(
        f"/api/v1/books/{book.id}/cover",
        files={"file": ("cover.png", b"just some text pretending to be a picture", "image/png")},
        headers=librarian,
    )
    assert response.status_code == 415
    assert response.json()["type"] == "urn:library-api:problem:unsupported-media-type"
    assert stored_files(ctx) == []
    assert (await client.get(f"/api/v1/books/{book.id}")).json()["cover_url"] is None


async def test_oversized_upload_is_413(client: httpx.AsyncClient, ctx: AppContext, librarian: dict[str, str]) -> None:
    book = await create_book(ctx)
    too_big = png() + b"\x00" * (ctx.settings.max_upload_size)
    response = await client.put(
        f"/api/v1/books/{book.id}/cover", files={"file": ("big.png", too_big, "image/png")}, headers=librarian
    )
    assert response.status_code == 413
    assert response.headers["content-type"] == "application/problem+json"
    assert stored_files(ctx) == []


async def test_cover_for_unknown_book_is_404_and_the_file_is_removed(
    client: httpx.AsyncClient, ctx: AppContext, librarian: dict[str, str]
) -> None:
    response = await client.put(
        "/api/v1/books/987654/cover", files={"file": ("c.png", png(), "image/png")}, headers=librarian
    )
    assert response.status_code == 404
    assert stored_files(ctx) == []


def test_detection_needs_the_real_signature() -> None:
    assert detect_image(png()[:32]) is not None
    assert detect_image(JPEG_1X1[:32]) is not None
    assert detect_image(b"\x89PNG\r\n\x1a\n" + b"\x00" * 24) is None  # a PNG signature without an IHDR chunk
    assert detect_image(b"GIF89a") is None
