"""Two worker processes of ``library-api serve`` sharing live events through real Redis Streams."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect

from library_api.dependencies.context import AppContext
from library_api.security.permissions import Role
from tests.support.factories import bearer, create_user, token_for, unique_isbn
from tests.support.live import read_until_sentinel, receive, receive_until, subscribe
from tests.support.processes import ServerProcess
from tests.support.services import REDIS_URL

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.redis,
    pytest.mark.parametrize("backend", ["postgresql"], indirect=True),
    pytest.mark.children_unmeasured,
]

CLIENTS = 100


@pytest.fixture
def ctx(committed_ctx: AppContext) -> AppContext:
    """The services wired against this test's committed database (``committed_ctx``)."""
    return committed_ctx


@pytest.fixture
def server(committed_url: str, tmp_path: Path, redis_prefix: str) -> Iterator[ServerProcess]:
    env = {
        "REDIS_URL": REDIS_URL,
        "REALTIME_REDIS_PREFIX": redis_prefix,
        "BROADCAST_INTERVAL": "0",
        # one reader holds every client of this test: up to all of them on one worker
        "WS_MAX_CONNECTIONS_PER_PRINCIPAL": str(CLIENTS),
        # its catalogue answers too are its own on the shared Redis
        "CACHE_KEY_PREFIX": f"{{{redis_prefix}}}cache:",
    }
    process = ServerProcess(database_url=committed_url, directory=tmp_path, args=("--workers", "2"), env=env).launch()
    try:
        process.wait_ready(timeout=120)
        yield process
    finally:
        assert process.stop() == 0, process.log_text()


async def open_on(server: ServerProcess, client_id: str, token: str) -> tuple[ClientConnection, str]:
    client = await connect(server.ws_url(client_id), additional_headers=bearer(token), open_timeout=30)
    welcome = await receive(client, within=30)
    return client, str(welcome["data"]["worker"])


async def spread_over_both_workers(server: ServerProcess, token: str) -> dict[str, tuple[ClientConnection, str]]:
    """Open ``CLIENTS`` connections with some on each worker (the welcome names the worker that took it).

    The kernel hands each new connection to whichever worker accepts first, and a worker that started later may
    get none of a first burst: connections are opened again, one at a time, until both workers hold some.
    """
    opened = await asyncio.gather(*(open_on(server, f"c{n}", token) for n in range(CLIENTS)))
    clients = {f"c{n}": pair for n, pair in enumerate(opened)}
    deadline = time.monotonic() + 120
    for name in itertools.cycle(list(clients)):
        if len({worker for _, worker in clients.values()}) == 2:
            return clients
        assert time.monotonic() < deadline, f"every connection went to worker {clients[name][1]}"
        await clients[name][0].close()
        clients[name] = await open_on(server, name, token)
    raise AssertionError("unreachable")


def broadcasts(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [message for message in messages if message["type"] == "broadcast"]


def is_broadcast(event_id: int) -> Callable[[dict[str, Any]], bool]:
    return lambda message: message["type"] == "broadcast" and message["id"] == event_id


def is_book(title: str) -> Callable[[dict[str, Any]], bool]:
    return lambda message: message["type"] == "book.created" and message["data"]["title"] == title


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
            # The next broadcast follows them in the same stream, on every worker: whatever a client has not
            # received before it (a third copy, a repeat), it never receives.
            last = await http.post("/api/v1/broadcast", json={"message": "sentinel"}, headers=bearer(librarian))
        assert first.status_code == second.status_code == last.status_code == 202
        received = await asyncio.gather(
            *(read_until_sentinel(client, is_broadcast(last.json()["id"]), within=30) for client, _ in clients.values())
        )
        for arrived in received:
            got = broadcasts(arrived.before)
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
            # The next event of the same stream is the sentinel: a repeat of "Shared" would come before it.
            sentinel = await http.post(
                "/api/v1/books",
                json={"isbn": unique_isbn(), "title": "Sentinel", "authors": ["A"], "copies": 1},
                headers=bearer(librarian),
            )
            assert sentinel.status_code == 201
            received = await asyncio.gather(
                *(read_until_sentinel(client, is_book("Sentinel"), within=30) for client in followers)
            )
            ids = set()
            for arrived in received:
                books = [m for m in arrived.before if m["type"] == "book.created"]
                assert [m["data"]["title"] for m in books] == ["Shared"]
                assert arrived.sentinel["id"] == books[0]["id"] + 1
                ids.add((arrived.sentinel["id"], arrived.sentinel["epoch"]))
            assert len(ids) == 1, "every worker delivered the same numbered messages of the same epoch"

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
        last_id, epoch = ids.pop()
        command = {"type": "subscribe", "topic": "books", "last_event_id": last_id, "last_event_epoch": epoch}
        await back.send(orjson.dumps(command).decode())
        reply = await receive_until(back, lambda m: m["type"] in ("subscribed", "resync", "error"))
        assert reply["type"] == "subscribed"
        assert reply["data"]["replayed"] == 3
        async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as http:
            after = await http.post(
                "/api/v1/books",
                json={"isbn": unique_isbn(), "title": "After", "authors": ["A"], "copies": 1},
                headers=bearer(librarian),
            )
            assert after.status_code == 201
        arrived = await read_until_sentinel(back, is_book("After"), within=30)
        titles = [m["data"]["title"] for m in arrived.before if m["type"] == "book.created"]
        assert titles == ["Missed 0", "Missed 1", "Missed 2"]
    finally:
        await asyncio.gather(*(client.close() for client, _ in clients.values()))
