"""The account journey through HTTP: register, log in, use, refresh, log out."""

from __future__ import annotations

import httpx

from tests.support.factories import PASSWORD, unique_email


async def register(client: httpx.AsyncClient, email: str, **extra: object) -> httpx.Response:
    body = {"email": email, "password": PASSWORD, "full_name": "Ada Reader", **extra}
    return await client.post("/api/v1/auth/register", json=body)


async def login(client: httpx.AsyncClient, email: str, password: str = PASSWORD) -> httpx.Response:
    return await client.post("/api/v1/auth/login", data={"username": email, "password": password})


async def test_register_login_me_refresh_logout(client: httpx.AsyncClient) -> None:
    email = unique_email("Ada")
    created = await register(client, email)
    assert created.status_code == 201, created.text
    assert created.json()["role"] == "reader"
    assert created.json()["email"] == email.lower()
    assert "password_hash" not in created.json()

    tokens = (await login(client, email.upper())).json()
    assert tokens["token_type"] == "bearer"
    me = await client.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {tokens['access_token']}"})
    assert me.status_code == 200
    assert me.json()["email"] == email.lower()

    rotated = await client.post("/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert rotated.status_code == 200
    assert rotated.json()["refresh_token"] != tokens["refresh_token"]

    out = await client.post("/api/v1/auth/logout", json={"refresh_token": rotated.json()["refresh_token"]})
    assert out.status_code == 204
    after = await client.post("/api/v1/auth/refresh", json={"refresh_token": rotated.json()["refresh_token"]})
    assert after.status_code == 401
    assert after.headers["content-type"] == "application/problem+json"


async def test_duplicate_email_is_a_conflict(client: httpx.AsyncClient) -> None:
    email = unique_email()
    assert (await register(client, email)).status_code == 201
    again = await register(client, email.upper())
    assert again.status_code == 409
    assert again.json()["type"] == "urn:library-api:problem:conflict"


async def test_wrong_password_and_unknown_email_look_the_same(client: httpx.AsyncClient) -> None:
    email = unique_email()
    await register(client, email)
    wrong = await login(client, email, "not-the-password")
    unknown = await login(client, unique_email(), PASSWORD)
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json()["detail"] == unknown.json()["detail"]


async def test_refresh_token_reuse_revokes_the_family(client: httpx.AsyncClient) -> None:
    email = unique_email()
    await register(client, email)
    first = (await login(client, email)).json()
    second = (await client.post("/api/v1/auth/refresh", json={"refresh_token": first["refresh_token"]})).json()

    reused = await client.post("/api/v1/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert reused.status_code == 401
    assert "reuse" in reused.json()["detail"]

    # the legitimate successor was revoked with its family
    successor = await client.post("/api/v1/auth/refresh", json={"refresh_token": second["refresh_token"]})
    assert successor.status_code == 401

    # another login is a new family and still works
    other = (await login(client, email)).json()
    assert (
        await client.post("/api/v1/auth/refresh", json={"refresh_token": other["refresh_token"]})
    ).status_code == 200


async def test_register_refuses_role_and_id_fields(client: httpx.AsyncClient) -> None:
    email = unique_email()
    response = await register(client, email, role="admin", id=1)
    assert response.status_code == 422
    fields = {error["field"] for error in response.json()["errors"]}
    assert {"body.role", "body.id"} <= fields
    assert (await login(client, email)).status_code == 401  # nothing was created
