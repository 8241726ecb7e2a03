"""The Python client against a live server: reconnection with ``last_event_id``, shutdown, final close codes."""

from __future__ import annotations

import asyncio
import time

import pytest

from library_api.realtime.client import ClientStats, ClientStopped, LiveClient, latency_of
from library_api.realtime.topics import Subscription
from library_api.security.permissions import Role
from tests.realtime.conftest import SQLITE_ONLY, StartLive
from tests.support.factories import create_book, create_user, token_for
from tests.support.polling import wait_until

sqlite_only = pytest.mark.parametrize(**SQLITE_ONLY)


@sqlite_only
async def test_reconnects_and_resumes_without_losing_or_repeating(start_live: StartLive) -> None:
    live, ctx = await start_live()
    token = token_for(ctx, await create_user(ctx, Role.READER))
    seen: list[dict[str, object]] = []
    client = LiveClient(live.http, "resilient", token, ["books"], on_message=seen.append, max_backoff=0.5)
    stop = asyncio.Event()
    running = asyncio.create_task(client.run(stop))
    try:
        await wait_until(lambda: client.last_ids["books"] is not None, within=10, what="the subscription")
        for round_ in range(3):
            await wait_until(lambda: ctx.hub.active() == 1, within=10, what="the client to be connected")
            await create_book(ctx, title=f"before {round_}")
            for connection in ctx.hub.connections():
                await connection.close(1011, "test: connection lost")
            for n in range(3):
                await create_book(ctx, title=f"while away {round_}.{n}")
        await wait_until(lambda: client.stats.received == 12, within=15, what="all twelve events")
    finally:
        stop.set()
        await asyncio.wait_for(running, timeout=10)
    assert client.stats.reconnects >= 3
    assert (client.stats.gaps, client.stats.duplicates) == (0, 0)
    titles = [m["data"]["title"] for m in seen if m["type"] == "book.created"]  # type: ignore[index]
    assert len(titles) == len(set(titles)) == 12
    assert client.stats.types["book.created"] == 12
    assert len(client.stats.latencies) == 12  # one delivery latency measured per event (latency_of: below)


@sqlite_only
async def test_a_draining_server_is_left_before_its_deadline(start_live: StartLive) -> None:
    live, ctx = await start_live()
    token = token_for(ctx, await create_user(ctx, Role.READER))
    clients = [LiveClient(live.http, f"polite-{n}", token, ["books"], max_backoff=0.3) for n in range(5)]
    stop = asyncio.Event()
    running = [asyncio.create_task(client.run(stop)) for client in clients]
    try:
        await wait_until(lambda: ctx.hub.active() == 5, within=10, what="five connections")
        # Nothing closes a connection here before the deadline, an hour away: every client leaves by itself.
        await ctx.hub.begin_drain(time.time() + 3600)
        await wait_until(lambda: ctx.hub.active() == 0, within=30, what="the clients to leave")
        await wait_until(
            lambda: ctx.hub.connections_refused >= 5 and all(client.stats.reconnects >= 1 for client in clients),
            within=10,
            what="every client's reconnection attempt",
        )
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*running), timeout=10)
    assert all(client.stats.reconnects >= 1 for client in clients)


@sqlite_only
async def test_an_invalid_token_stops_the_client(start_live: StartLive) -> None:
    live, _ = await start_live()
    client = LiveClient(live.http, "forged", "not-a-token", ["books"])
    with pytest.raises(ClientStopped, match="4401"):
        await asyncio.wait_for(client.run(asyncio.Event()), timeout=10)


@sqlite_only
async def test_resync_moves_the_client_to_the_latest_id(start_live: StartLive) -> None:
    live, ctx = await start_live(ws_history_size=2)
    token = token_for(ctx, await create_user(ctx, Role.READER))
    for _ in range(5):
        await create_book(ctx)
    client = LiveClient(live.http, "behind", token, ["books"])
    client.last_ids["books"] = 1
    stop = asyncio.Event()
    running = asyncio.create_task(client.run(stop))
    try:
        await wait_until(lambda: client.stats.resyncs == 1, within=10, what="the resync")
        assert client.last_ids["books"] == 5
        await ctx.hub.publish("book.updated", [Subscription("books", "books")], {"id": 1})
        await wait_until(lambda: client.stats.received == 1, within=10, what="the next event")
    finally:
        stop.set()
        await asyncio.wait_for(running, timeout=10)
    assert client.last_ids["books"] == 6


def test_stats_merge_and_percentiles() -> None:
    first, second = ClientStats(received=2, latencies=[0.010, 0.030]), ClientStats(received=1, latencies=[0.020])
    first.merge(second)
    assert first.received == 3
    assert first.percentile(0.5) == pytest.approx(0.020)
    assert first.percentile(0.99) == pytest.approx(0.030)
    assert "p50 20.0 ms" in first.summary()
    assert ClientStats().percentile(0.5) is None
    assert "p99 -" in ClientStats().summary()
    assert latency_of({"ts": "garbage"}) is None
    assert latency_of({"ts": "2026-01-01T00:00:00Z"}, now=1767225601.5) == pytest.approx(1.5)
