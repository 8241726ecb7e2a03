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


async def assert_loads_again(cache: TimedCache[int, str], key: int) -> None:
    """Nothing was stored for ``key``: its next get loads it, once."""
    recovered = Loader("recovered")
    recovered.release.set()
    assert await cache.get(key, recovered) == "recovered"
    assert recovered.calls == 1


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
    await assert_loads_again(cache, 1)


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


class BatchLoader:
    """A load of many keys at once that records which keys each call asked for and waits for the test's release."""

    def __init__(self, missing: frozenset[int] = frozenset()) -> None:
        self.calls: list[list[int]] = []
        self.release = asyncio.Event()
        self.missing = missing
        """Keys the load leaves out of its answer (a loader that breaks its contract)."""

    async def __call__(self, keys: list[int]) -> dict[int, str]:
        self.calls.append(keys)
        await self.release.wait()
        return {key: f"state {key}" for key in keys if key not in self.missing}


async def test_a_refresh_loads_only_the_stale_keys_in_one_call_and_gets_meanwhile_share_it() -> None:
    cache: TimedCache[int, str] = TimedCache(ttl=60, max_entries=10)
    cache.remember(1, "fresh")
    batch = BatchLoader()
    refreshing = asyncio.create_task(cache.refresh([1, 2, 3, 3], batch))
    await asyncio.sleep(0)
    single = Loader("unused")
    waiter = asyncio.create_task(cache.get(2, single))  # loading already: shares the batch
    again = asyncio.create_task(cache.refresh([2, 3], BatchLoader()))  # nothing left to load
    await asyncio.sleep(0)
    batch.release.set()
    await refreshing
    await again
    assert await waiter == "state 2"
    assert batch.calls == [[2, 3]]
    assert single.calls == 0
    assert [await cache.get(key, Loader("unused")) for key in (1, 2, 3)] == ["fresh", "state 2", "state 3"]


async def test_a_write_during_a_refresh_wins_and_a_fresh_cache_loads_nothing() -> None:
    cache: TimedCache[int, str] = TimedCache(ttl=60, max_entries=10)
    batch = BatchLoader()
    refreshing = asyncio.create_task(cache.refresh([1, 2], batch))
    await asyncio.sleep(0)
    cache.remember(1, "written")
    batch.release.set()
    await refreshing
    assert await cache.get(1, Loader("unused")) == "written"
    idle = BatchLoader()
    await cache.refresh([1, 2], idle)
    assert idle.calls == []


async def test_a_failed_refresh_reaches_its_caller_and_the_waiters_and_stores_nothing() -> None:
    cache: TimedCache[int, str] = TimedCache(ttl=60, max_entries=10)
    batch = BatchLoader(missing=frozenset({2}))
    refreshing = asyncio.create_task(cache.refresh([1, 2], batch))
    await asyncio.sleep(0)
    waiter = asyncio.create_task(cache.get(1, Loader("unused")))
    await asyncio.sleep(0)
    batch.release.set()
    with pytest.raises(KeyError):
        await refreshing
    with pytest.raises(KeyError):
        await waiter
    await assert_loads_again(cache, 1)


async def test_a_cancelled_refresh_cancels_the_waiters_of_its_keys() -> None:
    cache: TimedCache[int, str] = TimedCache(ttl=60, max_entries=10)
    batch = BatchLoader()
    refreshing = asyncio.create_task(cache.refresh([1], batch))
    await asyncio.sleep(0)
    waiter = asyncio.create_task(cache.get(1, Loader("unused")))
    await asyncio.sleep(0)
    refreshing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await refreshing
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert batch.calls == [[1]]
