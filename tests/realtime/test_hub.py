"""The hub's own bookkeeping, without a server: publishing queue, lifecycle, counters."""

from __future__ import annotations

import logging

import pytest

from library_api.events import DomainEvent
from library_api.realtime.broker import MemoryBroker
from library_api.realtime.hub import Hub
from library_api.realtime.redis_broker import RedisBroker
from tests.conftest import fast_settings
from tests.support.live import wait_until
from tests.support.ports import refused_port


def book_event(book_id: int) -> DomainEvent:
    return DomainEvent(type="book.updated", topics=("books", f"book:{book_id}"), data={"id": book_id})


async def test_a_full_publishing_queue_drops_the_oldest_event_and_counts_it() -> None:
    broker = MemoryBroker(100)
    hub = Hub(fast_settings(broadcast_interval=0), broker, publish_queue_size=2)
    for book_id in (1, 2, 3):
        await hub.on_domain_event(book_event(book_id))
    assert hub.events_dropped == 1
    await hub.start()
    await hub.start()  # idempotent
    try:
        await wait_until(lambda: hub.messages_published == 4, within=5, what="the two queued events")
        replay = await broker.history("book:1", 0, broker.epoch)
        assert replay.messages == []  # the oldest (book 1) was the one dropped
        assert [event_id for event_id, _ in (await broker.history("books", 0, broker.epoch)).messages] == [1, 2]
    finally:
        await hub.stop()
        await hub.stop()  # idempotent
    assert hub.stats()["events_dropped"] == 1


async def test_events_without_a_public_topic_are_not_queued() -> None:
    hub = Hub(fast_settings(), MemoryBroker(10))
    await hub.on_domain_event(DomainEvent(type="internal", topics=("audit",), data={}))
    assert hub.stats()["messages_published"] == 0
    await hub.stop()  # never started: nothing to do


async def test_events_wait_for_an_unreachable_broker_and_stopping_says_what_was_lost(
    caplog: pytest.LogCaptureFixture,
) -> None:
    broker = RedisBroker(f"redis://127.0.0.1:{refused_port()}/0", "nowhere", 10, block_ms=100)
    hub = Hub(fast_settings(broadcast_interval=0), broker, flush_timeout=0.5)
    caplog.set_level(logging.INFO, logger="library_api.realtime")
    await hub.start()
    for book_id in (1, 2):
        await hub.on_domain_event(book_event(book_id))
    await wait_until(lambda: hub.publish_failures >= 2, within=10, what="retries against the unreachable broker")
    await hub.stop()
    messages = [record.getMessage() for record in caplog.records]
    assert any(message.startswith("cannot publish live events") for message in messages)
    assert "2 live event(s) were not published before shutdown" in messages
