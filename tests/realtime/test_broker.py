"""The broker contract, run against the in-process broker and against real Redis Streams."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
import pytest
import pytest_asyncio
from redis.asyncio import Redis

from library_api.realtime.broker import (
    RESYNC_AHEAD,
    RESYNC_EPOCH,
    RESYNC_TRIMMED,
    Broker,
    BrokerUnavailable,
    MemoryBroker,
    replay_from,
)
from library_api.realtime.redis_broker import RedisBroker
from library_api.realtime.topics import Subscription
from tests.support.polling import wait_until
from tests.support.ports import refused_port
from tests.support.services import REDIS_URL

BOOKS = Subscription("books", "books")
BOOK_1 = Subscription("book:1", "book:1")

MakeBroker = Callable[[int], Awaitable[Broker]]


async def epoch_of(broker: Broker, stream: str) -> str:
    """The stream's current epoch, as a fresh subscription would learn it."""
    return (await broker.history(stream, None, None)).epoch


class Recorder:
    """Collects what a broker delivers to one worker."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, int, str]] = []
        self.epochs: list[str | None] = []
        self.notices: list[dict[str, Any]] = []

    def deliver(self, stream: str, epoch: str | None, event_id: int, text: str) -> None:
        self.messages.append((stream, event_id, text))
        self.epochs.append(epoch)

    def control(self, notice: dict[str, Any]) -> None:
        self.notices.append(notice)


@pytest_asyncio.fixture(params=["memory", "redis"])
async def make_broker(request: pytest.FixtureRequest) -> AsyncIterator[MakeBroker]:
    made: list[Broker] = []
    prefix = request.getfixturevalue("redis_prefix") if request.param == "redis" else ""

    async def make(history_size: int) -> Broker:
        broker: Broker
        if request.param == "memory":
            broker = MemoryBroker(history_size)
        else:
            broker = RedisBroker(REDIS_URL, prefix, history_size, block_ms=200)
        made.append(broker)
        return broker

    yield make
    for broker in made:
        await broker.close()


async def test_ids_count_up_per_stream_and_history_replays_exactly(make_broker: MakeBroker) -> None:
    broker = await make_broker(100)
    recorder = Recorder()
    await broker.start(recorder.deliver, recorder.control)
    assert await broker.latest("books") == 0
    assert await broker.publish("book.created", [BOOKS, BOOK_1], {"n": 1}) == [1, 1]
    assert await broker.publish("book.updated", [BOOKS], {"n": 2}) == [2]
    assert await broker.publish("book.updated", [BOOKS], {"n": 3}) == [3]
    assert await broker.latest("books") == 3
    assert await broker.latest("book:1") == 1

    replay = await broker.history("books", 1, await epoch_of(broker, "books"))
    assert replay.complete
    assert replay.latest == 3
    assert [event_id for event_id, _ in replay.messages] == [2, 3]
    decoded = [orjson.loads(text) for _, text in replay.messages]
    assert [message["data"]["n"] for message in decoded] == [2, 3]
    assert all(message["topic"] == "books" for message in decoded)

    await wait_until(lambda: len(recorder.messages) == 4, within=5, what="every message to be delivered")
    assert [(stream, event_id) for stream, event_id, _ in recorder.messages] == [
        ("books", 1),
        ("book:1", 1),
        ("books", 2),
        ("books", 3),
    ]
    assert recorder.messages[2][2] == replay.messages[0][1]  # live and replayed text are the same bytes
    books_epochs = {
        epoch for (stream, _, _), epoch in zip(recorder.messages, recorder.epochs, strict=True) if stream == "books"
    }
    assert books_epochs == {replay.epoch}
    assert decoded[0]["epoch"] == replay.epoch


async def test_nothing_missed_is_a_complete_empty_replay(make_broker: MakeBroker) -> None:
    broker = await make_broker(10)
    await broker.publish("x", [BOOKS], {})
    replay = await broker.history("books", 1, await epoch_of(broker, "books"))
    assert replay.complete
    assert replay.messages == []


async def test_a_gap_older_than_the_history_needs_a_resync(make_broker: MakeBroker) -> None:
    broker = await make_broker(3)
    for n in range(5):
        await broker.publish("x", [BOOKS], {"n": n})
    too_old = await broker.history("books", 1, await epoch_of(broker, "books"))
    assert not too_old.complete
    assert too_old.latest == 5
    kept = await broker.history("books", 2, await epoch_of(broker, "books"))
    assert kept.complete
    assert [event_id for event_id, _ in kept.messages] == [3, 4, 5]


async def test_an_id_from_the_future_means_the_stream_was_reset(make_broker: MakeBroker) -> None:
    broker = await make_broker(10)
    await broker.publish("x", [BOOKS], {})
    replay = await broker.history("books", 57, await epoch_of(broker, "books"))
    assert not replay.complete
    assert replay.latest == 1
    unknown = await broker.history("never-published", 3, await epoch_of(broker, "never-published"))
    assert not unknown.complete


async def test_notices_reach_the_workers(make_broker: MakeBroker) -> None:
    broker = await make_broker(10)
    recorder = Recorder()
    await broker.start(recorder.deliver, recorder.control)
    await broker.announce({"kind": "replace", "client_id": "a"})
    await wait_until(lambda: recorder.notices == [{"kind": "replace", "client_id": "a"}], within=5, what="the notice")


def test_replay_judgement() -> None:
    assert replay_from([], 0, 0, "e1", "e1").complete
    assert replay_from([], None, 7, "e1", None).complete  # no position: start at the latest
    assert replay_from([(3, "x")], 1, 3, "e1", "e1").reason == RESYNC_TRIMMED
    assert replay_from([(2, "x"), (3, "y")], 1, 3, "e1", "e1").complete
    assert replay_from([], 5, 3, "e1", "e1").reason == RESYNC_AHEAD
    # A position of another numbering, or one that names none, is never resumed, even when its id looks fine.
    assert replay_from([(2, "x"), (3, "y")], 1, 3, "e2", "e1").reason == RESYNC_EPOCH
    assert replay_from([(2, "x"), (3, "y")], 1, 3, "e2", None).reason == RESYNC_EPOCH


@pytest.mark.redis
async def test_every_worker_receives_every_message_once(redis_prefix: str) -> None:
    workers = [RedisBroker(REDIS_URL, redis_prefix, 100, block_ms=200) for _ in range(3)]
    recorders = [Recorder() for _ in workers]
    try:
        for broker, recorder in zip(workers, recorders, strict=True):
            await broker.start(recorder.deliver, recorder.control)
        for n in range(30):
            await workers[n % 3].publish("x", [BOOKS], {"n": n})
        for recorder in recorders:
            await wait_until(lambda r=recorder: len(r.messages) >= 30, within=10, what="all 30 messages")  # type: ignore[misc]
            assert [event_id for _, event_id, _ in recorder.messages] == list(range(1, 31))
    finally:
        for broker in workers:
            await broker.close()


@pytest.mark.redis
async def test_a_dropped_connection_loses_nothing(redis_prefix: str) -> None:
    """Unlike Pub/Sub, the reader resumes from the last id it saw after Redis drops its connection."""
    reader = RedisBroker(REDIS_URL, redis_prefix, 100, block_ms=200)
    publisher = RedisBroker(REDIS_URL, redis_prefix, 100, block_ms=200)
    admin = Redis.from_url(REDIS_URL, decode_responses=True)
    recorder = Recorder()
    try:
        await reader.start(recorder.deliver, recorder.control)
        await publisher.publish("x", [BOOKS], {"n": 0})
        await wait_until(lambda: len(recorder.messages) == 1, within=5, what="the first message")
        killed = 0
        for client in await admin.client_list():
            if "xread" in client.get("cmd", "") and redis_prefix in client.get("name", ""):
                killed += await admin.client_kill_filter(_id=client["id"])
        assert killed == 1
        for n in range(1, 20):
            await publisher.publish("x", [BOOKS], {"n": n})
        await wait_until(lambda: len(recorder.messages) == 20, within=10, what="the messages sent while away")
        assert [event_id for _, event_id, _ in recorder.messages] == list(range(1, 21))
    finally:
        await admin.aclose()
        await reader.close()
        await publisher.close()


async def test_an_unreachable_redis_is_reported_not_raised_raw() -> None:
    broker = RedisBroker(f"redis://127.0.0.1:{refused_port()}/0", "unreachable", 10)
    try:
        with pytest.raises(BrokerUnavailable):
            await broker.publish("x", [BOOKS], {})
        with pytest.raises(BrokerUnavailable):
            await broker.latest("books")
        with pytest.raises(BrokerUnavailable):
            await broker.announce({"kind": "x"})
    finally:
        await broker.close()
