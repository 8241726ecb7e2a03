"""A real streaming replica: catalogue reads go to it, everything else to the primary, and clients read their writes.

The test builds a private primary (``initdb``) and a standby of it (``pg_basebackup -R``) on free ports, runs the
service against both, and pauses the standby's replay (``pg_wal_replay_pause()``) to make the lag as long as it
likes: a book inserted on the primary behind the service's back is then invisible through the API (so reads really
go to the replica), while a change made through the API is visible at once (the replica is behind the change's
WAL position, so that read goes to the primary).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from tests.support.factories import unique_isbn
from tests.support.polling import wait_for
from tests.support.private_services import PrivatePostgres
from tests.support.processes import TEST_ENVIRONMENT, ServerProcess

# One xdist worker runs this module, so its module-scoped servers start once (docs/testing.md).
pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.xdist_group("replica")]

PASSWORD = "replica-test-password"


@pytest.fixture(scope="module")
def clusters() -> Iterator[tuple[PrivatePostgres, PrivatePostgres]]:
    primary = PrivatePostgres.create()
    primary.start()
    primary.sql("CREATE DATABASE library")
    standby = primary.standby()
    standby.start()
    yield primary, standby
    standby.destroy()
    primary.destroy()


def lsn(value: str) -> int:
    high, _, low = value.partition("/")
    return (int(high, 16) << 32) | int(low, 16)


def caught_up(primary: PrivatePostgres, standby: PrivatePostgres) -> bool:
    target = lsn(primary.sql("SELECT pg_current_wal_insert_lsn()"))
    return lsn(standby.sql("SELECT pg_last_wal_replay_lsn()")) >= target


@pytest.fixture(scope="module")
async def server(clusters: tuple[PrivatePostgres, PrivatePostgres]) -> AsyncIterator[ServerProcess]:
    primary, standby = clusters
    live = ServerProcess(
        {
            **TEST_ENVIRONMENT,
            "DATABASE_URL": primary.database_url("library"),
            "DATABASE_REPLICA_URL": standby.database_url("library"),
        },
        json_log=True,
    )
    assert (await asyncio.to_thread(live.run_cli, "migrate")).returncode == 0
    created = await asyncio.to_thread(
        live.run_cli, "users", "create", "--email", "lib@example.org", "--role", "librarian", "--password", PASSWORD
    )
    assert created.returncode == 0, created.stderr
    await asyncio.to_thread(wait_for, lambda: caught_up(primary, standby), 60, "the standby to replay the schema")
    await asyncio.to_thread(live.start, wait="/health/ready", timeout=120)
    yield live
    assert await asyncio.to_thread(live.stop_cleanly)


async def login(http: httpx.AsyncClient, email: str, password: str) -> dict[str, str]:
    response = await http.post("/api/v1/auth/login", data={"username": email, "password": password})
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


async def test_reads_from_the_replica_and_read_your_writes(
    server: ServerProcess, clusters: tuple[PrivatePostgres, PrivatePostgres]
) -> None:
    primary, standby = clusters
    async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as http:
        librarian = await login(http, "lib@example.org", PASSWORD)
        created = await http.post(
            "/api/v1/books",
            json={"isbn": "978-0-13-235088-4", "title": "Written through the API", "authors": ["A. Author"]},
            headers=librarian,
        )
        assert created.status_code == 201, created.text
        book = created.json()
        await asyncio.to_thread(wait_for, lambda: caught_up(primary, standby), 60, "the standby to catch up")
        await asyncio.to_thread(standby.sql, "SELECT pg_wal_replay_pause()")
        try:
            hidden_id = await asyncio.to_thread(insert_behind_the_services_back, primary)

            # the replica has replayed every change the service made: reads go there, and it lacks the new row
            assert (await http.get(f"/api/v1/books/{hidden_id}")).status_code == 404

            # a write through the API moves the watermark past the paused replica: reads go to the primary
            patched = await http.patch(f"/api/v1/books/{book['id']}", json={"title": "Changed"}, headers=librarian)
            assert patched.status_code == 200
            assert (await http.get(f"/api/v1/books/{book['id']}")).json()["title"] == "Changed"
            assert (await http.get(f"/api/v1/books/{hidden_id}")).status_code == 200
            assert (await http.get("/api/v1/books")).json()["total"] == 2

            # everything else always uses the primary: a new account can log in at once
            email = f"reader-{uuid.uuid4().hex[:6]}@example.org"
            registered = await http.post(
                "/api/v1/auth/register", json={"email": email, "password": PASSWORD, "full_name": "New Reader"}
            )
            assert registered.status_code == 201
            assert "Authorization" in await login(http, email, PASSWORD)
            assert standby.sql("SELECT count(*) FROM users", "library") == "1"  # the replica still lags
        finally:
            await asyncio.to_thread(standby.sql, "SELECT pg_wal_replay_resume()")
        await asyncio.to_thread(wait_for, lambda: caught_up(primary, standby), 60, "the standby to catch up")
        assert standby.sql(f"SELECT title FROM books WHERE id = {int(book['id'])}", "library") == "Changed"


async def test_an_unreachable_replica_degrades_reads_to_the_primary(
    server: ServerProcess, clusters: tuple[PrivatePostgres, PrivatePostgres]
) -> None:
    _, standby = clusters
    async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as http:
        librarian = await login(http, "lib@example.org", PASSWORD)
        await asyncio.to_thread(standby.stop)
        try:
            changed = await http.post(
                "/api/v1/books",
                json={"isbn": unique_isbn(), "title": "During the replica outage", "authors": ["B"]},
                headers=librarian,
            )
            assert changed.status_code == 201
            read = await http.get(f"/api/v1/books/{changed.json()['id']}")
            ready = await http.get("/health/ready")
            assert read.status_code == 200
            assert ready.status_code == 200
            assert ready.json()["status"] == "degraded"
            assert ready.json()["checks"]["replica"] == "degraded"
        finally:
            await asyncio.to_thread(standby.start)
        deadline = time.monotonic() + 60
        while (await http.get("/health/ready")).json()["status"] != "ready":
            assert time.monotonic() < deadline
            await asyncio.sleep(0.2)


def insert_behind_the_services_back(primary: PrivatePostgres) -> int:
    """A book written straight into the primary (no event, no watermark): only the primary knows it."""
    row = primary.sql(
        "INSERT INTO books (isbn, title, authors, tags, copies, search_text, created_at, updated_at) "
        f"VALUES ('{unique_isbn()}', 'Inserted directly', '[\"Someone\"]', '[]', 1, 'inserted directly', now(), now()) "
        "RETURNING id",
        "library",
    )
    return int(row.splitlines()[0])
