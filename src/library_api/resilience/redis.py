"""The one Redis client of an application, behind a circuit breaker.

Everything that uses Redis (the catalogue cache, rate limiting, readiness) goes through :meth:`GuardedRedis.call`.
Commands fail fast (short socket timeouts, no client-side retries: the breaker decides), and after a few
consecutive failures the circuit opens: callers get :class:`RedisUnavailable` at once and fall back (the cache
is bypassed, rate limits become per-process, readiness reports "degraded"). The first call after the pause
is a trial; when Redis answers again the circuit closes and normal service resumes without a restart.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

from library_api.resilience.breaker import CircuitBreaker, CircuitState

T = TypeVar("T")

MAX_CONNECTIONS = 64
"""Connections per worker; a burst beyond this waits (up to the socket timeout) rather than failing."""


class RedisUnavailable(Exception):
    """Redis cannot be used right now (the call failed, or the circuit is open); the caller falls back."""


class GuardedRedis:
    """A ``redis.asyncio`` client whose every call is counted by a :class:`CircuitBreaker`."""

    def __init__(self, url: str, *, socket_timeout: float, breaker: CircuitBreaker) -> None:
        self.pool = BlockingConnectionPool.from_url(
            url,
            max_connections=MAX_CONNECTIONS,
            timeout=socket_timeout,
            socket_timeout=socket_timeout,
            socket_connect_timeout=socket_timeout,
            retry=Retry(NoBackoff(), 0),
            health_check_interval=30,
        )
        self.client: Redis = Redis(connection_pool=self.pool)
        self.breaker = breaker

    @property
    def state(self) -> CircuitState:
        """The breaker's view of Redis."""
        return self.breaker.state

    def script(self, source: str) -> AsyncScript:
        """A Lua script run with ``EVALSHA`` (loaded on first use, and again after a Redis restart)."""
        return self.client.register_script(source)

    async def call(self, operation: Callable[[Redis], Awaitable[T]]) -> T:
        """Run ``operation`` with the client; raise :class:`RedisUnavailable` at once while the circuit is open."""
        if not self.breaker.allow():
            raise RedisUnavailable(f"{self.breaker.name} circuit is open")
        try:
            result = await operation(self.client)
        except (RedisError, OSError) as exc:
            self.breaker.record_failure(exc)
            raise RedisUnavailable(str(exc) or type(exc).__name__) from exc
        self.breaker.record_success()
        return result

    async def ping(self) -> float:
        """Round-trip time of a ``PING`` in seconds (a trial call when the circuit is half-open)."""
        started = time.perf_counter()
        await self.call(lambda client: client.ping())
        return time.perf_counter() - started

    async def close(self) -> None:
        """Close every pooled connection."""
        await self.client.aclose(close_connection_pool=True)
