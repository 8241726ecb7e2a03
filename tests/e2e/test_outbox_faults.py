"""Live events of changes made while Redis is down survive the service's death: real processes, real signals.

A private Redis is started for each test (it is the part that fails), the database is a new one on the machine's
PostgreSQL (which stays up throughout); the service runs as ``library-api serve``
with two workers. WebSocket clients follow ``books``; Redis is killed; books are created (201); then the whole
service is killed with ``SIGKILL`` (supervisor and both workers: nothing in any worker's memory survives) or
stopped gracefully with ``SIGTERM`` during the outage. Redis and the service are started again, the clients
reconnect with their positions, and a last book is created as the sentinel: every client must receive every
book created during the outage exactly once, in id order, or be told to ``resync`` — never miss one silently.

With Redis keeping its data (append-only file, ``appendfsync always``) the positions stay valid, so every event
must arrive and no ``resync`` is allowed; with Redis restarted empty, the epoch changes and a ``resync`` is the
honest answer for what the broker forgot.
"""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import httpx
import orjson
import psutil
import pytest
import pytest_asyncio
from websockets.asyncio.client import ClientConnection, connect

from tests.support.databases import empty_postgres_database
from tests.support.factories import PASSWORD, bearer, unique_isbn
from tests.support.live import read_until_sentinel, receive, receive_until
from tests.support.polling import wait_until
from tests.support.private_services import PrivateRedis, running_redis
from tests.support.processes import TEST_ENVIRONMENT, ServerProcess
from tests.support.services import POSTGRES_ADMIN_DSN, POSTGRES_HOST, POSTGRES_PORT, require_postgres

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.children_unmeasured]

LIBRARIAN = "outbox-librarian@example.org"
CLIENTS = 6
DURING = 10


@pytest_asyncio.fixture
async def database() -> AsyncIterator[str]:
    """The name of a new, empty database on the machine's PostgreSQL (the service migrates it)."""
    require_postgres()
    async with empty_postgres_database("library_outbox") as name:
        yield name


def environment(database: str, redis: PrivateRedis) -> dict[str, str]:
    return {
        **TEST_ENVIRONMENT,
        "DATABASE_URL": f"postgresql+asyncpg://postgres@{POSTGRES_HOST}:{POSTGRES_PORT}/{database}",
        "REDIS_URL": redis.url,
        "CACHE_KEY_PREFIX": f"outbox{uuid.uuid4().hex[:6]}_",
        "RATE_LIMIT_ENABLED": "false",
        "BROADCAST_INTERVAL": "0",
        "REDIS_SOCKET_TIMEOUT": "0.3",
        "REDIS_BREAKER_RESET_SECONDS": "1",
        "SHUTDOWN_TIMEOUT": "2",
        "LIVE_OUTBOX_POLL_INTERVAL": "0.2",
    }


@dataclass
class Follower:
    """A client of ``books`` that keeps its position, as the Python client and the console do."""

    name: str
    client: ClientConnection | None = None
    last_id: int | None = None
    epoch: str | None = None
    titles: list[str] = field(default_factory=list)
    ids: list[int] = field(default_factory=list)
    resyncs: list[dict[str, Any]] = field(default_factory=list)

    async def connect(self, server: ServerProcess, token: str) -> None:
        url = server.base_url.replace("http://", "ws://") + f"/ws/{self.name}"
        self.client = await connect(url, additional_headers=bearer(token), open_timeout=30)
        assert (await receive(self.client, within=30))["type"] == "welcome"
        command: dict[str, Any] = {"type": "subscribe", "topic": "books"}
        if self.last_id is not None:
            command |= {"last_event_id": self.last_id, "last_event_epoch": self.epoch}
        await self.client.send(orjson.dumps(command).decode())
        while True:
            message = await receive_until(self.client, lambda m: m["type"] in ("subscribed", "resync", "book.created"))
            if self.take(message):
                return

    def take(self, message: dict[str, Any]) -> bool:
        """Follow one message; whether it was the ``subscribed`` reply."""
        data = message["data"]
        if message["type"] == "resync":
            if data["topic"] == "books":  # the automatic topics (broadcast) are told too
                self.resyncs.append(data)
                self.last_id, self.epoch = data["latest"], data.get("epoch")
        elif message["type"] == "subscribed":
            if data["last_event_id"] is not None:  # where the subscription starts (replayed messages follow)
                self.last_id, self.epoch = data["last_event_id"], data["epoch"]
            return True
        elif message["type"] == "book.created":
            self.last_id, self.epoch = message["id"], message["epoch"]
            self.ids.append(message["id"])
            self.titles.append(data["title"])
        return False

    async def read_until(self, title: str) -> None:
        assert self.client is not None
        arrived = await read_until_sentinel(
            self.client, lambda m: m["type"] == "book.created" and m["data"]["title"] == title, within=60
        )
        for message in [*arrived.before, arrived.sentinel]:
            self.take(message)

    async def close(self) -> None:
        if self.client is not None:
            await self.client.close()
            self.client = None


async def librarian_token(server: ServerProcess) -> str:
    async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as http:
        login = await http.post("/api/v1/auth/login", data={"username": LIBRARIAN, "password": PASSWORD})
        assert login.status_code == 200, login.text
        return str(login.json()["access_token"])


async def create_books(server: ServerProcess, token: str, titles: list[str]) -> None:
    async with httpx.AsyncClient(base_url=server.base_url, timeout=30, headers=bearer(token)) as http:
        for title in titles:
            body = {"isbn": unique_isbn(), "title": title, "authors": ["Outage"], "copies": 1}
            created = await http.post("/api/v1/books", json=body)
            assert created.status_code == 201, created.text


def kill_everything(server: ServerProcess) -> None:
    """SIGKILL the supervisor and every worker, as a host losing power would (frozen first: no replacement)."""
    assert server.process is not None
    supervisor = psutil.Process(server.process.pid)
    supervisor.suspend()
    workers = supervisor.children(recursive=True)
    assert len(workers) >= 2, workers
    for worker in workers:
        os.kill(worker.pid, signal.SIGKILL)
    os.kill(supervisor.pid, signal.SIGKILL)
    server.process.wait(timeout=30)
    psutil.wait_procs(workers, timeout=30)
    server.process = None


@pytest_asyncio.fixture
async def started() -> AsyncIterator[list[ServerProcess]]:
    """Servers a test started, stopped at its end whatever happened."""
    servers: list[ServerProcess] = []
    yield servers
    for server in servers:
        await asyncio.to_thread(server.stop_cleanly)


@pytest.mark.parametrize(
    ("stop", "durable_redis"),
    [("sigkill", True), ("sigterm", True), ("sigkill", False)],
    ids=["killed-redis-keeps-data", "graceful-stop-redis-keeps-data", "killed-redis-restarts-empty"],
)
async def test_events_of_changes_made_while_redis_was_down_outlive_the_service(
    database: str, started: list[ServerProcess], stop: str, durable_redis: bool
) -> None:
    with running_redis(durable=durable_redis) as redis:
        await run_scenario(database, redis, started, stop=stop, durable_redis=durable_redis)


async def run_scenario(
    database: str, redis: PrivateRedis, started: list[ServerProcess], *, stop: str, durable_redis: bool
) -> None:
    env = environment(database, redis)
    first = ServerProcess(env, workers=2, json_log=True)
    started.append(first)
    assert (await asyncio.to_thread(first.run_cli, "migrate")).returncode == 0
    made = await asyncio.to_thread(
        first.run_cli, "users", "create", "--email", LIBRARIAN, "--password", PASSWORD, "--role", "librarian"
    )
    assert made.returncode == 0, made.stderr
    # Another host of the same deployment, which stays up throughout; its clients never disconnect.
    bystander = ServerProcess(env, workers=1, json_log=True)
    started.append(bystander)
    await asyncio.gather(
        asyncio.to_thread(first.start, wait="/health/ready", timeout=120),
        asyncio.to_thread(bystander.start, wait="/health/ready", timeout=120),
    )
    token = await librarian_token(first)
    followers = [Follower(f"follower-{n}") for n in range(CLIENTS)]
    watchers = [Follower(f"watcher-{n}") for n in range(2)]
    await asyncio.gather(
        *(follower.connect(first, token) for follower in followers),
        *(watcher.connect(bystander, token) for watcher in watchers),
    )
    await create_books(first, token, ["before the outage"])
    await asyncio.gather(*(follower.read_until("before the outage") for follower in [*followers, *watchers]))

    await asyncio.to_thread(redis.stop)  # SIGKILL
    during = [f"during the outage {n}" for n in range(DURING)]
    await create_books(first, token, during)
    if stop == "sigkill":
        await asyncio.to_thread(kill_everything, first)
    else:
        assert await asyncio.to_thread(first.stop_cleanly), first.log_text()[-3000:]
        assert "live event(s) wait in the outbox" in first.log_text()
    await asyncio.gather(*(follower.close() for follower in followers))

    await asyncio.to_thread(redis.start)
    # No worker of the killed service runs yet: the other host's relay publishes what they left in the outbox.
    await asyncio.gather(*(watcher.read_until(during[-1]) for watcher in watchers))
    second = ServerProcess(env, workers=2, json_log=True)
    started.append(second)
    await asyncio.to_thread(second.start, wait="/health/ready", timeout=120)
    token = await librarian_token(second)
    await asyncio.gather(*(follower.connect(second, token) for follower in followers))
    await create_books(second, token, ["after the restart"])
    await asyncio.gather(*(follower.read_until("after the restart") for follower in [*followers, *watchers]))
    await asyncio.gather(*(follower.close() for follower in [*followers, *watchers]))

    for follower in [*followers, *watchers]:
        received = Counter(follower.titles)
        assert all(count == 1 for count in received.values()), f"{follower.name} got duplicates: {received}"
        missed = [title for title in during if title not in received]
        if durable_redis:
            # Redis kept its streams: the positions are valid, every event must come, in id order.
            assert follower.resyncs == [], follower.resyncs
            assert missed == [], f"{follower.name} never received {missed}"
            assert follower.ids == sorted(follower.ids)
            assert follower.ids == list(range(follower.ids[0], follower.ids[0] + len(follower.ids)))
            assert follower.titles == ["before the outage", *during, "after the restart"]
        else:
            # Redis forgot its streams: whatever a client did not receive, it was told to reload.
            assert missed == [] or follower.resyncs, f"{follower.name} silently missed {missed}"
    # The relay deletes a batch once the broker took all of it, just after the last of it may have arrived.
    connection = await asyncpg.connect(POSTGRES_ADMIN_DSN.rsplit("/", 1)[0] + f"/{database}")
    try:

        async def emptied() -> bool:
            return bool(await connection.fetchval("SELECT count(*) FROM live_event_outbox") == 0)

        await wait_until(emptied, within=30, what="the outbox to be emptied")
    finally:
        await connection.close()
