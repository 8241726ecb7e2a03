"""Metric values after real requests, route-template labels, and a fixed number of series."""

from __future__ import annotations

import re
from datetime import timedelta

import httpx
import pytest

from library_api.db.base import utcnow
from library_api.observability.metrics import Metrics, query_type
from library_api.security.permissions import Role
from tests.conftest import AppFactory
from tests.support.factories import PASSWORD, bearer, create_book, create_user, token_for, unique_email, user_headers
from tests.support.http import client_for
from tests.support.metrics import samples

UNCACHED_LIST = "/api/v1/bookings?limit=20&status=active"
"""A reader's booking list that is read from the database every time: a filtered list is never served from the
reader's page cache (``bookings/page_cache.py``), and this test is about what the database read does."""


def value(text: str, name: str, **labels: str) -> float:
    return samples(text).get((name, tuple(sorted(labels.items()))), 0.0)


async def scrape(client: httpx.AsyncClient) -> str:
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return response.text


async def test_http_metrics_after_real_requests(app_factory: AppFactory) -> None:
    app = await app_factory()
    book = await create_book(app.state.context)
    async with client_for(app) as client:
        for _ in range(3):
            assert (await client.get(f"/api/v1/books/{book.id}")).status_code == 200
        assert (await client.get("/api/v1/books/999999")).status_code == 404
        assert (await client.post("/api/v1/books", json={})).status_code == 401
        text = await scrape(client)
    endpoint = "/api/v1/books/{book_id}"
    assert value(text, "http_requests_total", method="GET", endpoint=endpoint, status="200") == 3
    assert value(text, "http_requests_total", method="GET", endpoint=endpoint, status="404") == 1
    assert value(text, "http_requests_total", method="POST", endpoint="/api/v1/books", status="401") == 1
    assert value(text, "http_request_duration_seconds_count", method="GET", endpoint=endpoint) == 4
    assert value(text, "http_request_duration_seconds_bucket", method="GET", endpoint=endpoint, le="+Inf") == 4
    assert value(text, "http_requests_in_progress", method="GET", endpoint=endpoint) == 0
    assert value(text, "http_requests_in_progress", method="GET", endpoint="/metrics") == 1  # this scrape
    assert value(text, "cache_misses_total", cache="book") == 2  # the book, and the id that does not exist
    assert value(text, "cache_hits_total", cache="book") == 2
    assert value(text, "library_api_build_info", version="1.0.0") == 1
    assert not any(f"/api/v1/books/{book.id}" in line for line in text.splitlines())  # never the raw path


async def test_label_cardinality_is_fixed_after_a_thousand_unknown_paths(app_factory: AppFactory) -> None:
    app = await app_factory()
    async with client_for(app) as client:
        await client.get("/nowhere/warmup")
        await scrape(client)  # the scrape itself is counted too; from now on its series exist
        before = {key for key in samples(await scrape(client)) if key[0].startswith("http_")}
        for number in range(1000):
            response = await client.get(f"/nowhere/{number}/{number * 7}")
            assert response.status_code == 404
        text = await scrape(client)
    after = {key for key in samples(text) if key[0].startswith("http_")}
    assert after == before
    assert value(text, "http_requests_total", method="GET", endpoint="unmatched", status="404") == 1001


async def test_business_counters_count_committed_changes_only(app_factory: AppFactory) -> None:
    app = await app_factory()
    ctx = app.state.context
    _, librarian = await user_headers(ctx, Role.LIBRARIAN)
    reader = await create_user(ctx)
    book_body = {"isbn": "978-0-13-235088-4", "title": "Clean Code", "authors": ["Robert C. Martin"], "copies": 1}
    start = utcnow() + timedelta(hours=1)
    period = {"start": start.isoformat(), "end": (start + timedelta(days=2)).isoformat()}
    async with client_for(app) as client:
        created = await client.post("/api/v1/books", json=book_body, headers=librarian)
        duplicate = await client.post("/api/v1/books", json=book_body, headers=librarian)
        email = unique_email()
        register = {"email": email, "password": PASSWORD, "full_name": "New Reader"}
        registered = await client.post("/api/v1/auth/register", json=register)
        taken = await client.post("/api/v1/auth/register", json=register)
        booking = {"book_id": created.json()["id"], **period}
        reader_headers = bearer(token_for(ctx, reader))
        booked = await client.post("/api/v1/bookings", json=booking, headers=reader_headers)
        full = await client.post("/api/v1/bookings", json=booking, headers=reader_headers)
        text = await scrape(client)
    assert [created.status_code, duplicate.status_code] == [201, 409]
    assert [registered.status_code, taken.status_code] == [201, 409]
    assert [booked.status_code, full.status_code] == [201, 409]
    assert value(text, "books_created_total") == 1
    assert value(text, "users_registered_total") == 1
    assert value(text, "bookings_created_total") == 1


async def test_database_metrics(app_factory: AppFactory) -> None:
    app = await app_factory()
    book = await create_book(app.state.context)
    async with client_for(app) as client:
        await client.get(f"/api/v1/books/{book.id}")
        text = await scrape(client)
    assert value(text, "db_query_duration_seconds_count", query_type="select") >= 2
    assert value(text, "db_query_duration_seconds_count", query_type="insert") >= 1
    assert value(text, "db_connections") == 0  # every connection went back to the pool


async def test_every_hot_read_is_timed(app_factory: AppFactory, committed_url: str) -> None:
    """Reads the driver runs itself on PostgreSQL (past SQLAlchemy's events) still feed the statement metric."""
    app = await app_factory(database_url=committed_url, principal_cache_ttl=60)
    _, headers = await user_headers(app.state.context)
    async with client_for(app) as client:
        assert (await client.get(UNCACHED_LIST, headers=headers)).status_code == 200  # loads the account state
        before = value(await scrape(client), "db_query_duration_seconds_count", query_type="select")
        for _ in range(3):
            assert (await client.get(UNCACHED_LIST, headers=headers)).status_code == 200
        after = value(await scrape(client), "db_query_duration_seconds_count", query_type="select")
        connections = value(await scrape(client), "db_connections")
    # the three reads (an empty first page also runs the capped count: two statements each), and the second
    # scrape's own database check (SELECT 1)
    assert after - before == 3 * 2 + 1
    assert connections == 0


async def test_system_figures_are_present(app_factory: AppFactory) -> None:
    app = await app_factory()
    async with client_for(app) as client:
        text = await scrape(client)
    assert 0 <= value(text, "system_cpu_usage_percent") <= 100
    assert value(text, "system_memory_usage_bytes") > 0
    assert value(text, "process_resident_memory_bytes") > 10_000_000
    assert any(name == "system_disk_usage_bytes" and labels[0][0] == "mountpoint" for name, labels in samples(text))


async def test_openmetrics_when_the_scraper_asks(app_factory: AppFactory) -> None:
    app = await app_factory()
    async with client_for(app) as client:
        response = await client.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    assert response.text.rstrip().endswith("# EOF")


async def test_metrics_are_open_to_allowed_networks_or_the_permission(app_factory: AppFactory) -> None:
    app = await app_factory(monitoring_allowed_networks=["10.1.0.0/16"])
    ctx = app.state.context
    monitor = await create_user(ctx, Role.ADMIN)
    _, reader = await user_headers(ctx)
    async with client_for(app, "10.1.4.4") as inside:
        assert (await inside.get("/metrics")).status_code == 200
        assert (await inside.get("/health/detailed")).status_code == 200
    async with client_for(app, "192.0.2.8") as outside:
        anonymous = await outside.get("/metrics")
        as_reader = await outside.get("/metrics", headers=reader)
        as_admin = await outside.get("/metrics", headers=bearer(token_for(ctx, monitor)))
        detailed = await outside.get("/health/detailed")
    assert anonymous.status_code == 401
    assert as_reader.status_code == 403
    assert as_admin.status_code == 200
    assert detailed.status_code == 401


async def test_metrics_can_be_turned_off(app_factory: AppFactory) -> None:
    app = await app_factory(metrics_enabled=False)
    async with client_for(app) as client:
        assert (await client.get("/metrics")).status_code == 404
        assert (await client.get("/api/v1/books")).status_code == 200


@pytest.mark.parametrize(
    ("statement", "kind"),
    [("SELECT 1", "select"), ("  insert into x", "insert"), ("UPDATE x", "update"), ("DELETE", "delete"),
     ("BEGIN", "other"), ("WITH x AS (SELECT 1) SELECT", "other")],
)  # fmt: skip
def test_query_types(statement: str, kind: str) -> None:
    assert query_type(statement) == kind


def test_websocket_metrics_exist_for_the_realtime_hub() -> None:
    metrics = Metrics()
    metrics.ws_connections.inc()
    metrics.ws_messages_sent.inc(3)
    metrics.ws_messages_received.inc()
    metrics.ws_dropped.labels("slow_client").inc()
    text = metrics.expose(None)[0].decode()
    assert re.search(r"^websocket_connections 1\.0$", text, re.MULTILINE)
    assert "websocket_messages_sent_total 3.0" in text
    assert "websocket_messages_received_total 1.0" in text
    assert 'websocket_drops_total{reason="slow_client"} 1.0' in text
