"""Forgetting a shared cache after Redis was unreachable, when changes may have gone unannounced.

A cache in Redis is kept right by invalidations: every change bumps a generation. While Redis cannot be reached,
a change made by one worker cannot be announced, and other workers would go on serving answers from before it
once Redis answers again. Two signs tell that this may have happened, and either makes the next lookup empty the
whole store first (a new epoch): the store's circuit breaker has recovered since the last lookup (some call
failed somewhere in this process), or an invalidation made here failed (:meth:`OutageGuard.missed`). The
catalogue cache and the booking pages both follow this rule; the booking pages also count a failed lookup of
their own (``flush_after_failed_lookup``), since a reader's own writes must never be read back stale.
"""

from __future__ import annotations

import logging

from library_api.cache.backends import CacheBackend, Lookup
from library_api.resilience.redis import RedisUnavailable

logger = logging.getLogger("library_api.cache")


class OutageGuard:
    """Looks up through ``backend``, emptying it first when changes may have been missed (see the module)."""

    def __init__(self, backend: CacheBackend, *, what: str, flush_after_failed_lookup: bool = False) -> None:
        self.backend = backend
        self.what = what
        self.flush_after_failed_lookup = flush_after_failed_lookup
        self._needs_flush = False
        self._recoveries_seen = backend.recoveries()

    def missed(self) -> None:
        """A change made here could not be announced: the store is emptied on the next lookup that reaches it."""
        self._needs_flush = True

    async def lookup(self, scope: str, name: str) -> Lookup | None:
        """The store's view of ``name`` in ``scope``, or ``None`` when it cannot be reached (nothing read or kept)."""
        recoveries = self.backend.recoveries()
        if recoveries != self._recoveries_seen:
            self._recoveries_seen = recoveries
            self._needs_flush = True
        try:
            if self._needs_flush:
                await self.backend.flush()
                self._needs_flush = False
                logger.info("%s emptied: changes may have gone unannounced while Redis was unreachable", self.what)
            return await self.backend.lookup(scope, name)
        except RedisUnavailable:
            if self.flush_after_failed_lookup:
                self._needs_flush = True
            return None
