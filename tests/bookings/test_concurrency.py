"""At no instant may a book's active bookings exceed its copies, whatever the concurrency."""

from __future__ import annotations

import asyncio
import subprocess
from collections import Counter
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from library_api.app import create_app
from library_api.db.base import utcnow
from library_api.dependencies.context import AppContext
from library_api.holdings.models import Booking
from tests.conftest import fast_settings
from tests.support.cli import invoke
from tests.support.factories import PASSWORD, bearer, create_book, create_user, token_for, unique_isbn
from tests.support.processes import TEST_ENVIRONMENT, ServerProcess

pytestmark = pytest.mark.children_unmeasured

READERS = 50
COPIES = 2


def period(days_from_now: int = 1, length_days: int = 3) -> dict[str, str]:
    start = utcnow().replace(microsecond=0) + timedelta(days=days_from_now)
    return {"start": start.isoformat(), "end": (start + timedelta(days=length_days)).isoformat()}


async def test_fifty_readers_race_for_two_copies_with_a_real_pool(committed_url: str, tmp_path: Path) -> None:
    settings = fast_settings(
        database_url=committed_url, upload_dir=tmp_path, database_pool_size=10, database_max_overflow=10
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        ctx: AppContext = app.state.context
        book = await create_book(ctx, copies=COPIES)
        readers = [await create_user(ctx) for _ in range(READERS)]
        headers = [bearer(token_for(ctx, reader)) for reader in readers]
        body = {"book_id": book.id, **period()}
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            responses = await asyncio.gather(*(client.post("/api/v1/bookings", json=body, headers=h) for h in headers))
            statuses = Counter(response.status_code for response in responses)
            assert statuses == {201: COPIES, 409: READERS - COPIES}, statuses
            async with ctx.database.sessionmaker() as session:
                rows = (await session.execute(select(func.count()).select_from(Booking))).scalar_one()
            assert rows == COPIES
            detail = await client.get(f"/api/v1/books/{book.id}")
            assert detail.json()["copies"] == COPIES


@pytest.mark.e2e
@pytest.mark.timeout(180)  # a server with two workers, then fifty readers logging in with argon2id
async def test_fifty_readers_race_against_two_server_processes(committed_url: str, tmp_path: Path) -> None:
    server = ServerProcess(database_url=committed_url, directory=tmp_path, args=("--workers", "2")).launch()
    try:
        await asyncio.to_thread(server.wait_ready)
        async with httpx.AsyncClient(base_url=server.base_url, timeout=60) as client:
            admin_email = "admin-race@example.org"
            created = await asyncio.to_thread(_create_admin, committed_url, tmp_path, admin_email)
            assert created.returncode == 0, created.stderr
            admin_token = (
                await client.post("/api/v1/auth/login", data={"username": admin_email, "password": PASSWORD})
            ).json()["access_token"]
            book = await client.post(
                "/api/v1/books",
                json={"isbn": unique_isbn(), "title": "Contended", "authors": ["A. Writer"], "copies": COPIES},
                headers=bearer(admin_token),
            )
            assert book.status_code == 201, book.text

            async def reader_token(index: int) -> str:
                email = f"racer-{index}@example.org"
                registered = await client.post(
                    "/api/v1/auth/register", json={"email": email, "password": PASSWORD, "full_name": f"R {index}"}
                )
                assert registered.status_code == 201, registered.text
                login = await client.post("/api/v1/auth/login", data={"username": email, "password": PASSWORD})
                return str(login.json()["access_token"])

            tokens = await asyncio.gather(*(reader_token(i) for i in range(READERS)))
            body = {"book_id": book.json()["id"], **period()}
            responses = await asyncio.gather(
                *(client.post("/api/v1/bookings", json=body, headers=bearer(token)) for token in tokens)
            )
            statuses = Counter(response.status_code for response in responses)
            assert statuses == {201: COPIES, 409: READERS - COPIES}, statuses
            listing = await client.get(
                "/api/v1/bookings", params={"book_id": book.json()["id"]}, headers=bearer(admin_token)
            )
            assert listing.json()["total"] == COPIES
    finally:
        await asyncio.to_thread(server.stop)
    pids = {
        line.split("[")[1].split("]")[0] for line in server.log_text().splitlines() if "Started server process" in line
    }
    assert len(pids) == 2, "both worker processes served"


def _create_admin(database_url: str, directory: Path, email: str) -> subprocess.CompletedProcess[str]:
    arguments = ["--env-file", str(directory / "none.env"), "users", "create", "--email", email]
    return invoke(
        [*arguments, "--password", PASSWORD, "--role", "admin"], {**TEST_ENVIRONMENT, "DATABASE_URL": database_url}
    )
