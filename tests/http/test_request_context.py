"""Client address, scheme and request id: believed from trusted proxies only."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import AppFactory
from tests.support.http import client_for
from tests.support.logs import CapturedLog, captured_log

PROXY = "10.0.0.7"


@pytest.fixture
def log() -> Iterator[CapturedLog]:
    with captured_log() as captured:
        yield captured


async def test_forwarded_for_from_a_trusted_proxy_names_the_client(app_factory: AppFactory, log: CapturedLog) -> None:
    app = await app_factory(trusted_proxies=["10.0.0.0/24"])
    async with client_for(app, PROXY) as client:
        response = await client.get("/api/v1/books", headers={"X-Forwarded-For": "203.0.113.9, 10.0.0.3"})
    assert response.status_code == 200
    (line,) = log.access()
    assert line["client"] == "203.0.113.9"  # the last untrusted hop, skipping the trusted 10.0.0.3


async def test_spoofed_forwarded_for_from_an_untrusted_peer_is_ignored(
    app_factory: AppFactory, log: CapturedLog
) -> None:
    app = await app_factory(trusted_proxies=["10.0.0.0/24"], rate_limit_enabled=True, rate_limit_default="2/minute")
    async with client_for(app, "198.51.100.20") as client:
        statuses = [
            (await client.get("/api/v1/books", headers={"X-Forwarded-For": f"203.0.113.{i}"})).status_code
            for i in range(3)
        ]
    # a client choosing a new "address" per request would never be limited; it is counted as itself
    assert statuses == [200, 200, 429]
    assert {line["client"] for line in log.access()} == {"198.51.100.20"}


async def test_forwarded_proto_https_from_a_proxy_turns_on_hsts(app_factory: AppFactory) -> None:
    app = await app_factory(trusted_proxies=[PROXY])
    async with client_for(app, PROXY) as client:
        behind_tls = await client.get("/health", headers={"X-Forwarded-Proto": "https"})
        plain = await client.get("/health")
    async with client_for(app, "192.0.2.1") as client:
        spoofed = await client.get("/health", headers={"X-Forwarded-Proto": "https"})
    assert behind_tls.headers["strict-transport-security"].startswith("max-age=63072000")
    assert "strict-transport-security" not in plain.headers
    assert "strict-transport-security" not in spoofed.headers


async def test_request_id_is_generated_returned_and_bound_to_log_lines(
    app_factory: AppFactory, log: CapturedLog
) -> None:
    app = await app_factory()
    async with client_for(app) as client:
        first = await client.get("/api/v1/books")
        second = await client.get("/api/v1/books", headers={"X-Request-ID": "client-chosen"})
    ids = [first.headers["x-request-id"], second.headers["x-request-id"]]
    assert all(len(value) == 32 for value in ids)
    assert ids[0] != ids[1]
    assert "client-chosen" not in ids  # only a trusted proxy may choose the id
    assert [line["request_id"] for line in log.access()] == ids


async def test_request_id_from_a_trusted_proxy_is_kept_unless_malformed(app_factory: AppFactory) -> None:
    app = await app_factory(trusted_proxies=[PROXY])
    async with client_for(app, PROXY) as client:
        kept = await client.get("/health", headers={"X-Request-ID": "edge-7f3a.42:1"})
        replaced = await client.get("/health", headers={"X-Request-ID": "bad id with spaces"})
    assert kept.headers["x-request-id"] == "edge-7f3a.42:1"
    assert replaced.headers["x-request-id"] != "bad id with spaces"
    assert len(replaced.headers["x-request-id"]) == 32


async def test_forwarded_for_that_is_not_an_address_is_ignored(app_factory: AppFactory, log: CapturedLog) -> None:
    app = await app_factory(trusted_proxies=[PROXY])
    async with client_for(app, PROXY) as client:
        await client.get("/api/v1/books", headers={"X-Forwarded-For": "not-an-address"})
        await client.get("/api/v1/books", headers={"X-Forwarded-For": PROXY})
    assert [line["client"] for line in log.access()] == [PROXY, PROXY]
