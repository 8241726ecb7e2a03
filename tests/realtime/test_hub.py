"""The hub's own bookkeeping, without a server: lifecycle, publishing and its counters."""

from __future__ import annotations

import pytest

from library_api.realtime.broker import BrokerUnavailable, MemoryBroker
from library_api.realtime.hub import Hub
from library_api.realtime.redis_broker import RedisBroker
from library_api.realtime.topics import Subscription
from tests.conftest import fast_settings
from tests.support.ports import refused_port

BOOKS = [Subscription("books", "books"), Subscription("book:1", "book:1")]


async def test_publishing_numbers_per_stream_and_a_known_key_is_not_numbered_again() -> None:
    broker = MemoryBroker(100)
    hub = Hub(fast_settings(broadcast_interval=0), broker)
    await hub.start()
    await hub.start()  # idempotent
    try:
        assert await hub.publish("book.updated", BOOKS, {"id": 1}, "row-1") == [1, 1]
        assert await hub.publish("book.updated", BOOKS, {"id": 1}, "row-1") == []  # the same outbox row again
        assert await hub.publish("book.updated", BOOKS[:1], {"id": 2}) == [2]
        assert [event_id for event_id, _ in (await broker.history("books", 0, broker.epoch)).messages] == [1, 2]
    finally:
        await hub.stop()
        await hub.stop()  # idempotent
    assert hub.stats()["messages_published"] == 3


async def test_an_unreachable_broker_is_counted_and_raised() -> None:
    broker = RedisBroker(f"redis://127.0.0.1:{refused_port()}/0", "nowhere", 10, block_ms=100)
    hub = Hub(fast_settings(broadcast_interval=0), broker)
    await hub.start()
    try:
        with pytest.raises(BrokerUnavailable):
            await hub.publish("book.updated", BOOKS, {"id": 1}, "row-1")
    finally:
        await hub.stop()
    assert hub.stats()["publish_failures"] == 1
    assert hub.stats()["messages_published"] == 0
