"""Password guessing against one account: the guesser is stopped, the owner never locked out.

The attacks run for real: over HTTP on loopback through a trusted proxy's ``X-Forwarded-For`` (as nginx sends
it), on SQLite and PostgreSQL, with the counts in process memory and in Redis; and in process from chosen peer
addresses for the finer rules. Every attack is bounded: a few dozen requests.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path

import httpx
import pytest
import pytest_asyncio

from library_api.app import create_app
from library_api.dependencies.context import AppContext
from library_api.security.permissions import Role
from tests.conftest import AppFactory, fast_settings
from tests.support.factories import PASSWORD, bearer, create_user, token_for
from tests.support.hashing import gate_hasher
from tests.support.http import client_for
from tests.support.live import serve_in_loop
from tests.support.services import REDIS_URL, require_redis

LOGIN = "/api/v1/auth/login"
ME = "/api/v1/auth/me"
WRONG = "not-the-password-at-all"
PAIR_POLICY = '"login-account-address";q=5;w=900, "login-account";q=10;w=900'

StartLive = Callable[..., Awaitable[tuple[httpx.AsyncClient, AppContext]]]


@pytest_asyncio.fixture
async def start_live(committed_url: str, tmp_path: Path) -> AsyncIterator[StartLive]:
    """The application under a real Uvicorn on loopback, trusting 127.0.0.1 as its proxy, and a client to it."""
    async with AsyncExitStack() as stack:

        async def start(**values: object) -> tuple[httpx.AsyncClient, AppContext]:
            settings = fast_settings(
                database_url=committed_url,
                upload_dir=tmp_path / "uploads",
                rate_limit_enabled=True,
                trusted_proxies=["127.0.0.1"],
                broadcast_interval=0,
                **values,
            )
            app = create_app(settings)
            live = await stack.enter_async_context(serve_in_loop(app))
            client = await stack.enter_async_context(httpx.AsyncClient(base_url=live.http, timeout=30))
            return client, app.state.context

        yield start


def storage_settings(storage: str) -> dict[str, object]:
    if storage == "memory":
        return {}
    require_redis()
    return {"redis_url": REDIS_URL, "cache_key_prefix": f"t{uuid.uuid4().hex[:10]}_"}


def via(address: str) -> dict[str, str]:
    """Headers of a request the trusted proxy forwards for ``address``."""
    return {"X-Forwarded-For": address}


def assert_refused_for_guessing(response: httpx.Response, policy: str = "login-account-address") -> None:
    assert response.status_code == 429, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["type"] == "urn:library-api:problem:too-many-requests"
    assert int(response.headers["retry-after"]) >= 1
    assert response.headers["ratelimit-policy"].startswith(PAIR_POLICY)
    assert re.match(rf'"{policy}";r=0;t=\d+', response.headers["ratelimit"]), response.headers["ratelimit"]


@pytest.mark.parametrize("storage", ["memory", "redis"])
async def test_the_owner_logs_in_while_an_attacker_hammers_the_account(start_live: StartLive, storage: str) -> None:
    client, ctx = await start_live(**storage_settings(storage))
    owner = await create_user(ctx, Role.ADMIN)
    # Spellings that find the same account: every one counts against it.
    variants = [owner.email, owner.email.upper(), f"  {owner.email}  ", owner.email.title(), f"\t{owner.email.upper()}"]

    async def guess(address: str, number: int) -> httpx.Response:
        form = {"username": variants[number % len(variants)], "password": f"{WRONG}-{number}"}
        return await client.post(LOGIN, data=form, headers=via(address))

    first = [await guess("203.0.113.1", n) for n in range(8)]
    assert [r.status_code for r in first] == [401] * 5 + [429] * 3
    for refused in first[5:]:
        assert_refused_for_guessing(refused)
    second = [await guess("203.0.113.2", n) for n in range(7)]
    assert [r.status_code for r in second] == [401] * 5 + [429] * 2
    # The account has now failed 10 times: a fresh address gets one guess, then waits out its failure.
    third = [await guess("203.0.113.3", n) for n in range(3)]
    assert [r.status_code for r in third] == [401, 429, 429]
    assert_refused_for_guessing(third[1], policy="login-account")

    # While the attack goes on from every address, the owner signs in from home with the right password.
    hammering = [asyncio.create_task(guess(f"203.0.113.{1 + n % 3}", n)) for n in range(15)]
    owner_login = await client.post(
        LOGIN, data={"username": owner.email, "password": PASSWORD}, headers=via("198.51.100.7")
    )
    attacked = await asyncio.gather(*hammering)
    assert owner_login.status_code == 200, owner_login.text
    tokens = owner_login.json()
    assert tokens["refresh_token"]
    me = await client.get(ME, headers={**bearer(tokens["access_token"]), **via("198.51.100.7")})
    assert me.status_code == 200
    assert me.json()["email"] == owner.email
    assert all(r.status_code == 429 and int(r.headers["retry-after"]) >= 1 for r in attacked)
    # A bystander's account is untouched by all of this, even from an attacking address.
    bystander = await create_user(ctx)
    other = await client.post(
        LOGIN, data={"username": bystander.email, "password": PASSWORD}, headers=via("203.0.113.3")
    )
    assert other.status_code == 200


async def test_a_refused_guess_costs_no_hashing(app_factory: AppFactory) -> None:
    app = await app_factory(rate_limit_enabled=True)
    ctx: AppContext = app.state.context
    owner = await create_user(ctx)
    hasher = gate_hasher(ctx)
    hasher.open_all()
    async with client_for(app, "203.0.113.9") as attacker:
        statuses = [
            (await attacker.post(LOGIN, data={"username": owner.email, "password": WRONG})).status_code
            for _ in range(8)
        ]
    assert statuses == [401] * 5 + [429] * 3
    assert hasher.entered == 5


async def test_password_changes_share_the_login_accounting(app_factory: AppFactory) -> None:
    app = await app_factory(rate_limit_enabled=True)
    ctx: AppContext = app.state.context
    first = await create_user(ctx)
    second = await create_user(ctx)
    change = {"password": "brand-new-password-1", "current_password": WRONG}
    right = {"password": "brand-new-password-1", "current_password": PASSWORD}
    async with client_for(app, "203.0.113.20") as thief, client_for(app, "198.51.100.20") as owner:
        # Login failures from the thief's address spend the budget a password change draws on...
        logins = [await thief.post(LOGIN, data={"username": first.email, "password": WRONG}) for _ in range(5)]
        assert [r.status_code for r in logins] == [401] * 5
        guessed = await thief.patch(ME, json=change, headers=bearer(token_for(ctx, first)))
        assert_refused_for_guessing(guessed)
        # ...so that even the right current password is not checked from there,
        knowing = await thief.patch(ME, json=right, headers=bearer(token_for(ctx, first)))
        assert knowing.status_code == 429
        # while the owner, elsewhere, changes it.
        changed = await owner.patch(ME, json={**right, "full_name": "Owner"}, headers=bearer(token_for(ctx, first)))
        assert changed.status_code == 200, changed.text
        assert changed.json()["full_name"] == "Owner"

        # ...and password-change failures spend the budget a login draws on.
        headers = bearer(token_for(ctx, second))
        patches = [await thief.patch(ME, json=change, headers=headers) for _ in range(6)]
        assert [r.status_code for r in patches] == [403] * 5 + [429]
        assert_refused_for_guessing(patches[5])
        login = await thief.post(LOGIN, data={"username": second.email.upper(), "password": PASSWORD})
        assert_refused_for_guessing(login)
        elsewhere = await owner.post(LOGIN, data={"username": second.email, "password": PASSWORD})
        assert elsewhere.status_code == 200
    async with client_for(app) as monitor:
        metrics = (await monitor.get("/metrics")).text
    assert 'rate_limit_rejections_total{endpoint="/api/v1/auth/me"} 3.0' in metrics
    assert 'rate_limit_rejections_total{endpoint="/api/v1/auth/login"} 1.0' in metrics


async def test_a_success_clears_the_failures_of_its_address(app_factory: AppFactory) -> None:
    app = await app_factory(rate_limit_enabled=True)
    owner = await create_user(app.state.context)
    async with client_for(app, "198.51.100.30") as client:

        async def attempt(password: str) -> int:
            return (await client.post(LOGIN, data={"username": owner.email, "password": password})).status_code

        assert [await attempt(WRONG) for _ in range(4)] == [401] * 4
        assert await attempt(PASSWORD) == 200
        # Without the clearing, the second of these would have been the fifth failure and the third a 429.
        assert [await attempt(WRONG) for _ in range(4)] == [401] * 4
        assert await attempt(PASSWORD) == 200


async def test_under_attack_a_known_address_keeps_trying_and_a_failed_stranger_waits(app_factory: AppFactory) -> None:
    app = await app_factory(rate_limit_enabled=True)
    owner = await create_user(app.state.context)

    async def attempt(address: str, password: str) -> int:
        async with client_for(app, address) as client:
            return (await client.post(LOGIN, data={"username": owner.email, "password": password})).status_code

    assert await attempt("198.51.100.30", PASSWORD) == 200  # the owner's usual address becomes known
    # Attackers push the account to its limit of 10 failures; past it, a fresh address gets one guess.
    assert [await attempt("203.0.113.31", WRONG) for _ in range(6)] == [401] * 5 + [429]
    assert [await attempt("203.0.113.32", WRONG) for _ in range(5)] == [401] * 5
    assert [await attempt("203.0.113.33", WRONG) for _ in range(2)] == [401, 429]
    # The owner's known address keeps its own budget: a typo, then in.
    assert await attempt("198.51.100.30", WRONG) == 401
    assert await attempt("198.51.100.30", PASSWORD) == 200
    # An unknown address that has failed waits even with the right password; one that has not, gets in.
    assert await attempt("198.51.100.31", WRONG) == 401
    assert await attempt("198.51.100.31", PASSWORD) == 429
    assert await attempt("198.51.100.32", PASSWORD) == 200


async def test_without_known_addresses_every_failed_address_waits_under_attack(app_factory: AppFactory) -> None:
    app = await app_factory(
        rate_limit_enabled=True, rate_limit_login_known_address_days=0, rate_limit_login_account="3/hour"
    )
    owner = await create_user(app.state.context)

    async def attempt(address: str, password: str) -> int:
        async with client_for(app, address) as client:
            return (await client.post(LOGIN, data={"username": owner.email, "password": password})).status_code

    assert await attempt("198.51.100.40", PASSWORD) == 200
    assert [await attempt("203.0.113.41", WRONG) for _ in range(3)] == [401] * 3
    assert await attempt("198.51.100.40", WRONG) == 401
    assert await attempt("198.51.100.40", PASSWORD) == 429
    assert await attempt("198.51.100.42", PASSWORD) == 200


async def test_concurrent_guesses_from_one_address_get_exactly_the_budget(app_factory: AppFactory) -> None:
    app = await app_factory(rate_limit_enabled=True)
    owner = await create_user(app.state.context)
    async with client_for(app, "203.0.113.50") as attacker:
        burst = await asyncio.gather(
            *(attacker.post(LOGIN, data={"username": owner.email, "password": f"{WRONG}{n}"}) for n in range(10))
        )
    assert sorted(r.status_code for r in burst) == [401] * 5 + [429] * 5


async def test_nothing_is_counted_when_rate_limiting_is_off(app_factory: AppFactory) -> None:
    app = await app_factory(rate_limit_enabled=False)
    owner = await create_user(app.state.context)
    async with client_for(app, "203.0.113.60") as client:
        statuses = [
            (await client.post(LOGIN, data={"username": owner.email, "password": WRONG})).status_code for _ in range(12)
        ]
        right = await client.post(LOGIN, data={"username": owner.email, "password": PASSWORD})
    assert statuses == [401] * 12
    assert right.status_code == 200
