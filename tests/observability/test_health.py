"""Probes: liveness depends on nothing; readiness names its reasons; detailed grades every resource."""

from __future__ import annotations

import os
from pathlib import Path

from library_api.db import migrate
from tests.conftest import AppFactory
from tests.support.http import client_for
from tests.support.ports import refused_port

CLOSED_DATABASE = "postgresql+asyncpg://postgres@127.0.0.1:{port}/nothing"
MACHINE_INDEPENDENT = {
    "health_disk_warning_percent": 99.999,
    "health_disk_critical_percent": 100,
    "health_memory_warning_percent": 99.999,
    "health_memory_critical_percent": 100,
}
"""Thresholds no working machine reaches, so that a healthy service is graded healthy whatever else runs here."""


async def test_all_probes_green_on_a_healthy_service(app_factory: AppFactory) -> None:
    app = await app_factory(**MACHINE_INDEPENDENT)
    async with client_for(app) as client:
        live = await client.get("/health")
        startup = await client.get("/health/startup")
        ready = await client.get("/health/ready")
        detailed = await client.get("/health/detailed")
        metrics = (await client.get("/metrics")).text
    body = live.json()
    assert body.pop("time").endswith("Z")
    assert body == {
        "status": "ok",
        "service": "Library API",
        "version": "1.0.0",
        "worker": os.getpid(),
        "connections": 0,
    }
    assert "\nhealth_ready 1.0\n" in metrics
    assert startup.json() == {"status": "started"}
    assert ready.status_code == 200
    assert ready.json() == {
        "status": "ready",
        "checks": {"database": "ok", "migrations": "ok", "disk": "ok"},
    }
    body = detailed.json()
    assert detailed.status_code == 200
    assert body["status"] == "healthy"
    assert body["checks"]["database"]["status"] == "healthy"
    assert body["checks"]["migrations"] == {"status": "healthy", "revision": migrate.head_revision()}
    assert body["checks"]["cache"] == {"status": "healthy", "backend": "memory"}
    assert body["checks"]["disk"]["status"] == body["checks"]["memory"]["status"] == "healthy"
    assert body["process"]["resident_memory_bytes"] > 0


async def test_unreachable_database(app_factory: AppFactory) -> None:
    app = await app_factory(
        database_url=CLOSED_DATABASE.format(port=refused_port()),
        database_retry_attempts=2,
        database_retry_base_delay=0.01,
        database_retry_max_delay=0.02,
    )
    async with client_for(app) as client:
        live = await client.get("/health")
        startup = await client.get("/health/startup")
        ready = await client.get("/health/ready")
        detailed = await client.get("/health/detailed")
        read = await client.get("/api/v1/books/1")
        write = await client.post(
            "/api/v1/auth/register", json={"email": "a@example.org", "password": "x" * 12, "full_name": "A"}
        )
    assert live.status_code == 200
    assert startup.status_code == 503
    assert startup.json()["status"] == "starting"
    assert ready.status_code == 503
    assert ready.json()["reasons"] == ["starting: waiting for the database", "database unreachable"]
    assert detailed.status_code == 503
    assert detailed.json()["checks"]["database"] == {"status": "critical", "error": "ConnectionRefusedError"}
    for response in (read, write):
        assert response.status_code == 503
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["type"] == "urn:library-api:problem:database-unavailable"
        assert response.headers["retry-after"] == "5"


async def test_missing_migrations_make_the_service_not_ready(app_factory: AppFactory, tmp_path: Path) -> None:
    empty = tmp_path / "empty.db"
    app = await app_factory(database_url=f"sqlite+aiosqlite:///{empty}")
    async with client_for(app) as client:
        startup = await client.get("/health/startup")
        ready = await client.get("/health/ready")
        detailed = await client.get("/health/detailed")
    problem = f"schema behind: the database is at no revision, the code needs {migrate.head_revision()}"
    assert startup.status_code == 200  # started: the database answers; the schema is the problem
    assert startup.json()["warnings"] == [problem]
    assert ready.status_code == 503
    assert ready.json()["checks"]["migrations"] == "behind"
    assert ready.json()["reasons"] == [problem]
    assert detailed.json()["checks"]["migrations"]["status"] == "critical"


async def test_draining_server_is_not_ready_but_alive(app_factory: AppFactory) -> None:
    app = await app_factory()
    app.state.context.shutdown.force()
    async with client_for(app) as client:
        ready = await client.get("/health/ready")
        live = await client.get("/health")
        detailed = await client.get("/health/detailed")
        metrics = (await client.get("/metrics")).text
    assert "\nhealth_ready 0.0\n" in metrics
    assert ready.status_code == 503
    assert ready.json()["checks"]["shutdown"] == "draining"
    assert ready.json()["reasons"] == ["draining: the server is shutting down"]
    assert live.status_code == 200
    assert detailed.json()["draining"] is True


async def test_redis_down_is_degraded_not_unready(app_factory: AppFactory) -> None:
    app = await app_factory(redis_url=f"redis://127.0.0.1:{refused_port()}/0", redis_socket_timeout=0.2)
    async with client_for(app) as client:
        ready = await client.get("/health/ready")
        detailed = await client.get("/health/detailed")
        books = await client.get("/api/v1/books")
    assert ready.status_code == 200
    assert ready.json() == {
        "status": "degraded",
        "checks": {"database": "ok", "migrations": "ok", "redis": "degraded", "disk": "ok"},
    }
    checks = detailed.json()["checks"]
    assert checks["redis"]["status"] == "warning"
    assert checks["cache"] == {"status": "warning", "backend": "redis"}
    assert detailed.status_code == 200
    assert books.status_code == 200  # served from the database


async def test_disk_and_memory_thresholds(app_factory: AppFactory) -> None:
    app = await app_factory(
        health_disk_warning_percent=0.001,
        health_disk_critical_percent=0.002,
        health_memory_warning_percent=0.001,
        health_memory_critical_percent=100,
    )
    async with client_for(app) as client:
        detailed = await client.get("/health/detailed")
    body = detailed.json()
    assert detailed.status_code == 503
    assert body["status"] == "critical"
    assert body["checks"]["disk"]["status"] == "critical"
    assert body["checks"]["memory"]["status"] == "warning"
