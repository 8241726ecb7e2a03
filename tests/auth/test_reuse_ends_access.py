"""Refresh-token reuse is a theft signal: the access tokens already issued stop working too, not only refreshes.

A thief who copied a refresh token and spent it first holds a fresh access token; when the owner then presents
the spent token, the family is revoked and, with the account's ``token_version`` raised, that access token (and
every other of the account) is refused within ``PRINCIPAL_CACHE_TTL``, at once on the worker that saw the reuse.
The owner's other sessions keep their refresh tokens and carry on after one refresh.
"""

from __future__ import annotations

import httpx

from library_api.dependencies.context import AppContext
from tests.support.factories import PASSWORD, create_user


async def login(client: httpx.AsyncClient, email: str) -> dict[str, str]:
    response = await client.post("/api/v1/auth/login", data={"username": email, "password": PASSWORD})
    assert response.status_code == 200, response.text
    return dict(response.json())


async def refresh(client: httpx.AsyncClient, token: str) -> httpx.Response:
    return await client.post("/api/v1/auth/refresh", json={"refresh_token": token})


async def me(client: httpx.AsyncClient, pair: dict[str, str]) -> int:
    response = await client.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {pair['access_token']}"})
    return response.status_code


async def test_reuse_ends_the_access_tokens_already_issued(client: httpx.AsyncClient, ctx: AppContext) -> None:
    user = await create_user(ctx)
    stolen = await login(client, user.email)
    other_device = await login(client, user.email)
    thief = (await refresh(client, stolen["refresh_token"])).json()  # the thief spends the copied token first
    assert await me(client, thief) == await me(client, other_device) == 200

    reused = await refresh(client, stolen["refresh_token"])  # the owner presents it: reuse detected
    assert reused.status_code == 401 and "reuse" in reused.json()["detail"]

    assert await me(client, thief) == 401
    assert (await refresh(client, thief["refresh_token"])).status_code == 401
    assert await me(client, other_device) == 401  # every access token of the account ended ...
    renewed = await refresh(client, other_device["refresh_token"])  # ... but the other session refreshes on
    assert renewed.status_code == 200
    assert await me(client, renewed.json()) == 200


async def test_logging_out_one_session_leaves_the_others_untouched(client: httpx.AsyncClient, ctx: AppContext) -> None:
    """Single-session logout revokes that family only (the documented choice); logout-all ends every token."""
    user = await create_user(ctx)
    first, second = await login(client, user.email), await login(client, user.email)
    out = await client.post("/api/v1/auth/logout", json={"refresh_token": first["refresh_token"]})
    assert out.status_code == 204
    assert (await refresh(client, first["refresh_token"])).status_code == 401
    assert await me(client, second) == 200
    assert await me(client, first) == 200  # lives until it expires (ACCESS_TOKEN_EXPIRE_MINUTES)
    everywhere = await client.post(
        "/api/v1/auth/logout-all", headers={"Authorization": f"Bearer {second['access_token']}"}
    )
    assert everywhere.status_code == 204
    assert await me(client, first) == await me(client, second) == 401
