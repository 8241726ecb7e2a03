"""The per-process time-to-live cache: one load per key however many callers miss together, and writes win."""

from __future__ import annotations

import asyncio

import pytest

from library_api.cache.local import TimedCache


class Loader:
    """A load that counts its calls and finishes only when the test releases it."""

    def __init__(self, value: str) -> None:
        self.value = value
        self.calls = 0
        self.release = asyncio.Event()

    async def __call__(self) -> str:
        self.calls += 1
        await self.release.wait()
        return self.value


async def test_concurrent_misses_share_one_load() -> None:
    cache: TimedCache[int, str] = TimedCache(ttl=60, max_entries=10)
    loader = Loader("state")
    waiters = [asyncio.create_task(cache.get(1, loader)) for _ in range(50)]
    await asyncio.sleep(0)  # every waiter reaches the cache before the load may finish
    loader.release.set()
    assert await asyncio.gather(*waiters) == ["state"] * 50
    assert loader.calls == 1
    assert await cache.get(1, Loader("unused")) == "state"  # stored: no further load


async def test_a_write_during_a_load_is_not_overwritten_by_it() -> None:
    cache: TimedCache[int, str] = TimedCache(ttl=60, max_entries=10)
    loader = Loader("read before the write")
    waiter = asyncio.create_task(cache.get(1, loader))
    await asyncio.sleep(0)
    cache.remember(1, "written")
    loader.release.set()
    assert await waiter == "read before the write"  # the request that began before the write
    fresh = Loader("unused")
    assert await cache.get(1, fresh) == "written"
    assert fresh.calls == 0


async def test_a_cancelled_waiter_does_not_cancel_the_load_of_the_others() -> None:
    cache: TimedCache[int, str] = TimedCache(ttl=60, max_entries=10)
    loader = Loader("state")
    leaving = asyncio.create_task(cache.get(1, loader))
    staying = asyncio.create_task(cache.get(1, loader))
    await asyncio.sleep(0)
    leaving.cancel()
    loader.release.set()
    assert await staying == "state"
    with pytest.raises(asyncio.CancelledError):
        await leaving
    assert loader.calls == 1


async def test_a_failed_load_reaches_every_waiter_and_is_not_stored() -> None:
    cache: TimedCache[int, str] = TimedCache(ttl=60, max_entries=10)
    gate = asyncio.Event()

    async def failing() -> str:
        await gate.wait()
        raise ConnectionError("database unreachable")

    waiters = [asyncio.create_task(cache.get(1, failing)) for _ in range(3)]
    await asyncio.sleep(0)
    gate.set()
    results = await asyncio.gather(*waiters, return_exceptions=True)
    assert all(isinstance(result, ConnectionError) for result in results)
    recovered = Loader("recovered")
    recovered.release.set()
    assert await cache.get(1, recovered) == "recovered"
    assert recovered.calls == 1


async def test_bounded_and_ttl_zero_never_stores() -> None:
    bounded: TimedCache[int, str] = TimedCache(ttl=60, max_entries=2)
    for key in (1, 2, 3):
        bounded.remember(key, f"v{key}")
    again = Loader("reloaded")
    again.release.set()
    assert await bounded.get(1, again) == "reloaded"  # the oldest entry was evicted
    assert await bounded.get(3, again) == "v3"
    uncached: TimedCache[int, str] = TimedCache(ttl=0, max_entries=2)
    uncached.remember(1, "v1")
    assert await uncached.get(1, again) == "reloaded"
    assert again.calls == 2
    uncached.forget(1)


async def test_an_entry_expires_exactly_ttl_after_it_was_stored() -> None:
    now = [500.0]
    cache: TimedCache[int, str] = TimedCache(ttl=1, max_entries=10, clock=lambda: now[0])
    cache.remember(1, "stored")
    fresh = Loader("loaded")
    fresh.release.set()
    now[0] += 0.5
    assert await cache.get(1, fresh) == "stored"
    now[0] += 0.5  # PRINCIPAL_CACHE_TTL's promise: a state is never used once its TTL has passed
    assert await cache.get(1, fresh) == "loaded"
    assert fresh.calls == 1
