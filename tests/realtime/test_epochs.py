"""Live positions that cannot lie: after a broker loses its history, an old position gets ``resync``, never a replay.

The faults are real: the service is stopped and started again (the in-process broker's history dies with it), and
a private Redis without persistence is killed and started empty. Clients are real WebSocket clients and the
service's own Python client.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import pytest_asyncio
from redis.asyncio import Redis
from websockets.asyncio.client import ClientConnection

from library_api.app import create_app
from library_api.dependencies.context import AppContext
from library_api.realtime.broker import RESYNC_EPOCH, MemoryBroker
from library_api.realtime.client import LiveClient
from library_api.realtime.redis_broker import EMPTY_EPOCH_TTL, RedisBroker
from library_api.realtime.topics import Subscription
from library_api.security.permissions import Role
from tests.conftest import fast_settings
from tests.realtime.conftest import SQLITE_ONLY, StartLive
from tests.support.factories import create_book, create_user, token_for
from tests.support.live import open_client, receive_until, serve_in_loop, subscribe
from tests.support.polling import wait_until
from tests.support.private_services import PrivateRedis

BOOKS = Subscription("books", "books")

sqlite_only = pytest.mark.parametrize(**SQLITE_ONLY)


async def resume(client: ClientConnection, topic: str, last_event_id: int, epoch: str | None) -> dict[str, Any]:
    """Subscribe from a position; the first ``resync`` or ``subscribed`` reply."""
    command: dict[str, Any] = {"type": "subscribe", "topic": topic, "last_event_id": last_event_id}
    if epoch is not None:
        command["last_event_epoch"] = epoch
    await client.send(orjson.dumps(command).decode())
    return await receive_until(client, lambda m: m["type"] in ("subscribed", "resync", "error"))


async def book_events(client: ClientConnection, count: int) -> list[dict[str, Any]]:
    """The next ``count`` ``book.created`` messages (other messages pass by)."""
    return [await receive_until(client, lambda m: m["type"] == "book.created") for _ in range(count)]


@pytest_asyncio.fixture
async def admin(private_redis: PrivateRedis) -> AsyncIterator[Redis]:
    client = Redis.from_url(private_redis.url, decode_responses=True)
    yield client
    await client.aclose()


# ----- the brokers -----


async def test_every_process_numbers_in_an_epoch_of_its_own() -> None:
    first, second = MemoryBroker(10), MemoryBroker(10)
    await first.publish("x", [BOOKS], {})
    assert first.epoch != second.epoch
    await second.publish("x", [BOOKS], {})
    # The same id in the second process is another message: a position of the first is not resumed there.
    replay = await second.history("books", 0, first.epoch)
    assert (replay.complete, replay.reason, replay.epoch) == (False, RESYNC_EPOCH, second.epoch)
    assert (await second.history("books", 0, second.epoch)).complete


async def test_a_redis_stream_that_is_lost_gets_a_new_epoch(private_redis: PrivateRedis, admin: Redis) -> None:
    broker = RedisBroker(private_redis.url, "epochs", 10, block_ms=200)
    try:
        # A subscription to a stream nobody has published on yet fixes its epoch; the first publish keeps it,
        # so position 0 of it resumes exactly.
        empty = await broker.history("books", None, None)
        assert (empty.latest, empty.messages) == (0, [])
        assert 0 < await admin.ttl(broker.epoch_key("books")) <= EMPTY_EPOCH_TTL
        assert await broker.publish("x", [BOOKS], {"n": 1}) == [1]
        assert await admin.ttl(broker.epoch_key("books")) == -1  # kept for as long as the stream
        replay = await broker.history("books", 0, empty.epoch)
        assert replay.complete
        assert [event_id for event_id, _ in replay.messages] == [1]
        assert orjson.loads(replay.messages[0][1])["epoch"] == empty.epoch

        # The stream is lost (evicted, deleted) while its epoch survives: ids would restart at 1, so the epoch
        # changes with them.
        await broker.publish("x", [BOOKS], {"n": 2})
        await admin.delete(broker.key("books"))
        assert await broker.publish("x", [BOOKS], {"n": 3}) == [1]
        after = await broker.history("books", 1, empty.epoch)
        assert (after.complete, after.reason) == (False, RESYNC_EPOCH)
        assert after.epoch != empty.epoch

        # A stream without an epoch key (written before epochs existed, or the key alone was lost) gets a new one.
        await admin.delete(broker.epoch_key("books"))
        renamed = await broker.history("books", None, None)
        assert renamed.epoch != after.epoch
        assert renamed.latest == 1
        assert await admin.ttl(broker.epoch_key("books")) == -1

        # The same when the stream vanishes before anything is read: a publish on a lost stream starts anew.
        await admin.delete(broker.key("books"))
        await broker.publish("x", [BOOKS], {"n": 4})
        assert (await broker.history("books", None, None)).epoch != renamed.epoch
    finally:
        await broker.close()


# ----- the in-process broker across a service restart -----


@sqlite_only
async def test_a_position_from_before_a_service_restart_gets_resync(committed_url: str, tmp_path: Path) -> None:
    """The reported run: position 5, restart, 8 new books, reconnect: ``resync``, not ``replayed: 3``."""

    def app_settings() -> Any:
        return fast_settings(database_url=committed_url, upload_dir=tmp_path, broadcast_interval=0)

    first = create_app(app_settings())
    async with serve_in_loop(first) as live:
        ctx: AppContext = first.state.context
        token = token_for(ctx, await create_user(ctx, Role.READER))
        client = await open_client(live, "returning", token)
        await subscribe(client, "books")
        for n in range(5):
            await create_book(ctx, title=f"first life {n}")
        seen = await book_events(client, 5)
        last_id, old_epoch = seen[-1]["id"], seen[-1]["epoch"]
        assert last_id == 5
        await client.close()

    second = create_app(app_settings())
    async with serve_in_loop(second) as live:
        ctx = second.state.context
        for n in range(8):
            await create_book(ctx, title=f"second life {n}")
        client = await open_client(live, "returning", token)
        resync = await resume(client, "books", last_id, old_epoch)
        assert resync["type"] == "resync"
        assert resync["data"]["reason"] == RESYNC_EPOCH
        assert resync["data"]["latest"] == 8
        new_epoch = resync["data"]["epoch"]
        assert new_epoch != old_epoch
        subscribed = await receive_until(client, lambda m: m["type"] == "subscribed")
        assert subscribed["data"] == {"topic": "books", "last_event_id": 8, "epoch": new_epoch, "replayed": 0}
        await create_book(ctx, title="after the resync")
        [live_event] = await book_events(client, 1)
        assert (live_event["id"], live_event["epoch"]) == (9, new_epoch)

        # An old client that names no epoch is never replayed either: its id cannot be placed.
        legacy = await open_client(live, "legacy", token)
        answer = await resume(legacy, "books", 5, None)
        assert (answer["type"], answer["data"]["reason"]) == ("resync", RESYNC_EPOCH)
        assert (await receive_until(legacy, lambda m: m["type"] == "subscribed"))["data"]["replayed"] == 0
        # ...while a position of the current epoch is resumed exactly.
        exact = await resume(legacy, "books", 7, new_epoch)
        assert (exact["type"], exact["data"]["replayed"]) == ("subscribed", 2)
        titles = [m["data"]["title"] for m in await book_events(legacy, 2)]
        assert titles == ["second life 7", "after the resync"]
        await client.close()
        await legacy.close()


# ----- Redis restarted without its data -----


@sqlite_only
async def test_a_redis_restart_without_data_never_replays_the_new_numbering(
    start_live: StartLive, private_redis: PrivateRedis
) -> None:
    live, ctx = await start_live(redis_url=private_redis.url)
    token = token_for(ctx, await create_user(ctx, Role.READER))
    seen: list[dict[str, Any]] = []
    python_client = LiveClient(live.http, "python-client", token, ["books"], on_message=seen.append, max_backoff=0.5)
    stop = asyncio.Event()
    running = asyncio.create_task(python_client.run(stop))
    staying = await open_client(live, "staying", token)
    try:
        await subscribe(staying, "books")
        await wait_until(lambda: python_client.last_ids["books"] is not None, within=10, what="the subscription")
        for n in range(5):
            await create_book(ctx, title=f"before {n}")
        await wait_until(lambda: python_client.stats.received == 5, within=15, what="five events")
        before = await book_events(staying, 5)
        old_epoch = before[-1]["epoch"]
        assert python_client.epochs["books"] == old_epoch

        # The Python client leaves at id 5; Redis dies and comes back empty; 8 books later it returns.
        stop.set()
        await asyncio.wait_for(running, timeout=10)
        private_redis.stop()
        private_redis.start()
        for n in range(8):
            await create_book(ctx, title=f"after {n}")

        # The client that stayed connected is told to resync, then gets the new numbering from its start.
        resync = await receive_until(
            staying, lambda m: m["type"] == "resync" and m["data"]["topic"] == "books", within=20
        )
        assert resync["data"]["latest"] is None
        after = await book_events(staying, 8)
        assert [m["data"]["title"] for m in after] == [f"after {n}" for n in range(8)]
        assert [m["id"] for m in after] == list(range(1, 9))
        assert {m["epoch"] for m in after} != {old_epoch}

        stop = asyncio.Event()
        running = asyncio.create_task(python_client.run(stop))
        await wait_until(lambda: python_client.stats.resyncs == 1, within=15, what="the returning client's resync")
        resyncs = [m for m in seen if m["type"] == "resync"]
        assert resyncs[0]["data"]["last_event_id"] == 5
        assert resyncs[0]["data"]["reason"] == RESYNC_EPOCH
        assert python_client.last_ids["books"] == 8
        assert python_client.epochs["books"] == after[-1]["epoch"]
        await create_book(ctx, title="resumed")
        await wait_until(lambda: python_client.stats.received == 6, within=15, what="the next live event")
        titles = [m["data"]["title"] for m in seen if m["type"] == "book.created"]
        assert titles == [*(f"before {n}" for n in range(5)), "resumed"]  # never the new numbering as a replay
        assert (python_client.stats.gaps, python_client.stats.duplicates) == (0, 0)
    finally:
        stop.set()
        await asyncio.wait_for(running, timeout=10)
        await staying.close()


@sqlite_only
async def test_a_numbering_that_restarts_under_a_live_subscription_is_announced(
    start_live: StartLive, private_redis: PrivateRedis, admin: Redis
) -> None:
    """The stream alone is lost (evicted, deleted) while Redis and the worker's reader carry on."""
    live, ctx = await start_live(redis_url=private_redis.url, realtime_redis_prefix="live-epochs")
    token = token_for(ctx, await create_user(ctx, Role.READER))
    client = await open_client(live, "watching", token)
    try:
        await subscribe(client, "books")
        for n in range(3):
            await create_book(ctx, title=f"old {n}")
        old = await book_events(client, 3)
        await admin.delete("{live-epochs}:s:books")
        await create_book(ctx, title="new numbering")
        resync = await receive_until(client, lambda m: m["type"] == "resync")
        assert resync["data"]["reason"] == RESYNC_EPOCH
        assert resync["data"]["epoch"] != old[-1]["epoch"]
        [first] = await book_events(client, 1)  # id 1 again, yet delivered: it is a message of the new epoch
        assert (first["id"], first["epoch"], first["data"]["title"]) == (1, resync["data"]["epoch"], "new numbering")
        assert ctx.hub.resyncs == 1
    finally:
        await client.close()
