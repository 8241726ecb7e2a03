"""Both stores: an answer computed before a change can never be served after it."""

from __future__ import annotations

import pytest

from library_api.cache.backends import CacheBackend, MemoryBackend


@pytest.fixture
def backend(cache_backend: CacheBackend) -> CacheBackend:
    """Each cache store in turn (the ``cache_backend`` fixture of ``tests/conftest.py``)."""
    return cache_backend


async def test_a_slow_reader_cannot_store_a_stale_answer(backend: CacheBackend) -> None:
    reader = await backend.lookup("book:1", "detail")  # a reader misses and starts reading the database...
    assert reader.value is None
    await backend.invalidate(["book:1", "lists"], 0)  # ...a writer commits and invalidates meanwhile...
    await backend.store("book:1", reader.token, "detail", b"old answer", 60)  # ...then the reader stores
    assert (await backend.lookup("book:1", "detail")).value is None

    fresh = await backend.lookup("book:1", "detail")
    await backend.store("book:1", fresh.token, "detail", b"new answer", 60)
    assert (await backend.lookup("book:1", "detail")).value == b"new answer"
    assert (await backend.lookup("book:2", "detail")).value is None


async def test_flush_forgets_everything_and_the_watermark_only_rises(backend: CacheBackend) -> None:
    lookup = await backend.lookup("lists", "page")
    await backend.store("lists", lookup.token, "page", b"a page", 60)
    await backend.flush()
    assert (await backend.lookup("lists", "page")).value is None
    await backend.invalidate(["lists"], 500)
    await backend.invalidate(["lists"], 200)
    assert (await backend.lookup("lists", "page")).watermark == 500
    assert backend.recoveries() == 0


async def test_answers_expire() -> None:
    memory = MemoryBackend(max_entries=10)
    lookup = await memory.lookup("book:1", "detail")
    await memory.store("book:1", lookup.token, "detail", b"short-lived", 0.000001)
    assert (await memory.lookup("book:1", "detail")).value is None
