"""The in-process count decides exactly as ``limits``' moving window does, stays bounded, starts nothing.

Both counts read one clock that the test moves (``limits``' in-memory storage reads ``time.time`` through its
module, which the test points at the same clock), so their answers are compared exactly. A hit exactly ``expiry``
seconds old is the one instant where ``limits`` disagrees with itself (its acquire still counts the hit, its
window statistics no longer do); the count here frees the slot then, as the statistics say, and the seeded
random steps never land on that instant.
"""

from __future__ import annotations

import asyncio
import random
import threading
import uuid
from collections.abc import AsyncIterator
from types import SimpleNamespace

import pytest
from limits import parse, parse_many
from limits.aio.storage import MemoryStorage
from limits.aio.storage import memory as limits_memory
from limits.aio.strategies import MovingWindowRateLimiter

from library_api.resilience.breaker import CircuitBreaker
from library_api.resilience.rate_limits import LocalWindows, RateLimiter, RateLimitPolicies
from library_api.resilience.redis import GuardedRedis
from tests.support.services import REDIS_URL, require_redis


class Clock:
    """Wall-clock seconds that move only when the test says so."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


async def test_same_decisions_as_the_limits_library(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    monkeypatch.setattr(limits_memory, "time", SimpleNamespace(time=clock))
    generator = random.Random(7)
    for item_text in ("3/second", "5/2 seconds"):
        storage = MemoryStorage()
        reference = MovingWindowRateLimiter(storage)
        ours = LocalWindows(clock=clock)
        item = parse(item_text)
        refused = 0
        for _ in range(400):
            caller = generator.choice(["a", "b"])
            expected = await reference.hit(item, caller)
            stats = await reference.get_window_stats(item, caller)
            admitted, oldest, hits = ours.count(item.key_for(caller), item.amount, item.get_expiry())
            assert admitted == expected
            assert item.amount - hits == stats.remaining
            assert oldest + item.get_expiry() == stats.reset_time
            refused += not admitted
            clock.now += generator.uniform(0, 0.05)
        assert 0 < refused < 400  # both answers were exercised
        await storage.reset()


async def test_exact_limit_and_freed_slots_without_tasks_or_threads() -> None:
    clock = Clock()
    windows = LocalWindows(clock=clock)
    tasks_before = len(asyncio.all_tasks())
    threads_before = threading.active_count()
    assert [windows.count("caller", 3, 1)[0] for _ in range(5)] == [True, True, True, False, False]
    assert len(asyncio.all_tasks()) == tasks_before
    assert threading.active_count() == threads_before
    clock.now += 0.5
    assert not windows.count("caller", 3, 1)[0]  # the window still holds the three hits
    clock.now += 0.5
    assert windows.count("caller", 3, 1)[0]  # exactly one second after them, their slots are free
    assert windows.count("someone-else", 3, 1)[0]
    admitted, _, hits = windows.count("never", 0, 1)
    assert not admitted
    assert hits == 0


def test_idle_keys_are_swept_and_the_number_of_keys_is_bounded() -> None:
    windows = LocalWindows(max_keys=50)
    for number in range(200):
        assert windows.count(f"caller-{number}", 5, 60)[0]
    assert len(windows) <= 50
    assert windows.count("caller-199", 5, 60)[2] == 2  # recent keys keep their counts


async def test_limiter_without_redis_counts_in_process() -> None:
    limiter = RateLimiter(redis=None, key_prefix="test_")
    items = RateLimitPolicies("2/minute", {}, {}).default.items
    decisions = [await limiter.hit(items, "default", "address:192.0.2.1") for _ in range(3)]
    assert [d.allowed for d in decisions] == [True, True, False]
    assert [d.remaining for d in decisions] == [1, 0, 0]
    assert all(0 < d.reset_after <= 60 for d in decisions)
    assert not any(d.shared for d in decisions)


@pytest.fixture(params=["memory", "redis"])
async def limiter(request: pytest.FixtureRequest) -> AsyncIterator[RateLimiter]:
    if request.param == "memory":
        yield RateLimiter(redis=None, key_prefix="test_")
        return
    require_redis()
    redis = GuardedRedis(REDIS_URL, socket_timeout=1.0, breaker=CircuitBreaker("Redis", 3, 5))
    yield RateLimiter(redis=redis, key_prefix=f"t{uuid.uuid4().hex[:10]}_")
    await redis.close()


async def test_peek_decides_like_hit_without_counting_and_clear_forgets(limiter: RateLimiter) -> None:
    items = parse_many("2/minute;5/hour")
    fresh = await limiter.peek(items, "failures", "someone")
    assert fresh.allowed
    assert fresh.remaining == 2
    for _ in range(3):
        assert (await limiter.peek(items, "failures", "someone")).remaining == 2  # peeking counts nothing
    await limiter.hit(items, "failures", "someone")
    once = await limiter.peek(items, "failures", "someone")
    assert (once.allowed, once.remaining) == (True, 1)
    await limiter.hit(items, "failures", "someone")
    spent = await limiter.peek(items, "failures", "someone")
    assert not spent.allowed
    assert spent.remaining == 0
    assert spent.item.get_expiry() == 60
    assert 0 < spent.reset_after <= 60
    assert (await limiter.peek(items, "failures", "someone-else")).remaining == 2
    await limiter.clear(items, "failures", "someone")
    cleared = await limiter.peek(items, "failures", "someone")
    assert (cleared.allowed, cleared.remaining) == (True, 2)
    assert (await limiter.hit(items, "failures", "someone")).allowed


async def test_peek_and_clear_fall_back_to_process_memory_when_redis_is_down() -> None:
    redis = GuardedRedis("redis://127.0.0.1:1/0", socket_timeout=0.2, breaker=CircuitBreaker("Redis", 1, 60))
    limiter = RateLimiter(redis=redis, key_prefix="down_")
    items = parse_many("1/minute")
    assert (await limiter.hit(items, "x")).allowed
    assert not (await limiter.peek(items, "x")).allowed
    assert not (await limiter.peek(items, "x")).shared
    await limiter.clear(items, "x")
    assert (await limiter.peek(items, "x")).allowed
    await redis.close()
