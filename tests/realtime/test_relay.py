"""The live event outbox and its relay against the real databases (SQLite and PostgreSQL) and real brokers.

Rows are written by the services in the change's transaction; the relay publishes them in id order, deletes
what the broker accepted, keeps what it could not publish, takes turns with other relays (other processes), and
a row published twice (a relay that died before deleting it) is not numbered twice.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
import pytest_asyncio
from redis import Redis
from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine

from library_api.books.schemas import BookCreate
from library_api.db.base import utcnow
from library_api.db.engine import Database, create_database
from library_api.dependencies.context import AppContext
from library_api.events import DomainEvent
from library_api.problems import Conflict
from library_api.realtime.broker import BrokerUnavailable, MemoryBroker
from library_api.realtime.hub import Hub
from library_api.realtime.models import LiveEventRow
from library_api.realtime.outbox import record
from library_api.realtime.redis_broker import RedisBroker
from library_api.realtime.relay import Backlog, Relay
from tests.conftest import fast_settings
from tests.realtime.conftest import SQLITE_ONLY
from tests.support.factories import unique_isbn
from tests.support.polling import wait_until
from tests.support.ports import refused_port
from tests.support.private_services import PrivateRedis
from tests.support.services import REDIS_URL, require_redis


@pytest_asyncio.fixture
async def database(committed_url: str) -> AsyncIterator[Database]:
    """A database of this test's own whose commits are real (relays of other "processes" see them)."""
    db = create_database(fast_settings(database_url=committed_url))
    yield db
    await db.dispose()


@pytest.fixture
def ctx(committed_ctx: AppContext) -> AppContext:
    """The services wired against this test's committed database (``committed_ctx``)."""
    return committed_ctx


def book_event(book_id: int, title: str = "T") -> DomainEvent:
    return DomainEvent(type="book.updated", topics=("books", f"book:{book_id}"), data={"id": book_id, "title": title})


async def write(database: Database, events: list[DomainEvent]) -> None:
    async with database.sessionmaker() as session:
        await record(session, events)
        await session.commit()


async def rows(database: Database) -> list[Any]:
    async with database.reader() as session:
        return list((await session.execute(select(LiveEventRow.__table__).order_by(LiveEventRow.id))).all())


async def emptied(database: Database, within: float = 10) -> None:
    """Wait until the outbox is empty (a round deletes its rows just after publishing the last of them)."""
    deadline = asyncio.get_running_loop().time() + within
    while await rows(database):
        assert asyncio.get_running_loop().time() < deadline, "the outbox was not emptied"
        await asyncio.sleep(0.02)


def titles(messages: list[tuple[int, str]]) -> list[tuple[int, str]]:
    return [(event_id, orjson.loads(text)["data"]["title"]) for event_id, text in messages]


async def test_a_change_writes_its_event_in_its_transaction_and_a_refused_one_writes_none(ctx: AppContext) -> None:
    isbn = unique_isbn()
    async with ctx.database.sessionmaker() as session:
        book = await ctx.books.create(session, BookCreate(isbn=isbn, title="Outbox", authors=["A"], copies=1))
    async with ctx.database.sessionmaker() as session:
        with pytest.raises(Conflict):
            await ctx.books.create(session, BookCreate(isbn=isbn, title="Twice", authors=["A"], copies=1))
    written = await rows(ctx.database)
    assert len(written) == 1
    assert written[0].type == "book.created"
    assert orjson.loads(written[0].routes) == [["books", "books"], [f"book:{book.id}", f"book:{book.id}"]]
    assert orjson.loads(written[0].data)["title"] == "Outbox"
    assert len(written[0].key) == 32


async def test_events_without_a_live_topic_write_nothing(database: Database) -> None:
    await write(database, [DomainEvent(type="internal", topics=("audit",), data={})])
    assert await rows(database) == []


async def test_the_relay_publishes_in_order_and_deletes_what_the_broker_took(database: Database) -> None:
    broker = MemoryBroker(100)
    hub = Hub(fast_settings(broadcast_interval=0), broker)
    relay = Relay(database, hub.publish, poll_interval=1, batch=2)
    await write(database, [book_event(1, "a"), book_event(2, "b")])
    await write(database, [book_event(1, "c")])
    assert await relay.relay_once() == 2  # a full batch
    assert await relay.relay_once() == 1
    assert await relay.relay_once() == 0
    assert titles((await broker.history("books", 0, broker.epoch)).messages) == [(1, "a"), (2, "b"), (3, "c")]
    assert titles((await broker.history("book:1", 0, broker.epoch)).messages) == [(1, "a"), (2, "c")]
    assert await rows(database) == []
    assert relay.published == 3


async def test_a_row_published_again_is_recognised_by_redis_and_not_numbered_twice(database: Database) -> None:
    require_redis()
    prefix = f"relay-{uuid.uuid4().hex[:8]}"
    broker = RedisBroker(REDIS_URL, prefix, 100)
    hub = Hub(fast_settings(broadcast_interval=0), broker)
    relay = Relay(database, hub.publish, poll_interval=1)
    try:
        await write(database, [book_event(1, "a"), book_event(1, "b")])
        kept = await rows(database)
        assert await relay.relay_once() == 2
        # As if the relay had died after publishing and before its delete committed: the same rows are back.
        async with database.sessionmaker() as session:
            await session.execute(insert(LiveEventRow), [row._asdict() for row in kept])
            await session.commit()
        assert await relay.relay_once() == 2
        history = await broker.history("books", 0, (await broker.history("books", None, None)).epoch)
        assert titles(history.messages) == [(1, "a"), (2, "b")]
        assert (relay.published, relay.recognised) == (2, 2)
        assert await rows(database) == []
    finally:
        await broker.close()
        with Redis.from_url(REDIS_URL) as client:
            keys = list(client.scan_iter(match=f"{{{prefix}}}*"))
            if keys:
                client.delete(*keys)


async def test_rows_wait_while_redis_is_down_and_go_out_in_order_when_it_returns(
    database: Database, private_redis: PrivateRedis
) -> None:
    broker = RedisBroker(private_redis.url, "relay", 100, block_ms=100)
    hub = Hub(fast_settings(broadcast_interval=0), broker)
    relay = Relay(database, hub.publish, poll_interval=1)
    try:
        await write(database, [book_event(1, "before")])
        assert await relay.relay_once() == 1
        await asyncio.to_thread(private_redis.stop)
        await write(database, [book_event(1, "during-1"), book_event(2, "during-2")])
        with pytest.raises(BrokerUnavailable):
            await relay.relay_once()
        assert [row.type for row in await rows(database)] == ["book.updated", "book.updated"]
        backlog = await relay.backlog()
        assert backlog.depth == 2
        await asyncio.to_thread(private_redis.start)  # empty: a new epoch, which clients are told to resync
        assert await relay.relay_once() == 2
        replay = await broker.history("books", 0, None)
        history = await broker.history("books", 0, replay.epoch)
        assert titles(history.messages) == [(1, "during-1"), (2, "during-2")]
        assert await rows(database) == []
    finally:
        await broker.close()


async def test_relays_of_several_processes_take_turns_and_keep_the_order(committed_url: str) -> None:
    """Three relays, each with a database of its own (as three processes have): every row once, in id order."""
    databases = [create_database(fast_settings(database_url=committed_url)) for _ in range(3)]
    broker = MemoryBroker(1000)
    hub = Hub(fast_settings(broadcast_interval=0), broker)
    relays = [Relay(db, hub.publish, poll_interval=1, batch=7) for db in databases]
    try:
        for start in range(0, 120, 12):
            await write(databases[0], [book_event(1, f"{n:03}") for n in range(start, start + 12)])

        async def drain(relay: Relay) -> None:
            while True:
                outcome = await relay.relay_once()
                if outcome == 0:
                    return
                if outcome is None:  # another relay's turn
                    await asyncio.sleep(0.01)

        await asyncio.gather(*(drain(relay) for relay in relays))
        published = titles((await broker.history("books", 0, broker.epoch)).messages)
        assert published == [(n + 1, f"{n:03}") for n in range(120)]
        assert sum(relay.published for relay in relays) == 120
    finally:
        for db in databases:
            await db.dispose()


async def test_the_running_relay_publishes_a_commit_before_the_request_returns(database: Database) -> None:
    broker = MemoryBroker(100)
    hub = Hub(fast_settings(broadcast_interval=0), broker)
    measured: list[Backlog] = []
    # A generous bound on the wait, so that only the end of the round (never the bound) releases the request.
    relay = Relay(database, hub.publish, poll_interval=0.05, on_backlog=measured.append, publish_wait=60)
    await relay.start()
    await relay.start()  # idempotent
    try:
        event = book_event(3, "now")
        await write(database, [event])
        await relay.on_domain_event(event)  # what the event bus does after the commit
        assert titles((await broker.history("book:3", 0, broker.epoch)).messages) == [(1, "now")]
        await wait_until(
            lambda: bool(measured) and measured[-1] == Backlog(0, 0.0), within=10, what="an empty backlog measured"
        )
    finally:
        await relay.stop()
        await relay.stop()  # idempotent


async def test_a_relay_that_polls_publishes_rows_another_process_left(database: Database, committed_url: str) -> None:
    broker = MemoryBroker(100)
    hub = Hub(fast_settings(broadcast_interval=0), broker)
    relay = Relay(database, hub.publish, poll_interval=0.05)
    await relay.start()
    other = create_database(fast_settings(database_url=committed_url))
    try:
        await write(other, [book_event(4, "left behind")])  # committed elsewhere: nothing wakes this relay

        async def published() -> bool:
            return bool((await broker.history("book:4", 0, broker.epoch)).messages)

        deadline = asyncio.get_running_loop().time() + 10
        while not await published():
            assert asyncio.get_running_loop().time() < deadline, "the poll never published the row"
            await asyncio.sleep(0.02)
    finally:
        await relay.stop()
        await other.dispose()


async def test_stopping_during_an_outage_keeps_the_rows_and_says_so(
    database: Database, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="library_api.realtime.relay")
    broker = RedisBroker(f"redis://127.0.0.1:{refused_port()}/0", "nowhere", 10, block_ms=100)
    hub = Hub(fast_settings(broadcast_interval=0), broker)
    await hub.start()
    measured: list[Backlog] = []
    relay = Relay(database, hub.publish, poll_interval=0.05, on_backlog=measured.append)
    await relay.start()
    event = book_event(5, "kept")
    await write(database, [event])
    await relay.on_domain_event(event)
    await wait_until(lambda: relay.failures >= 2, within=10, what="retries against the unreachable broker")
    await relay.on_domain_event(event)  # a failing relay keeps no request waiting
    await relay.stop(flush_timeout=1)
    await hub.stop()
    assert [row.type for row in await rows(database)] == ["book.updated"]
    messages = [record.getMessage() for record in caplog.records]
    assert any(message.startswith("cannot publish live events") for message in messages)
    assert "1 live event(s) wait in the outbox; the next relay to run publishes them" in messages
    assert measured and measured[-1].depth == 1


async def test_the_backlog_is_its_depth_and_the_age_of_its_oldest_row(database: Database) -> None:
    broker = MemoryBroker(10)
    hub = Hub(fast_settings(broadcast_interval=0), broker)
    await write(database, [book_event(6)])
    later = utcnow() + timedelta(minutes=10)
    relay = Relay(database, hub.publish, poll_interval=1, clock=lambda: later)
    backlog = await relay.backlog()
    assert backlog.depth == 1
    assert 590 <= backlog.oldest_age <= 610
    assert await relay.relay_once() == 1
    assert await relay.backlog() == Backlog(0, 0.0)
    async with database.reader() as session:
        assert (await session.execute(select(func.count()).select_from(LiveEventRow))).scalar_one() == 0


async def test_with_a_bound_database_rows_are_published_inline_or_kept(
    shared_engine: AsyncEngine, caplog: pytest.LogCaptureFixture
) -> None:
    """Tests that roll back every change share one connection: the request itself publishes, no task runs."""
    async with shared_engine.connect() as connection:
        transaction = await connection.begin()
        sessionmaker = async_sessionmaker(
            bind=connection, expire_on_commit=False, join_transaction_mode="create_savepoint"
        )
        bound = Database(engine=shared_engine, sessionmaker=sessionmaker, owned=False, bound=connection)
        broker = MemoryBroker(10)
        relay = Relay(bound, Hub(fast_settings(broadcast_interval=0), broker).publish, poll_interval=1)
        await relay.start()  # nothing to start
        event = book_event(7, "inline")
        await write(bound, [event])
        await relay.on_domain_event(event)
        assert titles((await broker.history("book:7", 0, broker.epoch)).messages) == [(1, "inline")]

        unreachable = RedisBroker(f"redis://127.0.0.1:{refused_port()}/0", "nowhere", 10, block_ms=100)
        failing = Relay(bound, Hub(fast_settings(broadcast_interval=0), unreachable).publish, poll_interval=1)
        await write(bound, [event])
        caplog.set_level(logging.WARNING, logger="library_api.realtime.relay")
        await failing.on_domain_event(event)
        await unreachable.close()
        assert len(await rows(bound)) == 1
        assert any(r.getMessage().startswith("live events left in the outbox") for r in caplog.records)
        await relay.stop()  # never started: nothing to do
        await transaction.rollback()


async def test_the_loop_retries_until_redis_returns_and_says_so(
    database: Database, private_redis: PrivateRedis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="library_api.realtime.relay")
    broker = RedisBroker(private_redis.url, "loop", 100, block_ms=100)
    hub = Hub(fast_settings(broadcast_interval=0), broker)
    relay = Relay(database, hub.publish, poll_interval=0.05)
    await relay.start()
    try:
        await asyncio.to_thread(private_redis.stop)
        event = book_event(8, "retried")
        await write(database, [event])
        await relay.on_domain_event(event)
        await wait_until(lambda: relay.failures >= 1, within=10, what="a failed round")
        await asyncio.to_thread(private_redis.start)
        await wait_until(lambda: relay.published == 1, within=30, what="the row published once Redis is back")
        await emptied(database)
    finally:
        await relay.stop()
        await broker.close()
    messages = [record.getMessage() for record in caplog.records]
    assert "live events: publishing from the outbox again" in messages


@pytest.mark.parametrize(**SQLITE_ONLY)
async def test_a_sqlite_relay_waits_its_turn_while_another_process_holds_the_lock(database: Database) -> None:
    path = Path(f"{database.engine.url.database}-relay.lock")
    broker = MemoryBroker(10)
    relay = Relay(database, Hub(fast_settings(broadcast_interval=0), broker).publish, poll_interval=0.05)
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)  # another process's relay at work
        await relay.start()
        await write(database, [book_event(9, "after my turn")])
        await wait_until(lambda: relay.waited >= 2, within=10, what="rounds that found the lock held")
        assert relay.published == 0
        fcntl.flock(descriptor, fcntl.LOCK_UN)
        await wait_until(lambda: relay.published == 1, within=10, what="the row published once the lock is free")
    finally:
        os.close(descriptor)
        await relay.stop()


async def test_only_a_sqlite_file_gets_a_lock_file(tmp_path: Path) -> None:
    urls = {
        "sqlite+aiosqlite:///:memory:": None,
        f"sqlite+aiosqlite:///{tmp_path}/library.db": tmp_path / "library.db-relay.lock",
        "postgresql+asyncpg://postgres@127.0.0.1:5432/library": None,
    }
    for url, expected in urls.items():
        engine = create_async_engine(url)
        database = Database(engine=engine, sessionmaker=async_sessionmaker(engine))
        assert Relay(database, MemoryBroker(1).publish, poll_interval=1).lock_path == expected, url
        await engine.dispose()
