"""Reaching the real PostgreSQL and Redis: skip locally with a reason when they are down, fail in CI.

Under xdist each worker has a Redis database number of its own (``/1``, ``/2``, ... of the machine's Redis;
``/0`` outside xdist), so keys one worker's tests write (rate-limit counters, cache generations, streams) are
never seen by another's. ``TEST_REDIS_URL`` overrides it, database number included. PostgreSQL databases are
already private: every test database is created under a unique name.
"""

from __future__ import annotations

import os
import socket

import pytest

from tests.support.ports import in_xdist, service_port, worker_index

IN_CI = os.environ.get("CI", "").lower() == "true"
POSTGRES_ADMIN_DSN = os.environ.get("TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
POSTGRES_HOST = os.environ.get("TEST_POSTGRES_HOST", "127.0.0.1")
POSTGRES_PORT = int(os.environ.get("TEST_POSTGRES_PORT", "5432"))
REDIS_DATABASES = 16
"""Redis's default ``databases``: numbers 1-15 go to xdist workers (wrapping around beyond 15 workers)."""
REDIS_URL = os.environ.get(
    "TEST_REDIS_URL", f"redis://127.0.0.1:6379/{worker_index() % (REDIS_DATABASES - 1) + 1 if in_xdist() else 0}"
)


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


def free_port() -> int:
    """A port of this xdist worker's own range (:func:`tests.support.ports.service_port`), for older call sites.

    Prefer :func:`tests.support.ports.listening_socket` for a server that can inherit a socket and
    :func:`tests.support.ports.refused_port` for "nothing listens here": both keep the port bound throughout.
    """
    return service_port()
