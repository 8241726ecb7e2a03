"""Two worker processes of ``library-api serve`` sharing live events through real Redis Streams."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from redis import Redis
from websockets.asyncio.client import ClientConnection, connect

from library_api.app import build_context
from library_api.context import AppContext
from library_api.db.engine import create_database
from library_api.security.permissions import Role
from tests.conftest import fast_settings
from tests.support.factories import bearer, create_user, token_for, unique_isbn
from tests.support.live import drain_messages, receive, subscribe
from tests.support.processes import ServerProcess, start_server
from tests.support.services import REDIS_URL, require_redis

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.redis,
    pytest.mark.parametrize("backend", ["postgresql"], indirect=True),
]

CLIENTS = 100


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    require_redis()
    prefix = f"test-{uuid.uuid4().hex[:10]}"
    yield prefix
    with Redis.from_url(REDIS_URL) as client:
        keys = list(client.scan_iter(match=f"{{{prefix}}}*"))
        if keys:
            client.delete(*keys)


@pytest_asyncio.fixture
async def ctx(committed_url: str, tmp_path: Path) -> AsyncIterator[AppContext]:
    """The services wired against the servers' database, for creating users and tokens directly."""
    settings = fast_settings(database_url=committed_url, upload_dir=tmp_path)
    database = create_database(settings)
    yield build_context(settings, database)
    await database.dispose()


@pytest.fixture
def server(committed_url: str, tmp_path: Path, redis_prefix: str) -> Iterator[ServerProcess]:
    env = {"REDIS_URL": REDIS_URL, "REALTIME_REDIS_PREFIX": redis_prefix, "BROADCAST_INTERVAL": "0"}
    env["CACHE_KEY_PREFIX"] = f"{{{redis_prefix}}}cache:"  # its catalogue answers too are its own on the shared Redis
    process = start_server(committed_url, tmp_path, args=("--workers", "2"), env=env)
    try:
        process.wait_ready(timeout=120)
        yield process
    finally:
        assert process.stop() == 0, process.log()


def ws_url(server: ServerProcess, client_id: str) -> str:
    return server.base_url.replace("http://", "ws://") + f"/ws/{client_id}"


async def open_on(server: ServerProcess, client_id: str, token: str) -> tuple[ClientConnection, str]:
    client = await connect(ws_url(server, client_id), additional_headers=bearer(token), open_timeout=30)
    welcome = await receive(client, within=30)
    return client, str(welcome["data"]["worker"])


async def spread_over_both_workers(server: ServerProcess, token: str) -> dict[str, tuple[ClientConnection, str]]:
    """Open ``CLIENTS`` connections; the kernel hands each to either worker, and both must get some."""
    opened = await asyncio.gather(*(open_on(server, f"c{n}", token) for n in range(CLIENTS)))
    clients = {f"c{n}": pair for n, pair in enumerate(opened)}
    for attempt in range(CLIENTS):
        if len({worker for _, worker in clients.values()}) == 2:
            break
        name = f"c{attempt}"
        await clients[name][0].close()
        clients[name] = await open_on(server, name, token)
    return clients


def broadcasts(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [message for message in messages if message["type"] == "broadcast"]


async def test_a_broadcast_reaches_every_client_on_both_workers_exactly_once(
    server: ServerProcess, ctx: AppContext
) -> None:
    librarian = token_for(ctx, await create_user(ctx, Role.LIBRARIAN))
    reader = token_for(ctx, await create_user(ctx, Role.READER))
    clients = await spread_over_both_workers(server, reader)
    per_worker = Counter(worker for _, worker in clients.values())
    assert len(per_worker) == 2, per_worker
    try:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as http:
            first = await http.post("/api/v1/broadcast", json={"message": "one"}, headers=bearer(librarian))
            second = await http.post("/api/v1/broadcast", json={"message": "two"}, headers=bearer(librarian))
        assert first.status_code == second.status_code == 202
        received = await asyncio.gather(*(drain_messages(client, quiet=1.5) for client, _ in clients.values()))
        for messages in received:
            got = broadcasts(messages)
            assert [(m["id"], m["data"]["message"]) for m in got] == [
                (first.json()["id"], "one"),
                (second.json()["id"], "two"),
            ]
    finally:
        await asyncio.gather(*(client.close() for client, _ in clients.values()))


async def test_catalogue_events_and_replay_cross_workers(server: ServerProcess, ctx: AppContext) -> None:
    librarian = token_for(ctx, await create_user(ctx, Role.LIBRARIAN))
    reader = token_for(ctx, await create_user(ctx, Role.READER))
    clients = await spread_over_both_workers(server, reader)
    try:
        followers = [client for client, _ in clients.values()]
        await asyncio.gather(*(subscribe(client, "books") for client in followers))
        async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as http:
            created = await http.post(
                "/api/v1/books",
                json={"isbn": unique_isbn(), "title": "Shared", "authors": ["A"], "copies": 1},
                headers=bearer(librarian),
            )
            assert created.status_code == 201
            received = await asyncio.gather(*(drain_messages(client, quiet=1.5) for client in followers))
            ids = set()
            for messages in received:
                books = [m for m in messages if m["type"] == "book.created"]
                assert [m["data"]["title"] for m in books] == ["Shared"]
                ids.add(books[0]["id"])
            assert len(ids) == 1, "every worker delivered the same numbered message"

            # A client that left resumes on whichever worker it lands, from the shared history.
            leaver, _ = clients.pop("c0")
            await leaver.close()
            for n in range(3):
                await http.post(
                    "/api/v1/books",
                    json={"isbn": unique_isbn(), "title": f"Missed {n}", "authors": ["A"], "copies": 1},
                    headers=bearer(librarian),
                )
        back, _ = await open_on(server, "c0", reader)
        clients["c0"] = (back, "")
        reply = await subscribe(back, "books", last_event_id=ids.pop())
        assert reply["data"]["replayed"] == 3
        titles = [m["data"]["title"] for m in await drain_messages(back) if m["type"] == "book.created"]
        assert titles == ["Missed 0", "Missed 1", "Missed 2"]
    finally:
        await asyncio.gather(*(client.close() for client, _ in clients.values()))
