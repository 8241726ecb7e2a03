"""A full upload volume, for real: a 512 KiB tmpfs under ``UPLOAD_DIR`` filled until a cover no longer fits.

The kernel's own ``ENOSPC`` reaches the service half-way through writing the temporary file. The upload is a
507 problem with ``Retry-After``; no ``.part`` file stays; the previous cover is still served, byte for byte;
readiness and ``/health/detailed`` report the volume; once space is freed the same upload succeeds.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from library_api.books.covers import PNG, CoverStore
from library_api.dependencies.context import AppContext
from library_api.security.permissions import Role
from tests.conftest import AppFactory
from tests.support.factories import create_book, user_headers
from tests.support.filesystems import fill, small_filesystem
from tests.support.http import client_for
from tests.support.images import png

VOLUME_KIB = 512
MAX_UPLOAD = 256 * 1024


@pytest.fixture
def upload_volume(tmp_path: Path) -> Iterator[Path]:
    """``UPLOAD_DIR`` of the apps ``app_factory`` builds, as a small filesystem (set up before, removed after)."""
    with small_filesystem(tmp_path / "uploads", VOLUME_KIB) as volume:
        yield volume


def leftovers(volume: Path) -> list[str]:
    return sorted(path.name for path in volume.rglob("*") if path.name.endswith(".part"))


def names_under(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.rglob("*"))


def real(path: Path) -> str:
    return str(path.resolve())


async def put_cover(client: httpx.AsyncClient, book_id: int, image: bytes, headers: dict[str, str]) -> httpx.Response:
    return await client.put(
        f"/api/v1/books/{book_id}/cover", files={"file": ("cover.png", image, "image/png")}, headers=headers
    )


async def test_a_full_volume_is_a_507_leaves_no_partial_file_and_heals(
    upload_volume: Path, app_factory: AppFactory
) -> None:
    app = await app_factory(max_upload_size=MAX_UPLOAD)
    ctx: AppContext = app.state.context
    librarian = (await user_headers(ctx, Role.LIBRARIAN))[1]
    book = await create_book(ctx)
    first = png(8, 8)
    large = png() + os.urandom(200 * 1024)  # a PNG header is all the type check reads
    async with client_for(app) as client:
        assert (await put_cover(client, book.id, first, librarian)).status_code == 200

        filler = fill(upload_volume, leave_bytes=100 * 1024)  # room for half of the next cover
        for _ in range(7):
            refused = await put_cover(client, book.id, large, librarian)
            assert refused.status_code == 507, refused.text
            assert refused.headers["content-type"] == "application/problem+json"
            assert refused.json()["type"] == "urn:library-api:problem:insufficient-storage"
            assert int(refused.headers["Retry-After"]) > 0
        assert leftovers(upload_volume) == []
        served = await client.get(f"/api/v1/books/{book.id}/cover")
        assert (served.status_code, served.content) == (200, first)

        ready = await client.get("/health/ready")
        assert ready.status_code == 200  # everything but uploads still works
        assert ready.json()["status"] == "degraded"
        assert ready.json()["checks"]["disk"] == "critical"
        detailed = await client.get("/health/detailed")
        disk = detailed.json()["checks"]["disk"]
        assert detailed.status_code == 503
        assert disk["status"] == "critical"
        assert disk["free_bytes"] < MAX_UPLOAD
        assert disk["path"] == real(upload_volume)

        filler.unlink()
        stored = await put_cover(client, book.id, large, librarian)
        assert stored.status_code == 200, stored.text
        assert (await client.get(f"/api/v1/books/{book.id}/cover")).content == large
        assert leftovers(upload_volume) == []
        assert len(names_under(upload_volume / "covers")) == 1  # the previous cover's file is gone
        assert (await client.get("/health/ready")).json()["checks"]["disk"] == "ok"
        assert (await client.get("/health/detailed")).json()["checks"]["disk"]["status"] != "critical"


async def test_a_failure_other_than_space_is_not_a_507_and_leaves_nothing(tmp_path: Path) -> None:
    not_a_directory = tmp_path / "uploads"
    not_a_directory.write_bytes(b"")
    with pytest.raises(NotADirectoryError):
        await CoverStore(not_a_directory).save(png(), PNG)
    assert names_under(tmp_path) == ["uploads"]
