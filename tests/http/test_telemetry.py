"""One access line per request, and an unhandled error answered as a problem with every header."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from library_api.security.permissions import Role
from tests.conftest import AppFactory
from tests.support.factories import user_headers
from tests.support.http import client_for
from tests.support.logs import CapturedLog, captured_log


@pytest.fixture
def log() -> Iterator[CapturedLog]:
    with captured_log() as captured:
        yield captured


async def test_access_line_fields(app_factory: AppFactory, log: CapturedLog) -> None:
    app = await app_factory()
    user, headers = await user_headers(app.state.context, Role.READER)
    async with client_for(app, "192.0.2.44") as client:
        response = await client.get("/api/v1/books/12345?token=do-not-log-me", headers=headers)
    (line,) = log.access()
    assert line["request_id"] == response.headers["x-request-id"]
    assert line["message"].startswith("GET /api/v1/books/12345 404 ")
    assert line["method"] == "GET"
    assert line["path"] == "/api/v1/books/12345"
    assert line["route"] == "/api/v1/books/{book_id}"
    assert line["status"] == 404
    assert line["bytes"] == len(response.content)
    assert line["client"] == "192.0.2.44"
    assert line["principal"] == f"user:{user.id}"
    assert 0 < line["duration_ms"] < 10_000
    assert line["level"] == "info"
    assert isinstance(line["pid"], int)
    assert "do-not-log-me" not in log.text


async def test_probes_and_scrapes_write_no_access_line(app_factory: AppFactory, log: CapturedLog) -> None:
    app = await app_factory()
    async with client_for(app) as client:
        for path in ("/health", "/health/ready", "/health/startup", "/metrics", "/api/v1/books"):
            await client.get(path)
    assert [line["path"] for line in log.access()] == ["/api/v1/books"]


async def test_access_log_can_be_turned_off(app_factory: AppFactory, log: CapturedLog) -> None:
    app = await app_factory(access_log=False)
    async with client_for(app) as client:
        assert (await client.get("/api/v1/books")).status_code == 200
    assert log.access() == []


async def test_unhandled_error_is_a_500_problem_logged_once_with_the_request_id(
    app_factory: AppFactory, log: CapturedLog
) -> None:
    app = await app_factory()

    @app.get("/explode")
    async def explode() -> None:
        raise RuntimeError("boom with password=hunter2 inside")

    async with client_for(app) as client:
        response = await client.get("/explode")
        after = await client.get("/metrics")
    assert response.status_code == 500
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json() == {
        "type": "urn:library-api:problem:internal-error",
        "title": "Internal server error",
        "status": 500,
        "instance": "/explode",
    }
    request_id = response.headers["x-request-id"]
    assert response.headers["x-frame-options"] == "DENY"
    errors = [line for line in log.records() if line["level"] == "error"]
    assert len(errors) == 1
    assert errors[0]["request_id"] == request_id
    assert "RuntimeError" in errors[0]["exception"]
    assert "hunter2" not in log.text
    (access,) = [line for line in log.access() if line["path"] == "/explode"]
    assert access["status"] == 500
    assert access["request_id"] == request_id
    assert 'http_requests_total{endpoint="/explode",method="GET",status="500"} 1.0' in after.text
    assert 'http_requests_in_progress{endpoint="/explode",method="GET"} 0.0' in after.text


async def test_unknown_methods_are_grouped(app_factory: AppFactory) -> None:
    app = await app_factory()
    async with client_for(app) as client:
        await client.request("BREW", "/api/v1/books")
        metrics = (await client.get("/metrics")).text
    assert 'http_requests_total{endpoint="/api/v1/books",method="OTHER",status="405"} 1.0' in metrics
