"""Rate limits per caller and route: exact counts, IETF headers, 429 problems, stricter login."""

from __future__ import annotations

import re

import pytest

from library_api.config import Settings, validate_settings
from library_api.security.permissions import Role
from tests.conftest import AppFactory
from tests.support.factories import PASSWORD, bearer, create_user, token_for, user_headers
from tests.support.http import client_for

LOGIN = "/api/v1/auth/login"


async def test_exactly_n_pass_then_429_with_headers(app_factory: AppFactory) -> None:
    app = await app_factory(rate_limit_enabled=True, rate_limit_default="3/minute")
    async with client_for(app) as client:
        responses = [await client.get("/api/v1/books") for _ in range(5)]
        metrics = (await client.get("/metrics")).text
    assert [r.status_code for r in responses] == [200, 200, 200, 429, 429]
    assert [r.headers["ratelimit"] for r in responses[:3]] == [
        '"default";r=2;t=60',
        '"default";r=1;t=60',
        '"default";r=0;t=60',
    ]
    assert all(r.headers["ratelimit-policy"] == '"default";q=3;w=60' for r in responses)
    refused = responses[3]
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.json()["type"] == "urn:library-api:problem:too-many-requests"
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert re.fullmatch(r'"default";r=0;t=\d+', refused.headers["ratelimit"])
    assert 'rate_limit_rejections_total{endpoint="/api/v1/books"} 2.0' in metrics


async def test_each_principal_has_its_own_budget_anonymous_share_the_address(app_factory: AppFactory) -> None:
    app = await app_factory(rate_limit_enabled=True, rate_limit_default="2/minute")
    _, alice = await user_headers(app.state.context)
    _, bob = await user_headers(app.state.context)
    async with client_for(app) as client:
        statuses = [(await client.get("/api/v1/books", headers=alice)).status_code for _ in range(3)]
        statuses += [(await client.get("/api/v1/books", headers=bob)).status_code for _ in range(3)]
        statuses += [(await client.get("/api/v1/books")).status_code for _ in range(3)]
    assert statuses == [200, 200, 429] * 3


async def test_a_bad_token_counts_against_the_address_and_still_gets_401(app_factory: AppFactory) -> None:
    app = await app_factory(rate_limit_enabled=True, rate_limit_default="2/minute")
    async with client_for(app) as client:
        first = await client.get("/api/v1/books", headers=bearer("not-a-token"))
        anonymous = await client.get("/api/v1/books")
        third = await client.get("/api/v1/books", headers=bearer("still-not-a-token"))
    assert [first.status_code, anonymous.status_code, third.status_code] == [401, 200, 429]


async def test_route_policies_from_configuration(app_factory: AppFactory) -> None:
    app = await app_factory(
        rate_limit_enabled=True,
        rate_limit_default="100/minute",
        rate_limit_routes={"GET /api/v1/books/{book_id}": "2/second;3/minute"},
    )
    async with client_for(app) as client:
        details = [await client.get("/api/v1/books/1") for _ in range(3)]
        listing = await client.get("/api/v1/books")
    assert [r.status_code for r in details] == [404, 404, 429]
    policy = '"GET /api/v1/books/{book_id}/1s";q=2;w=1, "GET /api/v1/books/{book_id}/60s";q=3;w=60'
    assert details[0].headers["ratelimit-policy"] == policy
    assert details[2].headers["ratelimit"].startswith('"GET /api/v1/books/{book_id}/1s";r=0;')
    assert listing.status_code == 200
    assert listing.headers["ratelimit-policy"] == '"default";q=100;w=60'


async def test_probes_and_metrics_are_never_limited(app_factory: AppFactory) -> None:
    app = await app_factory(rate_limit_enabled=True, rate_limit_default="1/minute")
    async with client_for(app) as client:
        for path in ("/health", "/health/ready", "/health/startup", "/metrics") * 3:
            response = await client.get(path)
            assert response.status_code == 200, path
            assert "ratelimit" not in response.headers


async def test_login_is_limited_per_address(app_factory: AppFactory) -> None:
    app = await app_factory(rate_limit_enabled=True, rate_limit_routes={f"POST {LOGIN}": "3/minute"})
    accounts = [await create_user(app.state.context) for _ in range(4)]
    async with client_for(app, "192.0.2.10") as client:
        statuses = [
            (await client.post(LOGIN, data={"username": user.email, "password": PASSWORD})).status_code
            for user in accounts
        ]
    async with client_for(app, "192.0.2.11") as other:
        elsewhere = await other.post(LOGIN, data={"username": accounts[3].email, "password": PASSWORD})
    assert statuses == [200, 200, 200, 429]
    assert elsewhere.status_code == 200


async def test_failed_logins_are_limited_per_account_across_addresses(app_factory: AppFactory) -> None:
    """RATE_LIMIT_LOGIN_ACCOUNT counts failures from every address; past it, addresses that failed must wait."""
    app = await app_factory(rate_limit_enabled=True, rate_limit_login_account="2/minute")
    target = await create_user(app.state.context)
    bystander = await create_user(app.state.context)
    statuses = []
    for number in range(3):
        async with client_for(app, f"198.51.100.{number}") as client:
            first = await client.post(LOGIN, data={"username": target.email.upper(), "password": "guess-" * 3})
            second = await client.post(LOGIN, data={"username": target.email, "password": "guess-" * 4})
            statuses.append((first.status_code, second.status_code))
    async with client_for(app, "198.51.100.2") as client:
        refused = await client.post(LOGIN, data={"username": target.email, "password": PASSWORD})
        unaffected = await client.post(LOGIN, data={"username": bystander.email, "password": PASSWORD})
    async with client_for(app, "198.51.100.99") as client:
        owner = await client.post(LOGIN, data={"username": target.email, "password": PASSWORD})
    # The first address spends the account's 2; every later address gets one guess, then waits.
    assert statuses == [(401, 401), (401, 429), (401, 429)]
    assert refused.status_code == 429
    assert refused.json()["detail"] == (
        "Too many failed password attempts for this account from this address; retry later."
    )
    # both the guessing policies and the route's own apply to a login, each a list item
    assert refused.headers["ratelimit-policy"].startswith(
        '"login-account-address";q=5;w=900, "login-account";q=2;w=60, "POST /api/v1/auth/login/60s";'
    )
    assert re.match(r'"login-account";r=0;t=\d+, "POST /api/v1/auth/login/60s";r=\d+', refused.headers["ratelimit"])
    assert int(refused.headers["retry-after"]) >= 1
    assert unaffected.status_code == 200
    assert owner.status_code == 200  # an address that has not failed is never refused


async def test_login_is_not_limited_when_rate_limiting_is_off(app_factory: AppFactory) -> None:
    app = await app_factory(rate_limit_enabled=False, rate_limit_login_account="1/minute")
    user = await create_user(app.state.context)
    async with client_for(app) as client:
        for _ in range(3):
            assert (await client.post(LOGIN, data={"username": user.email, "password": PASSWORD})).status_code == 200


async def test_authenticated_callers_are_counted_once_per_request(app_factory: AppFactory) -> None:
    app = await app_factory(rate_limit_enabled=True, rate_limit_default="5/minute")
    user = await create_user(app.state.context, Role.LIBRARIAN)
    async with client_for(app) as client:
        response = await client.get("/api/v1/auth/me", headers=bearer(token_for(app.state.context, user)))
    assert response.status_code == 200
    assert response.headers["ratelimit"] == '"default";r=4;t=60'


@pytest.mark.parametrize(
    ("values", "problem"),
    [
        ({"rate_limit_default": "lots"}, "RATE_LIMIT_DEFAULT: 'lots' is not a rate limit"),
        ({"rate_limit_routes": {"FETCH /x": "1/second"}}, "RATE_LIMIT_ROUTES: 'FETCH /x' must be"),
        ({"rate_limit_routes": {"GET /x": "1/fortnight"}}, "RATE_LIMIT_ROUTES[GET /x]: '1/fortnight'"),
        ({"rate_limit_login_account": ""}, "RATE_LIMIT_LOGIN_ACCOUNT: '' is not a rate limit"),
        ({"rate_limit_login_account_address": "x"}, "RATE_LIMIT_LOGIN_ACCOUNT_ADDRESS: 'x' is not a rate limit"),
        ({"rate_limit_storage": "redis"}, "RATE_LIMIT_STORAGE: 'redis' needs REDIS_URL"),
    ],
)
def test_bad_rate_limit_settings_are_reported(values: dict[str, object], problem: str) -> None:
    problems = validate_settings(Settings(**values))  # type: ignore[arg-type]
    assert len(problems) == 1
    assert problems[0].startswith(problem)
