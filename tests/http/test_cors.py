"""CORS from BACKEND_CORS_ORIGINS, also on refusals, so browsers can read them."""

from __future__ import annotations

from tests.conftest import AppFactory
from tests.support.http import client_for

ORIGIN = "https://app.example.org"


async def test_preflight_and_simple_requests_from_an_allowed_origin(app_factory: AppFactory) -> None:
    app = await app_factory(backend_cors_origins=[ORIGIN])
    async with client_for(app) as client:
        preflight = await client.options(
            "/api/v1/books",
            headers={
                "Origin": ORIGIN,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "Authorization, Content-Type",
            },
        )
        simple = await client.get("/api/v1/books", headers={"Origin": ORIGIN})
        foreign = await client.get("/api/v1/books", headers={"Origin": "https://evil.example"})
        same_origin = await client.get("/api/v1/books")
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == ORIGIN
    assert "POST" in preflight.headers["access-control-allow-methods"]
    assert simple.headers["access-control-allow-origin"] == ORIGIN
    exposed = simple.headers["access-control-expose-headers"].lower()
    assert {"x-request-id", "etag", "ratelimit", "ratelimit-policy", "retry-after"} <= {
        name.strip() for name in exposed.split(",")
    }
    assert "access-control-allow-origin" not in foreign.headers
    assert "access-control-allow-origin" not in same_origin.headers


async def test_rate_limit_refusal_carries_cors_headers(app_factory: AppFactory) -> None:
    app = await app_factory(backend_cors_origins=[ORIGIN], rate_limit_enabled=True, rate_limit_default="1/minute")
    async with client_for(app) as client:
        await client.get("/api/v1/books", headers={"Origin": ORIGIN})
        refused = await client.get("/api/v1/books", headers={"Origin": ORIGIN})
    assert refused.status_code == 429
    assert refused.headers["access-control-allow-origin"] == ORIGIN


async def test_no_cors_without_configured_origins(app_factory: AppFactory) -> None:
    app = await app_factory()
    async with client_for(app) as client:
        response = await client.get("/api/v1/books", headers={"Origin": ORIGIN})
    assert "access-control-allow-origin" not in response.headers
