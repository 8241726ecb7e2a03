"""API tokens through the HTTP API: issued once, stored as a digest, accepted in both headers, revocable."""

from __future__ import annotations

import hashlib
from datetime import timedelta
from pathlib import Path

import httpx
from sqlalchemy import select

from library_api.app import create_app
from library_api.dependencies.context import AppContext
from library_api.security.permissions import Role
from library_api.security.tokens import API_TOKEN_PREFIX, is_api_token
from library_api.tokens.models import ApiToken
from tests.conftest import fast_settings
from tests.observability.test_health import MACHINE_INDEPENDENT
from tests.support.factories import bearer, unique_isbn, user_headers

BOOK = {"title": "Token Book", "authors": ["A. Writer"], "copies": 1}


async def issue(client: httpx.AsyncClient, admin: dict[str, str], *roles: str, **extra: object) -> dict[str, object]:
    response = await client.post("/api/v1/tokens", json={"name": "job", "roles": list(roles), **extra}, headers=admin)
    assert response.status_code == 201, response.text
    body: dict[str, object] = response.json()
    return body


async def test_token_is_shown_once_stored_as_digest_and_accepted_in_both_headers(
    client: httpx.AsyncClient, ctx: AppContext
) -> None:
    _, admin = await user_headers(ctx, Role.ADMIN)
    issued = await issue(client, admin, "librarian", expires_in_days=30)
    token = str(issued["token"])
    assert is_api_token(token) and len(token) > 40
    assert issued["roles"] == ["librarian"] and token.startswith(str(issued["prefix"]))
    async with ctx.database.sessionmaker() as session:
        row = (await session.execute(select(ApiToken).where(ApiToken.id == issued["id"]))).scalar_one()
    assert row.token_hash == hashlib.sha256(token.encode()).hexdigest()
    assert token not in {row.token_hash, row.prefix, row.name, row.roles}

    for headers in (bearer(token), {"X-API-Key": token}):
        created = await client.post("/api/v1/books", json={**BOOK, "isbn": unique_isbn()}, headers=headers)
        assert created.status_code == 201, created.text

    listed = (await client.get("/api/v1/tokens", headers=admin)).json()
    assert [entry["id"] for entry in listed] == [issued["id"]]
    assert "token" not in listed[0] and listed[0]["revoked_at"] is None


async def test_revoked_token_gets_401(client: httpx.AsyncClient, ctx: AppContext) -> None:
    _, admin = await user_headers(ctx, Role.ADMIN)
    token = str((await issue(client, admin, "admin"))["token"])
    token_id = (await client.get("/api/v1/tokens", headers=admin)).json()[0]["id"]
    assert (await client.get("/api/v1/tokens", headers=bearer(token))).status_code == 200
    assert (await client.delete(f"/api/v1/tokens/{token_id}", headers=admin)).status_code == 204
    for headers in (bearer(token), {"X-API-Key": token}):
        response = await client.get("/api/v1/tokens", headers=headers)
        assert response.status_code == 401
        assert response.headers["content-type"] == "application/problem+json"
        assert response.headers["www-authenticate"] == 'Bearer error="invalid_token"'
    listed = (await client.get("/api/v1/tokens", headers=admin)).json()
    first_revocation = listed[0]["revoked_at"]
    assert first_revocation is not None
    assert (await client.delete(f"/api/v1/tokens/{token_id}", headers=admin)).status_code == 204
    assert (await client.get("/api/v1/tokens", headers=admin)).json()[0]["revoked_at"] == first_revocation
    assert (await client.delete("/api/v1/tokens/999999", headers=admin)).status_code == 404


async def test_unknown_forged_and_misplaced_credentials_are_401(client: httpx.AsyncClient, ctx: AppContext) -> None:
    user, headers = await user_headers(ctx)
    jwt_token = headers["Authorization"].removeprefix("Bearer ")
    for sent in (
        bearer(API_TOKEN_PREFIX + "x" * 43),
        {"X-API-Key": API_TOKEN_PREFIX + "y" * 43},
        {"X-API-Key": jwt_token},  # an access JWT is not an API key
        {"X-API-Key": ""},
    ):
        response = await client.get("/api/v1/books", headers=sent)
        assert response.status_code == 401, sent
    assert (await client.get("/api/v1/auth/me", headers=headers)).json()["id"] == user.id


async def test_expired_token_gets_401(client: httpx.AsyncClient, ctx: AppContext) -> None:
    async with ctx.database.sessionmaker() as session:
        _, token = await ctx.api_tokens.create(
            session, name="old", roles=["admin"], issuer=None, lifetime=timedelta(seconds=-1)
        )
        _, live = await ctx.api_tokens.create(
            session, name="new", roles=["admin"], issuer=None, lifetime=timedelta(days=1)
        )
    assert (await client.get("/api/v1/tokens", headers=bearer(token))).status_code == 401
    assert (await client.get("/api/v1/tokens", headers=bearer(live))).status_code == 200


async def test_roles_map_into_the_permission_model(client: httpx.AsyncClient, ctx: AppContext) -> None:
    _, admin = await user_headers(ctx, Role.ADMIN)
    monitor = bearer(str((await issue(client, admin, "monitor"))["token"]))
    assert (await client.get("/api/v1/books", headers=monitor)).status_code == 200
    refused = await client.get("/api/v1/tokens", headers=monitor)
    assert refused.status_code == 403 and "monitor" not in refused.text
    create = await client.post("/api/v1/books", json={**BOOK, "isbn": unique_isbn()}, headers=monitor)
    assert create.status_code == 403
    me = await client.get("/api/v1/auth/me", headers=monitor)
    assert me.status_code == 403  # a service token is not a user account


async def test_invalid_requests_create_nothing(client: httpx.AsyncClient, ctx: AppContext) -> None:
    _, admin = await user_headers(ctx, Role.ADMIN)
    _, reader = await user_headers(ctx)
    for body in (
        {"name": "x", "roles": ["superuser"]},
        {"name": "x", "roles": ["anonymous"]},
        {"name": "x", "roles": []},
        {"name": "", "roles": ["monitor"]},
        {"name": "x", "roles": ["monitor"], "extra": 1},
    ):
        response = await client.post("/api/v1/tokens", json=body, headers=admin)
        assert response.status_code == 422, body
        assert response.headers["content-type"] == "application/problem+json"
    assert (
        await client.post("/api/v1/tokens", json={"name": "x", "roles": ["admin"]}, headers=reader)
    ).status_code == 403
    assert (await client.post("/api/v1/tokens", json={"name": "x", "roles": ["admin"]})).status_code == 401
    assert (await client.get("/api/v1/tokens", headers=admin)).json() == []


async def test_monitor_token_reads_metrics_from_outside_the_monitoring_networks(
    committed_url: str, tmp_path: Path
) -> None:
    app = create_app(
        fast_settings(
            database_url=committed_url,
            upload_dir=tmp_path,
            monitoring_allowed_networks=[],
            **MACHINE_INDEPENDENT,  # a healthy service answers 200 however busy this machine's disk and memory
        )
    )
    async with app.router.lifespan_context(app):
        ctx: AppContext = app.state.context
        async with ctx.database.sessionmaker() as session:
            _, token = await ctx.api_tokens.create(
                session, name="prometheus", roles=["monitor", "monitor"], issuer=None
            )
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            assert (await client.get("/metrics")).status_code == 401
            assert (await client.get("/metrics", headers={"X-API-Key": token})).status_code == 200
            detailed = await client.get("/health/detailed", headers=bearer(token))
            assert detailed.status_code == 200, detailed.text
        async with ctx.database.reader() as session:
            listed = await ctx.api_tokens.list(session)
        assert listed[0].role_list == ["monitor"]
