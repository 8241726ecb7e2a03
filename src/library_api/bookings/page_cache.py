"""A reader's own booking list pages, served from a cache that every change of theirs invalidates.

**Why.** The reader's unfiltered list (``GET /bookings``) is the hottest authenticated read that still went to
the database on every request; its answer changes only when one of the reader's bookings does. A hit costs one
lookup (process memory, or one Redis round trip) and no database read or serialisation.

**What is cached.** The exact JSON bytes of the page, per user and window (``limit``, ``offset``, ``cursor``,
count cap), in the catalogue's store (:mod:`library_api.cache.backends`) under the scope ``bookings:<user id>``,
for at most ``CACHE_DEFAULT_TIMEOUT`` seconds. Nothing in a booking page depends on the clock (a booking's
status changes only by a write), so no answer goes stale by time alone.

**Invalidation.** Everything that changes a reader's bookings publishes a domain event after its commit and
before its answer is sent: a booking created, cancelled or returned (the event names the booking's owner, whose
scope starts a new generation) and a book deleted (its closed bookings go with it, whoever owned them: every
answer is forgotten, a new epoch). A reader still computing a page from data older than the change stores it
under the old generation, where nobody looks. With Redis the generations are shared, so a change made through
one worker is seen by every other; without Redis the cache is used only by a single worker, since several
workers could not tell each other (see :func:`pages_enabled`). When Redis cannot be told of a change, the worker
empties the cache as soon as Redis answers again, and so does every worker that failed to reach Redis (a lookup
that timed out, or a circuit that opened): a change that went unannounced is never followed by the page from
before it on a worker that noticed the outage. One case remains, as for the catalogue cache: a worker that made
no call to Redis while the writer could not reach it may serve the earlier page, once Redis answers again, until
the writer's next call to Redis empties the cache or the answer expires.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable

from library_api.books.repository import Window
from library_api.cache.backends import CacheBackend
from library_api.cache.outage import OutageGuard
from library_api.events import DomainEvent
from library_api.observability.metrics import Metrics
from library_api.resilience.redis import RedisUnavailable

logger = logging.getLogger("library_api.cache")

KIND = "bookings"
"""The ``cache`` label of this cache's hit and miss counters."""


def scope_of(user_id: int) -> str:
    """The generation scope of one reader's booking pages."""
    return f"bookings:{user_id}"


def pages_enabled(cache_type: str | None, backend: CacheBackend, workers: int) -> bool:
    """Whether booking pages are cached: the cache is on, and its invalidation reaches every worker.

    That is Redis, or process memory with a single worker. The catalogue cache may be chosen in memory with
    several workers (the operator accepts that its answers may lag another worker's change); booking pages are
    a reader's own writes read back, which must never show the page from before them.
    """
    return cache_type is not None and (backend.name == "redis" or workers == 1)


class BookingPages:
    """A reader's own booking pages through the cache, with invalidation on every change of their bookings."""

    def __init__(self, backend: CacheBackend, *, enabled: bool, ttl: int, metrics: Metrics | None = None) -> None:
        self.backend = backend
        self.enabled = enabled
        self.ttl = ttl
        self.metrics = metrics
        self._outage = OutageGuard(backend, what="booking pages", flush_after_failed_lookup=True)

    async def page(self, user_id: int, window: Window, load: Callable[[], Awaitable[bytes]]) -> bytes:
        """The JSON of ``user_id``'s own page in ``window``: from the cache, or ``load``-ed (and then kept).

        ``load`` reads and serialises the page; an error it raises (an invalid cursor, say) is not kept.
        """
        if not self.enabled:
            return await load()
        scope = scope_of(user_id)
        name = f"{window.limit}:{window.offset}:{window.total_cap}:{window.cursor or ''}"
        lookup = await self._outage.lookup(scope, name)
        if lookup is not None and lookup.value is not None:
            if self.metrics is not None:
                self.metrics.cache_hits.labels(KIND).inc()
            return lookup.value
        if self.metrics is not None:
            self.metrics.cache_misses.labels(KIND).inc()
        body = await load()
        if lookup is not None:
            with contextlib.suppress(RedisUnavailable):
                await self.backend.store(scope, lookup.token, name, body, float(self.ttl))
        return body

    async def on_event(self, event: DomainEvent) -> None:
        """Invalidate the pages a committed change makes stale: the owner's, or all when a book went."""
        if event.type.startswith("booking."):
            user_id = event.data.get("user_id")
            if isinstance(user_id, int):
                await self._invalidate(lambda: self.backend.invalidate([scope_of(user_id)], 0))
        elif event.type == "book.deleted":
            await self._invalidate(self.backend.flush)

    async def _invalidate(self, change: Callable[[], Awaitable[None]]) -> None:
        if not self.enabled:
            return
        try:
            await change()
        except RedisUnavailable:
            self._outage.missed()
            logger.warning("booking change could not be announced to the cache; it will be emptied on recovery")
