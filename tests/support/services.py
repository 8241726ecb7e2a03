"""Reaching the real PostgreSQL and Redis: skip locally with a reason when they are down, fail in CI."""

from __future__ import annotations

import os
import socket

import pytest

IN_CI = os.environ.get("CI", "").lower() == "true"
POSTGRES_ADMIN_DSN = os.environ.get("TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
POSTGRES_HOST = os.environ.get("TEST_POSTGRES_HOST", "127.0.0.1")
POSTGRES_PORT = int(os.environ.get("TEST_POSTGRES_PORT", "5432"))
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def unavailable(reason: str) -> None:
    """Skip the test (fail it under CI=true, where every service must be there)."""
    if IN_CI:
        pytest.fail(f"{reason} (CI=true requires it)")
    pytest.skip(reason)


def port_open(host: str, port: int, timeout: float = 1.0) -> bool:
    """Whether something accepts TCP connections at host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def require_postgres() -> None:
    """Skip (or fail in CI) when PostgreSQL is not reachable."""
    if not port_open(POSTGRES_HOST, POSTGRES_PORT):
        unavailable(f"PostgreSQL is not reachable at {POSTGRES_HOST}:{POSTGRES_PORT}")


def require_redis() -> None:
    """Skip (or fail in CI) when Redis is not reachable."""
    host, _, port = REDIS_URL.split("//")[1].split("/")[0].rpartition(":")
    if not port_open(host or "127.0.0.1", int(port or 6379)):
        unavailable(f"Redis is not reachable at {REDIS_URL}")
