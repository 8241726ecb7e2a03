"""Argon2 runs with no database connection held, a bounded number at a time, and writes only what it checked.

The application's real argon2 hasher is wrapped in a gate (:mod:`tests.support.hashing`): a test holds a
password check inside argon2 and looks at what the rest of the service can do meanwhile. With a pool of one
connection, anything that held it during the check would make every other request wait for the pool and fail
with 503 ``database-busy``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from datetime import timedelta

import httpx
import pytest
import pytest_asyncio
from argon2 import PasswordHasher
from sqlalchemy import func, select, update

from library_api.auth.models import RefreshFamily
from library_api.db.base import utcnow
from library_api.dependencies.context import AppContext
from library_api.users.models import User
from tests.conftest import AppFactory
from tests.support.factories import PASSWORD, bearer, create_book, create_user, token_for, unique_email
from tests.support.hashing import GatedHasher, gate_hasher
from tests.support.http import client_for
from tests.support.polling import wait_until

LOGIN = "/api/v1/auth/login"
ME = "/api/v1/auth/me"
WRONG = "not-the-password-at-all"
NEW_PASSWORD = "brand-new-password-1"

Start = Callable[..., Awaitable[tuple[httpx.AsyncClient, AppContext]]]


@pytest_asyncio.fixture
async def start(app_factory: AppFactory, committed_url: str) -> AsyncIterator[Start]:
    """The application on this backend with a pool of one connection, and an in-process client to it."""
    async with AsyncExitStack() as stack:

        async def build(**values: object) -> tuple[httpx.AsyncClient, AppContext]:
            values = {"database_pool_size": 1, "database_pool_timeout": 2.0, **values}
            app = await app_factory(database_url=committed_url, **values)
            client = await stack.enter_async_context(client_for(app))
            return client, app.state.context

        yield build


async def booking_body(ctx: AppContext) -> dict[str, object]:
    book = await create_book(ctx, copies=5)
    start = utcnow() + timedelta(days=1)
    return {"book_id": book.id, "start": start.isoformat(), "end": (start + timedelta(days=2)).isoformat()}


async def inside_argon2(hasher: GatedHasher, calls: int = 1) -> None:
    await wait_until(lambda: hasher.entered >= calls, within=20, what=f"{calls} password check(s) to reach argon2")


@pytest.mark.parametrize("operation", ["password-change", "login", "register"])
async def test_other_requests_are_served_while_argon2_runs(start: Start, operation: str) -> None:
    client, ctx = await start()
    victim = await create_user(ctx)
    reader = await create_user(ctx)
    reader_headers = bearer(token_for(ctx, reader))
    booking = await booking_body(ctx)
    hasher = gate_hasher(ctx)

    requests = {
        "password-change": lambda: client.patch(
            ME, json={"password": NEW_PASSWORD, "current_password": WRONG}, headers=bearer(token_for(ctx, victim))
        ),
        "login": lambda: client.post(LOGIN, data={"username": victim.email, "password": PASSWORD}),
        "register": lambda: client.post(
            "/api/v1/auth/register", json={"email": unique_email(), "password": PASSWORD, "full_name": "New Reader"}
        ),
    }
    checking = asyncio.create_task(requests[operation]())
    await inside_argon2(hasher)
    # The check is held inside argon2: the one pooled connection (and SQLite's write lock) must be free.
    reads = await client.get("/api/v1/bookings", headers=reader_headers)
    write = await client.post("/api/v1/bookings", json=booking, headers=reader_headers)
    assert not checking.done()
    hasher.open_all()
    checked = await checking
    assert reads.status_code == 200, reads.text
    assert write.status_code == 201, write.text
    assert checked.status_code == {"password-change": 403, "login": 200, "register": 201}[operation], checked.text


async def test_reads_are_served_during_a_password_guessing_flood(start: Start) -> None:
    client, ctx = await start(rate_limit_enabled=True, password_hash_concurrency=2)
    victims = [await create_user(ctx) for _ in range(3)]
    reader = await create_user(ctx)
    hasher = gate_hasher(ctx)
    wrong = {"password": NEW_PASSWORD, "current_password": WRONG}
    flood = [
        asyncio.create_task(client.patch(ME, json=wrong, headers=bearer(token_for(ctx, victim))))
        for victim in victims
        for _ in range(8)
    ]
    # Two guesses are in argon2, one more waits for a slot, the rest wait behind their own account's check.
    await inside_argon2(hasher, 2)
    await wait_until(lambda: ctx.passwords.waiting == 1, within=20, what="a third check to wait for a slot")
    reads = [await client.get("/api/v1/bookings", headers=bearer(token_for(ctx, reader))) for _ in range(5)]
    assert hasher.active == 2
    hasher.open_all()
    answers = await asyncio.gather(*flood)
    assert [r.status_code for r in reads] == [200] * 5
    assert sorted(r.status_code for r in answers) == [403] * 15 + [429] * 9
    assert hasher.peak == 2


async def test_at_most_the_configured_number_of_hashes_run_at_once(app_factory: AppFactory) -> None:
    app = await app_factory(password_hash_concurrency=2)
    ctx: AppContext = app.state.context
    users = [await create_user(ctx) for _ in range(6)]
    hasher = gate_hasher(ctx)
    async with client_for(app) as client:
        logins = [
            asyncio.create_task(client.post(LOGIN, data={"username": user.email, "password": PASSWORD}))
            for user in users
        ]
        await inside_argon2(hasher, 2)
        await wait_until(lambda: ctx.passwords.waiting == 4, within=20, what="four checks to wait for a slot")
        assert (hasher.entered, hasher.active, ctx.passwords.running) == (2, 2, 2)
        hasher.open(1)
        await inside_argon2(hasher, 3)
        assert ctx.passwords.waiting == 3
        hasher.open_all()
        answers = await asyncio.gather(*logins)
    assert [r.status_code for r in answers] == [200] * 6
    assert hasher.peak == 2
    assert (ctx.passwords.running, ctx.passwords.waiting) == (0, 0)


@pytest.mark.parametrize("same_account", [False, True])
async def test_a_check_that_cannot_get_a_turn_is_a_503(app_factory: AppFactory, same_account: bool) -> None:
    app = await app_factory(rate_limit_enabled=True, password_hash_concurrency=1, password_hash_queue_timeout=0.3)
    ctx: AppContext = app.state.context
    first, second = await create_user(ctx), await create_user(ctx)
    hasher = gate_hasher(ctx)
    async with client_for(app) as client:
        holding = asyncio.create_task(client.post(LOGIN, data={"username": first.email, "password": PASSWORD}))
        await inside_argon2(hasher)
        other = first if same_account else second
        busy = await client.post(LOGIN, data={"username": other.email, "password": PASSWORD})
        hasher.open_all()
        held = await holding
        after = await client.post(LOGIN, data={"username": other.email, "password": PASSWORD})
    assert held.status_code == 200
    assert busy.status_code == 503
    assert busy.json()["type"] == "urn:library-api:problem:password-check-busy"
    assert busy.headers["retry-after"] == "1"
    assert after.status_code == 200


@pytest.mark.parametrize("change", ["password", "deactivated"])
async def test_a_login_whose_account_changed_during_the_check_writes_nothing(start: Start, change: str) -> None:
    client, ctx = await start()
    user = await create_user(ctx)
    hasher = gate_hasher(ctx)
    checking = asyncio.create_task(client.post(LOGIN, data={"username": user.email, "password": PASSWORD}))
    await inside_argon2(hasher)
    other_hash = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1).hash("someone-else-set-this")
    values = {"password_hash": other_hash} if change == "password" else {"is_active": False}
    async with ctx.database.sessionmaker() as session:
        await session.execute(update(User).where(User.id == user.id).values(**values))
        await session.commit()
    hasher.open_all()
    answer = await checking
    assert answer.status_code == (409 if change == "password" else 403), answer.text
    async with ctx.database.sessionmaker() as session:
        families = await session.scalar(select(func.count()).where(RefreshFamily.user_id == user.id))
    assert families == 0


async def test_a_password_change_whose_sessions_ended_during_the_check_writes_nothing(start: Start) -> None:
    client, ctx = await start()
    user = await create_user(ctx)
    headers = bearer(token_for(ctx, user))
    hasher = gate_hasher(ctx)
    checking = asyncio.create_task(
        client.patch(ME, json={"password": NEW_PASSWORD, "current_password": PASSWORD}, headers=headers)
    )
    await inside_argon2(hasher)
    assert (await client.post("/api/v1/auth/logout-all", headers=headers)).status_code == 204
    hasher.open_all()
    answer = await checking
    assert answer.status_code == 409, answer.text
    assert answer.json()["type"] == "urn:library-api:problem:conflict"
    still = await client.post(LOGIN, data={"username": user.email, "password": PASSWORD})
    assert still.status_code == 200


async def test_a_login_upgrades_a_hash_made_with_older_parameters(start: Start) -> None:
    client, ctx = await start()
    user = await create_user(ctx)
    weaker = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=2).hash(PASSWORD)
    async with ctx.database.sessionmaker() as session:
        await session.execute(update(User).where(User.id == user.id).values(password_hash=weaker))
        await session.commit()
    assert ctx.passwords.needs_rehash(weaker)
    answer = await client.post(LOGIN, data={"username": user.email, "password": PASSWORD})
    assert answer.status_code == 200
    async with ctx.database.sessionmaker() as session:
        stored = await session.scalar(select(User.password_hash).where(User.id == user.id))
    assert stored is not None and stored != weaker
    assert not ctx.passwords.needs_rehash(stored)
