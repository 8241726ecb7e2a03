"""``library-api serve --workers 2`` for real: metrics summed across workers (and across a killed worker),
rate limits exact across workers through Redis, cache invalidation seen by the other worker, the client address
from trusted proxies only, and not one secret in the whole log.

The server runs with a password in its database URL and in its Redis URL (a private Redis started with
``requirepass``), a secret key of its own, and ``LOG_LEVEL=DEBUG``; the log is searched for every one of them
and for every password and token the test used.

The tests share the server but not their state: each sends its requests over connections pinned to each worker
(``tests/e2e/pinning.py``), counts metrics from its own baseline, and spends a rate-limit window of its own (a
client address of its own, forwarded by the trusted proxy), so any of them passes alone, in any order, or again.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.pinning import one_connection, pinned_workers
from tests.support.databases import empty_postgres_database
from tests.support.factories import unique_isbn
from tests.support.metrics import samples
from tests.support.polling import wait_for
from tests.support.private_services import PrivateRedis, running_redis
from tests.support.processes import TEST_ENVIRONMENT, ServerProcess, migrated_server
from tests.support.services import POSTGRES_HOST, POSTGRES_PORT, require_postgres

# One xdist worker runs this module's tests, so its module-scoped servers start once (docs/testing.md).
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.postgres,
    pytest.mark.redis,
    pytest.mark.xdist_group("workers"),
    pytest.mark.children_unmeasured,
]

DB_PASSWORD = f"db-pw-{uuid.uuid4().hex}"
REDIS_PASSWORD = f"redis-pw-{uuid.uuid4().hex}"
SECRET_KEY = f"secret-key-{uuid.uuid4().hex}-{uuid.uuid4().hex}"
USER_PASSWORD = f"user-pw-{uuid.uuid4().hex[:12]}"
PROXY = "127.0.0.2"  # the trusted "reverse proxy"; the test's other requests come from 127.0.0.1
LIST_LIMIT = 30


@pytest.fixture(scope="module")
def redis_with_password() -> Iterator[PrivateRedis]:
    with running_redis(REDIS_PASSWORD) as server:
        yield server


@pytest.fixture(scope="module")
async def database_name() -> AsyncIterator[str]:
    require_postgres()
    async with empty_postgres_database("library_e2e") as name:
        yield name


@pytest.fixture(scope="module")
async def server(
    database_name: str, redis_with_password: PrivateRedis, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[ServerProcess]:
    metrics_dir = tmp_path_factory.mktemp("metrics")
    env = {
        **TEST_ENVIRONMENT,
        "DATABASE_URL": f"postgresql+asyncpg://postgres:{DB_PASSWORD}@{POSTGRES_HOST}:{POSTGRES_PORT}/{database_name}",
        "REDIS_URL": redis_with_password.url,
        "SECRET_KEY": SECRET_KEY,
        "LOG_LEVEL": "DEBUG",
        "LOG_FORMAT": "json",
        "CACHE_KEY_PREFIX": f"e2e{uuid.uuid4().hex[:8]}_",
        "RATE_LIMIT_ENABLED": "true",
        "RATE_LIMIT_DEFAULT": "100000/minute",
        # An hour, so that a slow run never sees hits leave the window; each test counts under its own address.
        "RATE_LIMIT_ROUTES": json.dumps({"GET /api/v1/books": f"{LIST_LIMIT}/hour"}),
        "TRUSTED_PROXIES": PROXY,
        "MONITORING_ALLOWED_NETWORKS": "127.0.0.0/8",
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
        # A busy test machine can stall Redis replies past the production 0.5 s; the breaker would then open
        # and each worker count on its own. Outages are tested in test_faults.py; here Redis must stay in use.
        "REDIS_SOCKET_TIMEOUT": "5",
    }
    async with migrated_server(env, workers=2) as live:
        async with pinned_workers(lambda: pinned(live), 2):
            pass  # both workers serve
        yield live
    assert_no_secrets(live.log_text())


SEEN_SECRETS: set[str] = {DB_PASSWORD, REDIS_PASSWORD, SECRET_KEY, USER_PASSWORD}


def assert_no_secrets(log: str) -> None:
    assert log.count("\n") > 50, "the log should hold plenty of lines to search"
    for secret in SEEN_SECRETS:
        assert secret not in log, f"a secret reached the log: {secret[:8]}..."


def client(server: ServerProcess, source: str = "127.0.0.1") -> httpx.AsyncClient:
    """A client from ``source`` for requests whose worker does not matter."""
    transport = httpx.AsyncHTTPTransport(local_address=source)
    return httpx.AsyncClient(base_url=server.base_url, transport=transport, timeout=30)


def pinned(server: ServerProcess) -> httpx.AsyncClient:
    """One kept-alive connection from the trusted proxy, for :func:`pinned_workers`."""
    return one_connection(server.base_url, source=PROXY)


def own_address() -> dict[str, str]:
    """A client address (forwarded by the trusted proxy) no other test or run uses: a rate-limit window of its own."""
    return {"X-Forwarded-For": f"198.18.{random.randrange(256)}.{random.randrange(1, 255)}"}


def worker_pids(server: ServerProcess, request_ids: set[str]) -> dict[str, int]:
    """Which worker process served each request (the pid on its access line)."""
    return {r["request_id"]: r["pid"] for r in server.access_records() if r.get("request_id") in request_ids}


async def traced_get(
    http: httpx.AsyncClient, path: str, headers: dict[str, str] | None = None
) -> tuple[httpx.Response, str]:
    """GET through the trusted proxy with a request id of our own, so its access line can be found."""
    request_id = f"t-{uuid.uuid4().hex}"
    response = await http.get(path, headers={**(headers or {}), "X-Request-ID": request_id})
    assert response.headers["x-request-id"] == request_id
    return response, request_id


async def each_worker(
    workers: dict[int, httpx.AsyncClient], path: str, count: int, headers: dict[str, str] | None = None
) -> dict[int, list[tuple[httpx.Response, str]]]:
    """``count`` GETs on every worker's pinned connection, the workers at the same time; answers by pid."""

    async def run(http: httpx.AsyncClient) -> list[tuple[httpx.Response, str]]:
        return [await traced_get(http, path, headers) for _ in range(count)]

    answers = await asyncio.gather(*(run(http) for http in workers.values()))
    return dict(zip(workers, answers, strict=True))


async def assert_served_by(server: ServerProcess, answers: dict[int, list[tuple[httpx.Response, str]]]) -> None:
    """Every request was served by the worker its connection was pinned to (read from the access lines)."""
    pids = await asyncio.to_thread(wait_for_pids, server, {rid for batch in answers.values() for _, rid in batch})
    for pid, batch in answers.items():
        assert {pids[rid] for _, rid in batch} == {pid}


async def register_and_login(http: httpx.AsyncClient, email: str) -> dict[str, str]:
    body = {"email": email, "password": USER_PASSWORD, "full_name": "E2E Reader"}
    assert (await http.post("/api/v1/auth/register", json=body)).status_code == 201
    login = await http.post("/api/v1/auth/login", data={"username": email, "password": USER_PASSWORD})
    assert login.status_code == 200
    tokens = login.json()
    SEEN_SECRETS.update({tokens["access_token"], tokens["refresh_token"]})
    return {"Authorization": f"Bearer {tokens['access_token']}"}


async def test_metrics_are_summed_across_workers_and_survive_a_killed_worker(server: ServerProcess) -> None:
    key = ("http_requests_total", (("endpoint", "/api/v1/auth/me"), ("method", "GET"), ("status", "401")))
    directory = Path(server.env["PROMETHEUS_MULTIPROC_DIR"])
    async with pinned_workers(lambda: pinned(server), 2) as workers:
        scraper = next(iter(workers.values()))
        before = samples((await scraper.get("/metrics")).text).get(key, 0)
        answers = await each_worker(workers, "/api/v1/auth/me", 30)
        assert all(response.status_code == 401 for batch in answers.values() for response, _ in batch)
        await assert_served_by(server, answers)  # and hence counted by each worker: 30 apiece
        assert samples((await scraper.get("/metrics")).text)[key] == before + 60
        victim, survivor = sorted(workers)

    os.kill(victim, signal.SIGKILL)
    await asyncio.to_thread(wait_for, lambda: not is_alive(victim), 30, "the killed worker to be gone")
    # The supervisor starts a replacement; it must really serve, not merely exist, before the counts are read.
    async with pinned_workers(lambda: pinned(server), 2, exclude={victim}) as replaced:
        assert survivor in replaced
        after = samples((await replaced[survivor].get("/metrics")).text)
    assert after[key] == before + 60  # the killed worker's counts were folded, not lost and not doubled
    names = await asyncio.to_thread(lambda: {path.name for path in directory.glob("*.db")})
    assert "counter_archive.db" in names
    assert not any(f"_{victim}.db" in name for name in names)


def is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def wait_for_pids(server: ServerProcess, request_ids: set[str]) -> dict[str, int]:
    found: dict[str, int] = {}

    def all_logged() -> bool:
        found.update(worker_pids(server, request_ids))
        return len(found) == len(request_ids)

    wait_for(all_logged, 30, "the access lines of the requests")
    return found


async def test_rate_limit_is_exact_across_the_two_workers(server: ServerProcess) -> None:
    caller = own_address()
    async with pinned_workers(lambda: pinned(server), 2) as workers:
        answers = await each_worker(workers, "/api/v1/books?limit=1", (LIST_LIMIT + 10) // 2, caller)
    statuses = [response.status_code for batch in answers.values() for response, _ in batch]
    assert statuses.count(200) == LIST_LIMIT
    assert statuses.count(429) == 10
    await assert_served_by(server, answers)  # both workers counted, in one window


async def test_a_change_through_one_worker_is_seen_through_the_other(server: ServerProcess) -> None:
    async with pinned_workers(lambda: pinned(server), 2) as workers, client(server, PROXY) as http:
        librarian = await librarian_headers(http, server)
        created = await http.post(
            "/api/v1/books",
            json={"isbn": unique_isbn(), "title": "First title", "authors": ["A. Author"]},
            headers=librarian,
        )
        assert created.status_code == 201, created.text
        url = f"/api/v1/books/{created.json()['id']}"
        warm = await each_worker(workers, url, 2)  # both workers read it, and cache it
        assert {response.json()["title"] for batch in warm.values() for response, _ in batch} == {"First title"}

        writer = next(iter(workers.values()))
        patched = await writer.patch(url, json={"title": "Second title"}, headers=librarian)
        assert patched.status_code == 200
        after = await each_worker(workers, url, 2)
    assert {pid: {response.json()["title"] for response, _ in batch} for pid, batch in after.items()} == {
        pid: {"Second title"} for pid in workers
    }
    await assert_served_by(server, after)  # the other worker read the new title too: its cached copy was dropped


async def librarian_headers(http: httpx.AsyncClient, server: ServerProcess) -> dict[str, str]:
    email = f"librarian-{uuid.uuid4().hex[:8]}@example.org"
    created = await asyncio.to_thread(
        server.run_cli, "users", "create", "--email", email, "--role", "librarian", "--password", USER_PASSWORD
    )
    assert created.returncode == 0, created.stderr
    login = await http.post("/api/v1/auth/login", data={"username": email, "password": USER_PASSWORD})
    assert login.status_code == 200, login.text
    SEEN_SECRETS.update({login.json()["access_token"], login.json()["refresh_token"]})
    return {"Authorization": f"Bearer {login.json()['access_token']}"}


async def test_forwarded_for_is_believed_from_the_proxy_only(server: ServerProcess) -> None:
    spoof_id, honest_id = f"t-{uuid.uuid4().hex}", f"t-{uuid.uuid4().hex}"
    async with client(server, "127.0.0.1") as direct:
        spoofed = await direct.get(
            "/api/v1/auth/me", headers={"X-Forwarded-For": "203.0.113.66", "X-Request-ID": spoof_id}
        )
    async with client(server, PROXY) as proxied:
        honest = await proxied.get(
            "/api/v1/auth/me", headers={"X-Forwarded-For": "203.0.113.77", "X-Request-ID": honest_id}
        )
    assert spoofed.headers["x-request-id"] != spoof_id  # an untrusted peer cannot choose the request id either
    assert honest.headers["x-request-id"] == honest_id
    spoofed_line = await asyncio.to_thread(server.wait_for_access, spoofed.headers["x-request-id"])
    honest_line = await asyncio.to_thread(server.wait_for_access, honest_id)
    assert spoofed_line["client"] == "127.0.0.1"
    assert honest_line["client"] == "203.0.113.77"


async def test_credentials_used_everywhere_never_reach_the_log(server: ServerProcess) -> None:
    async with client(server) as http:
        headers = await register_and_login(http, f"reader-{uuid.uuid4().hex[:8]}@example.org")
        access = headers["Authorization"].split()[1]
        assert (await http.get("/api/v1/auth/me", headers=headers)).status_code == 200
        assert (await http.get(f"/api/v1/auth/me?access_token={access}")).status_code == 401
        wrong = await http.post(
            "/api/v1/auth/login", data={"username": "nobody@example.org", "password": USER_PASSWORD}
        )
        assert wrong.status_code == 401
        forged = await http.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {access[:-4]}AAAA"})
        assert forged.status_code == 401
    assert_no_secrets(server.log_text())  # and once more, over the whole log, when the server has stopped
