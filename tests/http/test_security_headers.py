"""Security headers on every response, whatever answered it."""

from __future__ import annotations

import httpx
import pytest
from starlette.responses import Response

from library_api.config import DEFAULT_CONTENT_SECURITY_POLICY, Settings, validate_settings
from tests.conftest import AppFactory
from tests.support.http import client_for

EXPECTED = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "strict-origin-when-cross-origin",
    "x-xss-protection": "0",
    "content-security-policy": DEFAULT_CONTENT_SECURITY_POLICY,
}


def assert_secured(response: httpx.Response) -> None:
    for name, value in EXPECTED.items():
        assert response.headers.get(name) == value, (response.status_code, name)
    assert "strict-transport-security" not in response.headers  # plain HTTP


async def test_headers_on_answers_of_every_layer(app_factory: AppFactory) -> None:
    app = await app_factory(
        allowed_hosts=["testserver"], rate_limit_enabled=True, rate_limit_default="3/minute", max_request_body_size=1024
    )
    async with client_for(app) as client:
        responses = [
            await client.get("/api/v1/books"),  # 200 from a route
            await client.get("/no/such/route"),  # 404 from the router
            await client.post("/api/v1/books", content=b"x" * 5000),  # 413 from the body limit
            await client.get("/api/v1/books", headers={"Host": "evil.example"}),  # 400 from trusted hosts
            await client.get("/api/v1/books"),
            await client.get("/api/v1/books"),  # 429 from the rate limiter
        ]
    assert [response.status_code for response in responses] == [200, 404, 413, 400, 200, 429]
    for response in responses:
        assert_secured(response)


async def test_hsts_only_over_https(app_factory: AppFactory) -> None:
    app = await app_factory(hsts_max_age=600)
    async with client_for(app, scheme="https") as client:
        secure = await client.get("/health")
    assert secure.headers["strict-transport-security"] == "max-age=600; includeSubDomains"
    disabled = await app_factory(hsts_max_age=0)
    async with client_for(disabled, scheme="https") as client:
        assert "strict-transport-security" not in (await client.get("/health")).headers


async def test_docs_page_gets_a_policy_that_lets_swagger_ui_load(app_factory: AppFactory) -> None:
    app = await app_factory()
    async with client_for(app) as client:
        docs = await client.get("/docs")
    assert docs.status_code == 200
    policy = docs.headers["content-security-policy"]
    assert "https://cdn.jsdelivr.net" in policy
    assert "frame-ancestors 'none'" in policy


async def test_a_header_set_by_the_route_is_kept(app_factory: AppFactory) -> None:
    app = await app_factory(content_security_policy="default-src 'none'")

    @app.get("/custom-policy")
    async def custom() -> Response:
        return Response("ok", headers={"Content-Security-Policy": "default-src 'self' https://cdn.example"})

    async with client_for(app) as client:
        response = await client.get("/custom-policy")
        plain = await client.get("/health")
    assert response.headers.get_list("content-security-policy") == ["default-src 'self' https://cdn.example"]
    assert plain.headers["content-security-policy"] == "default-src 'none'"


@pytest.mark.parametrize("policy", ["default-src 'self'\nscript-src *"])
def test_a_multi_line_policy_is_refused(policy: str) -> None:
    assert validate_settings(Settings(content_security_policy=policy)) == [
        "CONTENT_SECURITY_POLICY: must be a single line"
    ]
