"""A small per-process time-to-live cache whose misses load once, however many requests miss together.

The authentication path keeps each account's state and each API token's state for ``PRINCIPAL_CACHE_TTL``
seconds (1 by default) so that most requests need no statement while a revocation still reaches every worker
within that time. Under load, every request of a busy user finds the entry expired at the same instant: with a
plain cache, each of them (hundreds, at 256 connections) runs its own query, they queue for the pool behind
one another, and the tail latency of the whole worker jumps once a second. Here the first miss starts the load
and the others await the same result: one statement per key per time-to-live, whatever the concurrency.

A write that changes the stored value (:meth:`TimedCache.remember`, :meth:`TimedCache.forget`) wins over a load
that was already in flight: that load still answers the requests that were waiting for it, which began before
the write, but does not overwrite the newer entry.

Expiry is judged by ``clock`` (``time.monotonic`` unless the owner passes another), so that the time-to-live can be
checked by moving a clock rather than by waiting for it.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable, Iterable, Mapping
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class TimedCache(Generic[K, V]):
    """Bounded, least-recently-stored-first eviction; entries expire ``ttl`` seconds after they were stored."""

    def __init__(self, ttl: float, max_entries: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl = ttl
        self._clock = clock
        self._max_entries = max_entries
        self._entries: OrderedDict[K, tuple[float, V]] = OrderedDict()
        self._loading: dict[K, asyncio.Future[V]] = {}

    async def get(self, key: K, load: Callable[[], Awaitable[V]]) -> V:
        """The fresh value of ``key``, from the cache or from ``load()`` (one load per key at a time)."""
        cached = self._entries.get(key)
        if cached is not None and cached[0] > self._clock():
            return cached[1]
        pending = self._loading.get(key)
        if pending is None:
            pending = asyncio.ensure_future(load())
            self._loading[key] = pending
            pending.add_done_callback(lambda done: self._loaded(key, done))
        # Shielded: a waiter that goes away (a client disconnecting) must not cancel the load for the others.
        return await asyncio.shield(pending)

    async def refresh(self, keys: Iterable[K], load: Callable[[list[K]], Awaitable[Mapping[K, V]]]) -> None:
        """Load, with one call of ``load``, every key of ``keys`` that has no fresh value and no load under way.

        For a caller about to read many keys at once (the periodic check of every live connection's account):
        one statement for all of them instead of one per key. Each key is loading while the call runs, so a
        :meth:`get` of it meanwhile awaits the same result, and a write meanwhile wins over it, as with a load of one.
        """
        now = self._clock()
        stale = []
        for key in dict.fromkeys(keys):
            cached = self._entries.get(key)
            if (cached is None or cached[0] <= now) and key not in self._loading:
                stale.append(key)
        if not stale:
            return
        loop = asyncio.get_running_loop()
        pending = {key: loop.create_future() for key in stale}
        for key, future in pending.items():
            self._loading[key] = future
            future.add_done_callback(functools.partial(self._loaded, key))
        try:
            values = await load(stale)
            results = [values[key] for key in stale]  # a key the loader left out fails them all, as an error does
        except BaseException as exc:
            for future in pending.values():
                if isinstance(exc, Exception):
                    future.set_exception(exc)
                else:
                    future.cancel()
            raise
        for future, value in zip(pending.values(), results, strict=True):
            future.set_result(value)

    def _loaded(self, key: K, done: asyncio.Future[V]) -> None:
        if self._loading.get(key) is not done:
            return  # a write replaced or dropped the entry while this load ran; the write's value stands
        del self._loading[key]
        if done.cancelled() or done.exception() is not None:
            return
        self._store(key, done.result())

    def remember(self, key: K, value: V) -> None:
        """Store a value just read or written, so the next request of this worker need not read it."""
        self._loading.pop(key, None)
        self._store(key, value)

    def forget(self, key: K) -> None:
        """Drop what this worker knows about ``key``, so that its next use loads it again."""
        self._loading.pop(key, None)
        self._entries.pop(key, None)

    def _store(self, key: K, value: V) -> None:
        if self._ttl <= 0:
            return
        self._entries[key] = (self._clock() + self._ttl, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)
