"""Live sessions end on every worker: ``library-api serve --workers 2`` on PostgreSQL and Redis.

A caller holds WebSocket connections on both worker processes (each ``welcome`` names its worker). Its account
is deactivated, it logs out everywhere, or its API token is revoked, through an HTTP request that one worker
serves; every connection, on either worker, is then closed with 4401. Each worker sees the change when its own
account or token cache does (``PRINCIPAL_CACHE_TTL``) and its periodic check runs, with no message between the
workers. The time from the change's answer to the last close is printed for the record; the outcome is asserted.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.e2e.test_revocation_workers import admin_headers, bearer, register
from tests.support.databases import empty_postgres_database
from tests.support.processes import TEST_ENVIRONMENT, ServerProcess, migrated_server
from tests.support.services import POSTGRES_HOST, POSTGRES_PORT, REDIS_URL, require_postgres, require_redis

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

SECRET_KEY = f"live-sessions-{uuid.uuid4().hex}{uuid.uuid4().hex}"


@pytest.fixture(scope="module")
async def database_name() -> AsyncIterator[str]:
    require_postgres()
    require_redis()
    async with empty_postgres_database("library_live") as name:
        yield name


@pytest.fixture(scope="module")
async def server(database_name: str) -> AsyncIterator[ServerProcess]:
    env = {
        **TEST_ENVIRONMENT,
        "DATABASE_URL": f"postgresql+asyncpg://postgres@{POSTGRES_HOST}:{POSTGRES_PORT}/{database_name}",
        "REDIS_URL": REDIS_URL,
        "REALTIME_REDIS_PREFIX": f"live-sessions-{uuid.uuid4().hex[:8]}",
        "CACHE_KEY_PREFIX": f"live{uuid.uuid4().hex[:6]}_",
        "SECRET_KEY": SECRET_KEY,
        "PRINCIPAL_CACHE_TTL": "1",
        "ACCESS_LOG": "false",
    }
    async with migrated_server(env, workers=2) as live:
        yield live


async def on_both_workers(
    server: ServerProcess, headers: dict[str, str], within: float = 120
) -> list[ClientConnection]:
    """One subscribed connection of this caller on each of the two workers.

    The workers share one listening socket and the kernel hands each new connection to whichever accepts first, so
    connections are opened one at a time until both workers hold one; one that lands on a worker already held is
    closed at once (the caller stays far below its per-caller cap however long the kernel favours one worker).
    """
    held: dict[str, ClientConnection] = {}
    deadline = time.monotonic() + within
    attempt = 0
    while len(held) < 2:
        assert time.monotonic() < deadline, f"only worker(s) {sorted(held)} took a connection within {within} s"
        attempt += 1
        client = await connect(server.ws_url(f"c{attempt}"), additional_headers=headers, open_timeout=10)
        welcome = orjson.loads(await asyncio.wait_for(client.recv(), timeout=10))
        assert welcome["type"] == "welcome", welcome
        worker = welcome["data"]["worker"]
        if worker in held:
            await client.close()
            continue
        held[worker] = client
        await client.send('{"type": "subscribe", "topic": "books"}')
    return list(held.values())


async def close_code(client: ClientConnection, within: float) -> int | None:
    """Read until the server closes the connection; its close code."""
    try:
        async with asyncio.timeout(within):
            while True:
                await client.recv()
    except ConnectionClosed:
        return client.close_code


async def test_deactivation_logout_all_and_revocation_end_live_sessions_on_every_worker(
    server: ServerProcess, database_name: str
) -> None:
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as http:
        admin = await admin_headers(http, database_name)
        deactivated_id, deactivated_token = await register(http)
        _, leaving_token = await register(http)
        issued = await http.post("/api/v1/tokens", json={"name": "job", "roles": ["librarian"]}, headers=admin)
        assert issued.status_code == 201, issued.text

        async def deactivate() -> None:
            response = await http.patch(f"/api/v1/users/{deactivated_id}", json={"is_active": False}, headers=admin)
            assert response.status_code == 200, response.text

        async def logout_all() -> None:
            response = await http.post("/api/v1/auth/logout-all", headers=bearer(leaving_token))
            assert response.status_code == 204, response.text

        async def revoke() -> None:
            response = await http.delete(f"/api/v1/tokens/{issued.json()['id']}", headers=admin)
            assert response.status_code == 204, response.text

        cases: list[tuple[str, dict[str, str], Callable[[], Awaitable[None]]]] = [
            ("deactivation", bearer(deactivated_token), deactivate),
            ("logout-all", bearer(leaving_token), logout_all),
            ("API token revocation", {"X-API-Key": issued.json()["token"]}, revoke),
        ]
        for name, headers, change in cases:
            clients = await on_both_workers(server, headers)
            await change()
            changed = time.monotonic()
            try:
                codes = await asyncio.gather(*(close_code(client, within=10) for client in clients))
            finally:
                for client in clients:
                    await client.close()
            print(f"{name}: {len(clients)} connection(s) on 2 workers closed {time.monotonic() - changed:.3f} s after")
            assert set(codes) == {4401}, (name, codes)
