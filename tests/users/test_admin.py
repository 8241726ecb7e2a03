"""Account administration and the rules no body field can break."""

from __future__ import annotations

import httpx

from library_api.dependencies.context import AppContext
from library_api.security.permissions import Role
from tests.support.factories import PASSWORD, bearer, create_user, token_for, user_headers


async def test_reader_cannot_raise_their_own_role(client: httpx.AsyncClient, ctx: AppContext) -> None:
    reader, headers = await user_headers(ctx)
    sneaky = await client.patch(
        "/api/v1/auth/me", json={"full_name": "Root", "role": "admin", "id": 1}, headers=headers
    )
    assert sneaky.status_code == 422
    me = await client.get("/api/v1/auth/me", headers=headers)
    assert me.json()["role"] == "reader" and me.json()["id"] == reader.id
    assert me.json()["full_name"] != "Root"  # a rejected body changes nothing
    assert (
        await client.patch(f"/api/v1/users/{reader.id}", json={"role": "admin"}, headers=headers)
    ).status_code == 403


async def test_self_service_name_and_password(client: httpx.AsyncClient, ctx: AppContext) -> None:
    reader, headers = await user_headers(ctx)
    renamed = await client.patch("/api/v1/auth/me", json={"full_name": "  New Name  "}, headers=headers)
    assert renamed.json()["full_name"] == "New Name"

    no_current = await client.patch("/api/v1/auth/me", json={"password": "another-password-1"}, headers=headers)
    assert no_current.status_code == 403
    changed = await client.patch(
        "/api/v1/auth/me", json={"password": "another-password-1", "current_password": PASSWORD}, headers=headers
    )
    assert changed.status_code == 200
    # a password change ends every session: the old access token is no longer honoured
    assert (await client.get("/api/v1/auth/me", headers=headers)).status_code == 401
    login = await client.post("/api/v1/auth/login", data={"username": reader.email, "password": "another-password-1"})
    assert login.status_code == 200


async def test_admin_changes_roles_and_deactivates(client: httpx.AsyncClient, ctx: AppContext) -> None:
    admin, admin_headers = await user_headers(ctx, Role.ADMIN)
    reader = await create_user(ctx)
    reader_headers = bearer(token_for(ctx, reader))

    listing = await client.get("/api/v1/users", params={"limit": 100}, headers=admin_headers)
    assert listing.status_code == 200
    assert reader.id in [item["id"] for item in listing.json()["items"]]
    assert all("password_hash" not in item for item in listing.json()["items"])

    promoted = await client.patch(f"/api/v1/users/{reader.id}", json={"role": "librarian"}, headers=admin_headers)
    assert promoted.json()["role"] == "librarian"
    # tokens issued under the old role stop working at once on this worker
    assert (await client.get("/api/v1/auth/me", headers=reader_headers)).status_code == 401
    fresh = await client.post("/api/v1/auth/login", data={"username": reader.email, "password": PASSWORD})
    librarian_headers = bearer(fresh.json()["access_token"])
    assert (
        await client.get("/api/v1/bookings", params={"user_id": admin.id}, headers=librarian_headers)
    ).status_code == 200

    deactivated = await client.patch(f"/api/v1/users/{reader.id}", json={"is_active": False}, headers=admin_headers)
    assert deactivated.json()["is_active"] is False
    assert (await client.get("/api/v1/auth/me", headers=librarian_headers)).status_code == 401
    refused = await client.post("/api/v1/auth/login", data={"username": reader.email, "password": PASSWORD})
    assert refused.status_code == 403
    refresh = await client.post("/api/v1/auth/refresh", json={"refresh_token": fresh.json()["refresh_token"]})
    assert refresh.status_code == 401


async def test_admin_cannot_lock_themselves_out(client: httpx.AsyncClient, ctx: AppContext) -> None:
    admin, headers = await user_headers(ctx, Role.ADMIN)
    assert (
        await client.patch(f"/api/v1/users/{admin.id}", json={"role": "reader"}, headers=headers)
    ).status_code == 409
    assert (
        await client.patch(f"/api/v1/users/{admin.id}", json={"is_active": False}, headers=headers)
    ).status_code == 409
    assert (
        await client.patch(f"/api/v1/users/{admin.id}", json={"full_name": "Still Admin"}, headers=headers)
    ).status_code == 200


async def test_admin_routes_validate_and_404(client: httpx.AsyncClient, ctx: AppContext) -> None:
    _, headers = await user_headers(ctx, Role.ADMIN)
    assert (await client.get("/api/v1/users/999999", headers=headers)).status_code == 404
    assert (await client.patch("/api/v1/users/999999", json={"role": "reader"}, headers=headers)).status_code == 404
    other = await create_user(ctx)
    bad_role = await client.patch(f"/api/v1/users/{other.id}", json={"role": "monitor"}, headers=headers)
    assert bad_role.status_code == 422
    assert (await client.get("/api/v1/users", params={"limit": 1000}, headers=headers)).status_code == 422


async def test_logout_everywhere(client: httpx.AsyncClient, ctx: AppContext) -> None:
    reader = await create_user(ctx)
    first = (await client.post("/api/v1/auth/login", data={"username": reader.email, "password": PASSWORD})).json()
    second = (await client.post("/api/v1/auth/login", data={"username": reader.email, "password": PASSWORD})).json()
    assert (await client.post("/api/v1/auth/logout-all", headers=bearer(first["access_token"]))).status_code == 204
    for pair in (first, second):
        assert (await client.get("/api/v1/auth/me", headers=bearer(pair["access_token"]))).status_code == 401
        assert (
            await client.post("/api/v1/auth/refresh", json={"refresh_token": pair["refresh_token"]})
        ).status_code == 401
