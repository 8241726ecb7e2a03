"""The hub over real Redis: two hubs in one process stand for two workers; a private Redis is stopped and
restarted to show what an outage does and that the service recovers by itself."""

from __future__ import annotations

import asyncio

import httpx
import orjson
import pytest
from websockets.exceptions import ConnectionClosed

from library_api.realtime.topics import Subscription
from library_api.security.permissions import Role
from tests.realtime.conftest import SQLITE_ONLY, StartLive
from tests.support.factories import bearer, create_book, create_user, token_for
from tests.support.live import open_client, read_until_sentinel, receive, receive_until, subscribe
from tests.support.polling import wait_until
from tests.support.private_services import PrivateRedis
from tests.support.services import REDIS_URL

pytestmark = [pytest.mark.redis, pytest.mark.parametrize(**SQLITE_ONLY)]


async def test_a_client_id_reconnecting_on_another_worker_replaces_the_first(
    start_live: StartLive, redis_prefix: str
) -> None:
    settings = {
        "redis_url": REDIS_URL,
        "realtime_redis_prefix": redis_prefix,
        "cache_key_prefix": f"{{{redis_prefix}}}cache:",
    }
    first_worker, ctx = await start_live(**settings)
    second_worker, other_ctx = await start_live(**settings)
    token = token_for(ctx, await create_user(ctx, Role.READER))
    first = await open_client(first_worker, "phone", token)
    second = await open_client(second_worker, "phone", token)
    await wait_until(lambda: ctx.hub.active() == 0, within=10, what="the first worker to let go")
    with pytest.raises(ConnectionClosed):
        await receive(first)
    assert first.close_code == 4000
    assert first.close_reason == "replaced by a newer connection with the same client id"
    assert ctx.hub.connections_replaced == 1
    assert other_ctx.hub.active() == 1
    await second.close()


async def test_replay_and_live_messages_meet_without_a_gap_or_a_repeat(
    start_live: StartLive, redis_prefix: str
) -> None:
    live, ctx = await start_live(
        redis_url=REDIS_URL, realtime_redis_prefix=redis_prefix, cache_key_prefix=f"{{{redis_prefix}}}cache:"
    )
    token = token_for(ctx, await create_user(ctx, Role.READER))
    books = [Subscription("books", "books")]
    for n in range(50):
        await ctx.hub.publish("book.updated", books, {"n": n})
    client = await open_client(live, "catching-up", token)

    async def publish_more() -> None:
        for n in range(50, 250):
            await ctx.hub.publish("book.updated", books, {"n": n})

    epoch = (await ctx.hub.broker.history("books", None, None)).epoch
    publishing = asyncio.create_task(publish_more())
    command = {"type": "subscribe", "topic": "books", "last_event_id": 10, "last_event_epoch": epoch}
    await client.send(orjson.dumps(command).decode())
    reply = await receive_until(client, lambda m: m["type"] in ("subscribed", "resync", "error"))
    await publishing
    assert reply["type"] == "subscribed"
    await ctx.hub.publish("book.updated", books, {"n": "sentinel"})  # the next in the same stream comes after
    arrived = await read_until_sentinel(client, lambda m: m["type"] == "book.updated" and m["data"]["n"] == "sentinel")
    received = [m for m in arrived.before if m["type"] == "book.updated"]
    assert [m["id"] for m in received] == list(range(11, 251))
    assert [m["data"]["n"] for m in received] == list(range(10, 250))
    assert arrived.sentinel["id"] == 251


async def test_a_worker_that_lost_messages_tells_its_clients_to_resync(
    start_live: StartLive, redis_prefix: str
) -> None:
    live, ctx = await start_live(
        redis_url=REDIS_URL, realtime_redis_prefix=redis_prefix, cache_key_prefix=f"{{{redis_prefix}}}cache:"
    )
    token = token_for(ctx, await create_user(ctx, Role.READER))
    client = await open_client(live, "told", token)
    await subscribe(client, "books")
    await ctx.hub.broker.announce({"kind": "resync"})
    notices = [await receive_until(client, lambda m: m["type"] == "resync") for _ in range(2)]
    assert sorted(notice["data"]["topic"] for notice in notices) == ["books", "broadcast"]
    assert ctx.hub.resyncs == 2


async def test_a_redis_outage_degrades_live_events_and_they_recover_by_themselves(
    start_live: StartLive, private_redis: PrivateRedis
) -> None:
    live, ctx = await start_live(redis_url=private_redis.url)
    librarian = token_for(ctx, await create_user(ctx, Role.LIBRARIAN))
    client = await open_client(live, "patient", librarian)
    assert (await subscribe(client, "books"))["data"]["last_event_id"] == 0
    await create_book(ctx, title="before the outage")
    before = await receive_until(client, lambda m: m["type"] == "book.created")
    assert before["id"] == 1

    private_redis.stop()
    await create_book(ctx, title="during the outage")
    await wait_until(lambda: ctx.hub.publish_failures >= 1, within=10, what="the failed publish")
    during = await subscribe(client, "book:1")
    assert during["type"] == "subscribed"
    assert during["data"]["last_event_id"] is None  # the position is unknown while Redis is away
    await client.send('{"type": "subscribe", "topic": "broadcast", "last_event_id": 1}')
    unknown = await receive_until(client, lambda m: m["type"] == "resync")
    assert unknown["data"]["latest"] is None
    async with httpx.AsyncClient(base_url=live.http, headers=bearer(librarian)) as http:
        refused = await http.post("/api/v1/broadcast", json={"message": "anyone?"})
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "2"
        assert (await http.get("/api/v1/books")).status_code == 200  # the API itself keeps serving

        private_redis.start()  # empty: the outage also lost Redis' data
        after = await receive_until(client, lambda m: m["type"] == "book.created", within=20)
        assert after["data"]["title"] == "during the outage"
        # The first publish after the restart may still meet the outage (a pooled connection from before it):
        # the answer is then the documented 503 with Retry-After, and a client that retries gets through.
        deadline = asyncio.get_running_loop().time() + 20
        while (sent := await http.post("/api/v1/broadcast", json={"message": "back"})).status_code == 503:
            assert sent.headers["retry-after"], sent.text
            assert asyncio.get_running_loop().time() < deadline, (
                "broadcasts were still refused 20 s after Redis returned"
            )
            await asyncio.sleep(0.1)
        assert sent.status_code == 202
    assert (await receive_until(client, lambda m: m["type"] == "broadcast"))["data"]["message"] == "back"

    # A client resuming from an id of the old data is told to resynchronise instead of being sent nothing.
    await client.close()
    again = await open_client(live, "patient", librarian)
    await again.send('{"type": "subscribe", "topic": "books", "last_event_id": 7}')
    resync = await receive(again)
    assert resync["type"] == "resync"
    assert resync["data"]["last_event_id"] == 7
    assert resync["data"]["reason"] == "epoch"  # no epoch named: the position cannot be trusted
    await again.close()
