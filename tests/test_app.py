"""The factory: independent apps, the embedded start-up, the OpenAPI document and the error shapes."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from library_api.app import create_app
from library_api.dependencies.context import AppContext
from library_api.problems import PROBLEM_CONTENT_TYPE
from tests.conftest import fast_settings
from tests.support.factories import bearer, create_user, token_for


async def started(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")


async def test_embedded_default_migrates_and_loads_the_sample_catalogue(tmp_path: Path) -> None:
    settings = fast_settings(
        database_url=f"sqlite+aiosqlite:///{tmp_path}/fresh.db", auto_migrate=None, seed_sample_on_empty=None
    )
    assert settings.should_auto_migrate and settings.should_seed_on_empty
    app = create_app(settings)
    async with app.router.lifespan_context(app), await started(app) as client:
        books = (await client.get("/api/v1/books", params={"limit": 5})).json()
        assert books["total"] >= 200
        assert all(len(item["isbn"]) == 13 for item in books["items"])
    again = create_app(settings)  # a restart finds the catalogue and loads nothing twice
    async with again.router.lifespan_context(again), await started(again) as client:
        assert (await client.get("/api/v1/books")).json()["total"] == books["total"]


async def test_two_apps_in_one_process_are_independent(tmp_path: Path) -> None:
    first = create_app(fast_settings(database_url=f"sqlite+aiosqlite:///{tmp_path}/a.db", auto_migrate=True))
    second = create_app(
        fast_settings(database_url=f"sqlite+aiosqlite:///{tmp_path}/b.db", auto_migrate=True, project_name="Other")
    )
    assert first.state.context is not second.state.context
    async with (
        first.router.lifespan_context(first),
        second.router.lifespan_context(second),
        await started(first) as a,
        await started(second) as b,
    ):
        await a.post(
            "/api/v1/auth/register", json={"email": "x@example.org", "password": "password-1", "full_name": "X"}
        )
        created = await b.post(
            "/api/v1/auth/register", json={"email": "x@example.org", "password": "password-1", "full_name": "X"}
        )
        assert created.status_code == 201  # a different database
        assert (await b.get("/openapi.json")).json()["info"]["title"] == "Other"


async def test_openapi_documents_errors_as_problems(client: httpx.AsyncClient) -> None:
    schema = (await client.get("/openapi.json")).json()
    assert "HTTPValidationError" not in schema["components"]["schemas"]
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            for status, response in operation["responses"].items():
                if status[0] in "45":
                    assert list(response["content"]) == [PROBLEM_CONTENT_TYPE], (method, path, status)
    assert "OAuth2PasswordBearer" in schema["components"]["securitySchemes"]


async def test_every_operation_taking_a_credential_documents_401(client: httpx.AsyncClient, ctx: AppContext) -> None:
    schema = (await client.get("/openapi.json")).json()
    credentialed = [
        (method, path, operation)
        for path, item in schema["paths"].items()
        if path.startswith("/api/")
        for method, operation in item.items()
        if operation.get("security")
    ]
    assert ("get", "/api/v1/auth/principal") in {(method, path) for method, path, _ in credentialed}
    assert [(method, path) for method, path, operation in credentialed if "401" not in operation["responses"]] == []

    # and the public route answers it indeed, for a token revoked by a logout everywhere
    user = await create_user(ctx)
    token = token_for(ctx, user)
    assert (await client.get("/api/v1/auth/principal", headers=bearer(token))).json()["subject"] == f"user:{user.id}"
    assert (await client.post("/api/v1/auth/logout-all", headers=bearer(token))).status_code == 204
    revoked = await client.get("/api/v1/auth/principal", headers=bearer(token))
    assert revoked.status_code == 401
    assert revoked.headers["content-type"] == PROBLEM_CONTENT_TYPE


async def test_unknown_route_and_wrong_method_are_problems(client: httpx.AsyncClient) -> None:
    missing = await client.get("/api/v1/nothing-here")
    assert missing.status_code == 404
    assert missing.headers["content-type"] == PROBLEM_CONTENT_TYPE
    assert missing.json()["type"] == "urn:library-api:problem:not-found"
    wrong = await client.put("/api/v1/books")
    assert wrong.status_code == 405
    assert set(wrong.headers["allow"].replace(" ", "").split(",")) == {"GET", "POST"}
    assert wrong.json()["type"] == "urn:library-api:problem:method-not-allowed"


async def test_malformed_json_is_a_422_problem(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/api/v1/auth/register", content=b'{"email": ', headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
    assert response.json()["errors"][0]["type"] == "json_invalid"


async def test_unexpected_errors_never_leak_a_stack_trace(
    app: FastAPI, client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    async def explode() -> None:
        raise RuntimeError("secret internal detail")

    app.add_api_route("/explode", explode)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as raw:
        response = await raw.get("/explode")
    assert response.status_code == 500
    assert response.headers["content-type"] == PROBLEM_CONTENT_TYPE
    assert "secret internal detail" not in response.text and "Traceback" not in response.text
    assert any("secret internal detail" in (record.exc_text or str(record.exc_info)) for record in caplog.records)


async def test_liveness_and_readiness(client: httpx.AsyncClient, app: FastAPI) -> None:
    assert (await client.get("/health")).json()["status"] == "ok"
    ready = await client.get("/health/ready")
    assert ready.status_code == 200 and ready.json()["checks"]["database"] == "ok"
    app.state.context.shutdown.force()
    draining = await client.get("/health/ready")
    assert draining.status_code == 503 and draining.json()["checks"]["shutdown"] == "draining"
