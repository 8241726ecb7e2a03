"""Refresh-token edge cases: expiry, deactivated owners, concurrent rotation, and hash upgrades at login."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import timedelta
from pathlib import Path

import httpx
from sqlalchemy import select, update

from library_api.app import create_app
from library_api.auth.models import RefreshFamily, RefreshToken
from library_api.db.base import utcnow
from library_api.dependencies.context import AppContext
from library_api.users.models import User
from tests.conftest import fast_settings
from tests.support.factories import PASSWORD, create_user


async def login(client: httpx.AsyncClient, email: str) -> dict[str, str]:
    response = await client.post("/api/v1/auth/login", data={"username": email, "password": PASSWORD})
    assert response.status_code == 200, response.text
    return dict(response.json())


async def test_expired_refresh_token_is_refused(client: httpx.AsyncClient, ctx: AppContext) -> None:
    user = await create_user(ctx)
    tokens = await login(client, user.email)
    async with ctx.database.sessionmaker() as session:
        await session.execute(update(RefreshToken).values(expires_at=utcnow() - timedelta(seconds=1)))
        await session.commit()
    response = await client.post("/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert response.status_code == 401
    assert "expired" in response.json()["detail"]


async def test_refresh_for_a_deactivated_account_revokes_the_family(client: httpx.AsyncClient, ctx: AppContext) -> None:
    user = await create_user(ctx)
    tokens = await login(client, user.email)
    async with ctx.database.sessionmaker() as session:
        await session.execute(update(User).where(User.id == user.id).values(is_active=False))
        await session.commit()
    response = await client.post("/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert response.status_code == 401
    async with ctx.database.sessionmaker() as session:
        reason = (await session.execute(select(RefreshFamily.revoked_reason))).scalars().all()
    assert reason == ["account_inactive"]


async def test_unknown_refresh_token_and_logout_of_unknown_token(client: httpx.AsyncClient) -> None:
    assert (await client.post("/api/v1/auth/refresh", json={"refresh_token": "nope"})).status_code == 401
    assert (await client.post("/api/v1/auth/logout", json={"refresh_token": "nope"})).status_code == 204


async def test_login_upgrades_a_weaker_password_hash(committed_url: str, tmp_path: Path) -> None:
    weak = create_app(fast_settings(database_url=committed_url, upload_dir=tmp_path))
    async with weak.router.lifespan_context(weak):
        user = await create_user(weak.state.context)
        old_hash = user.password_hash
    stronger = create_app(fast_settings(database_url=committed_url, upload_dir=tmp_path, password_hash_time_cost=2))
    async with stronger.router.lifespan_context(stronger):
        transport = httpx.ASGITransport(app=stronger)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            await login(client, user.email)
        async with stronger.state.context.database.sessionmaker() as session:
            new_hash = (await session.execute(select(User.password_hash).where(User.id == user.id))).scalar_one()
    assert new_hash != old_hash
    assert "t=2" in new_hash


async def test_concurrent_rotation_of_one_token_has_one_winner(committed_url: str, tmp_path: Path) -> None:
    app = create_app(fast_settings(database_url=committed_url, upload_dir=tmp_path))
    async with app.router.lifespan_context(app):
        user = await create_user(app.state.context)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            tokens = await login(client, user.email)
            body = {"refresh_token": tokens["refresh_token"]}
            responses = await asyncio.gather(*(client.post("/api/v1/auth/refresh", json=body) for _ in range(2)))
            assert Counter(r.status_code for r in responses) == {200: 1, 401: 1}
            winner = next(r for r in responses if r.status_code == 200).json()
            # reuse was detected, so the family is revoked and the winner's successor is dead too
            successor = await client.post("/api/v1/auth/refresh", json={"refresh_token": winner["refresh_token"]})
            assert successor.status_code == 401
