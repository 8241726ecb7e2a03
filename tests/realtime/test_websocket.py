"""``/ws/{client_id}`` for real: Uvicorn on loopback, real WebSocket clients, events from real API calls."""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from library_api.dependencies.context import AppContext
from library_api.realtime.topics import Subscription
from library_api.security.permissions import Role
from tests.realtime.conftest import SQLITE_ONLY, StartLive
from tests.support.factories import create_book, create_user, token_for, unique_isbn
from tests.support.live import (
    Live,
    closed_with,
    open_client,
    ping,
    read_until_sentinel,
    receive,
    receive_until,
    subscribe,
)
from tests.support.polling import wait_until

pytestmark = pytest.mark.parametrize(**SQLITE_ONLY)


async def tokens(ctx: AppContext, *roles: Role) -> list[str]:
    return [token_for(ctx, await create_user(ctx, role)) for role in roles]


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def events(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Stream messages only (control replies and heartbeats left out)."""
    return [m for m in messages if m["topic"] not in ("system", "heartbeat")]


async def broadcast_sentinel(ctx: AppContext) -> Callable[[dict[str, Any]], bool]:
    """Publish a broadcast every client receives, and return the test that recognises it.

    The in-process broker hands a message to every subscriber as it is published, so a broadcast published once
    the events under test have been published (a client has received the last of them, or a witness has) reaches
    each client after them: whatever a client did not get before it, it never gets.
    """
    marker = f"sentinel-{uuid.uuid4().hex}"
    await ctx.hub.publish("broadcast", [Subscription("broadcast", "broadcast")], {"message": marker})
    return lambda message: message["type"] == "broadcast" and message["data"].get("message") == marker


async def published(live: Live, ctx: AppContext, token: str) -> None:
    """Return once every domain event raised so far has been published (events leave through one queue)."""
    witness = await open_client(live, f"witness-{uuid.uuid4().hex[:8]}", token)
    try:
        await subscribe(witness, "books")
        book = await create_book(ctx, title="witness")
        await receive_until(witness, lambda m: m["type"] == "book.created" and m["data"]["id"] == book.id)
    finally:
        await witness.close()


# ----- handshake and authentication -----


async def test_bearer_header_authenticates_and_welcome_says_who(start_live: StartLive) -> None:
    live, ctx = await start_live()
    user = await create_user(ctx, Role.READER)
    async with connect(live.ws("reader-1"), additional_headers=auth(token_for(ctx, user))) as client:
        welcome = await receive(client)
    assert welcome["type"] == "welcome"
    assert welcome["id"] is None
    assert welcome["data"]["client_id"] == "reader-1"
    assert welcome["data"]["subject"] == f"user:{user.id}"
    assert welcome["data"]["roles"] == ["reader"]
    assert welcome["data"]["topics"] == ["broadcast", "heartbeat"]


async def test_browser_token_subprotocol_is_accepted_and_never_echoed(start_live: StartLive) -> None:
    live, ctx = await start_live()
    [token] = await tokens(ctx, Role.READER)
    async with connect(live.ws("browser"), subprotocols=["library-api.v1", f"bearer.{token}"]) as client:  # type: ignore[list-item]
        welcome = await receive(client)
        assert client.subprotocol == "library-api.v1"
        assert token not in str(client.response.headers)
    assert welcome["data"]["roles"] == ["reader"]


async def test_first_message_authentication(start_live: StartLive) -> None:
    live, ctx = await start_live()
    [token] = await tokens(ctx, Role.LIBRARIAN)
    async with connect(live.ws("first-message")) as client:
        await client.send(orjson.dumps({"type": "auth", "token": token}).decode())
        welcome = await receive(client)
        assert welcome["data"]["roles"] == ["librarian"]
        # A later ``auth`` renews the credential in band (tests/realtime/test_credential_lifecycle.py); a bad
        # token is refused with an error and the connection keeps its credential.
        await client.send('{"type": "auth", "token": "again"}')
        again = await receive_until(client, lambda m: m["type"] == "error")
        assert again["data"]["request"] == "auth"
        assert "invalid" in again["data"]["message"]


async def test_no_credential_is_closed_4401_when_anonymous_is_off(start_live: StartLive) -> None:
    live, _ = await start_live(ws_auth_timeout=0.3)
    async with connect(live.ws("nobody")) as client:
        await client.send('{"type": "subscribe", "topic": "books"}')
        code, reason = await closed_with(client)
    assert code == 4401
    assert "authentication required" in (reason or "")
    async with connect(live.ws("silent")) as client:
        code, reason = await closed_with(client)
    assert code == 4401
    assert "timed out" in (reason or "")


async def test_a_bad_token_in_the_first_message_is_closed_4401(start_live: StartLive) -> None:
    live, _ = await start_live()
    async with connect(live.ws("forged")) as client:
        await client.send('{"type": "auth", "token": "not-a-jwt"}')
        code, reason = await closed_with(client)
    assert code == 4401
    assert "invalid" in (reason or "")


@pytest.mark.parametrize("credential", ["header", "subprotocol"])
async def test_a_bad_handshake_token_is_closed_4401_without_echoing_it(start_live: StartLive, credential: str) -> None:
    live, ctx = await start_live()
    expired = ctx.tokens.issue_access(
        user_id=(await create_user(ctx)).id, role="reader", token_version=0, now=datetime.now(UTC) - timedelta(days=1)
    ).token
    options: dict[str, Any] = (
        {"additional_headers": auth(expired)}
        if credential == "header"
        else {"subprotocols": ["library-api.v1", f"bearer.{expired}"]}
    )
    async with connect(live.ws("expired"), **options) as client:
        code, reason = await closed_with(client)
    assert code == 4401
    assert reason == "The access token expired."
    assert ctx.hub.active() == 0


@pytest.mark.parametrize("client_id", ["has%20space", "x" * 65, "semi%3Bcolon", "%C3%A9"])
async def test_invalid_client_ids_are_refused(start_live: StartLive, client_id: str) -> None:
    live, ctx = await start_live()
    [token] = await tokens(ctx, Role.READER)
    async with connect(live.ws(client_id), additional_headers=auth(token)) as client:
        code, reason = await closed_with(client)
    assert code == 1008
    assert reason == "client_id must be 1-64 of A-Z a-z 0-9 _ -"
    assert ctx.hub.connections_opened == 0


async def test_anonymous_clients_only_with_the_development_setting(start_live: StartLive) -> None:
    live, ctx = await start_live(ws_allow_anonymous=True, ws_auth_timeout=0.2)
    async with connect(live.ws("anon")) as client:
        await client.send('{"type": "subscribe", "topic": "books"}')
        welcome = await receive(client)
        assert welcome["data"]["subject"] == "anonymous"
        subscribed = await receive(client)
        assert subscribed["type"] == "subscribed"
        await client.send('{"type": "subscribe", "topic": "bookings:me"}')
        refused = await receive_until(client, lambda m: m["type"] == "error")
        assert "user account" in refused["data"]["message"]
        await create_book(ctx)
        created = await receive_until(client, lambda m: m["type"] == "book.created")
        assert created["topic"] == "books"


async def test_credentials_without_events_subscribe_are_closed_4403(start_live: StartLive) -> None:
    live, ctx = await start_live(role_permissions={"reader": {"permissions": ["books:read"]}})
    [token] = await tokens(ctx, Role.READER)
    async with connect(live.ws("no-events"), additional_headers=auth(token)) as client:
        code, reason = await closed_with(client)
    assert code == 4403
    assert "events:subscribe" in (reason or "")


async def test_same_id_replaces_the_first_connection_of_the_same_caller(start_live: StartLive) -> None:
    live, ctx = await start_live()
    user = await create_user(ctx, Role.READER)
    other = await create_user(ctx, Role.READER)
    first = await open_client(live, "tab", token_for(ctx, user))
    stranger = await open_client(live, "tab", token_for(ctx, other))
    second = await open_client(live, "tab", token_for(ctx, user))
    code, reason = await closed_with(first)
    assert code == 4000
    assert reason == "replaced by a newer connection with the same client id"
    assert ctx.hub.active() == 2  # the other user's "tab" is theirs and stays
    assert ctx.hub.connections_replaced == 1
    await ctx.hub.publish("broadcast", [Subscription("broadcast", "broadcast")], {"message": "still here"})
    for client in (second, stranger):
        message = await receive_until(client, lambda m: m["type"] == "broadcast")
        assert message["data"]["message"] == "still here"
        await client.close()


# ----- events -----


async def test_book_events_from_the_api_reach_subscribers_and_no_one_else(start_live: StartLive) -> None:
    live, ctx = await start_live()
    librarian, reader = await tokens(ctx, Role.LIBRARIAN, Role.READER)
    other_book = await create_book(ctx)
    everything = await open_client(live, "everything", reader)
    assert (await subscribe(everything, "books"))["type"] == "subscribed"
    elsewhere = await open_client(live, "elsewhere", reader)
    assert (await subscribe(elsewhere, f"book:{other_book.id}"))["type"] == "subscribed"
    idle = await open_client(live, "idle", reader)

    async with httpx.AsyncClient(base_url=live.http, headers=auth(librarian)) as http:
        created = await http.post(
            "/api/v1/books", json={"isbn": unique_isbn(), "title": "Live", "authors": ["A"], "copies": 2}
        )
        assert created.status_code == 201
        book_id = created.json()["id"]
        one_book = await open_client(live, "one-book", reader)
        await subscribe(one_book, f"book:{book_id}")
        updated = await http.patch(f"/api/v1/books/{book_id}", json={"copies": 3})
        assert updated.status_code == 200, updated.text

    # The update is the last event the calls raise: once it is here, every event they raised has been published.
    arrived = await read_until_sentinel(everything, lambda m: m["type"] == "book.updated")
    got = [*events(arrived.before), arrived.sentinel]
    assert [(m["type"], m["topic"], m["data"]["id"]) for m in got] == [
        ("book.created", "books", book_id),
        ("book.updated", "books", book_id),
    ]
    assert got[0]["id"] + 1 == got[1]["id"]
    assert got[1]["data"]["copies"] == 3
    sentinel = await broadcast_sentinel(ctx)
    assert events((await read_until_sentinel(everything, sentinel)).before) == []
    single = events((await read_until_sentinel(one_book, sentinel)).before)
    assert [(m["type"], m["topic"]) for m in single] == [("book.updated", f"book:{book_id}")]
    assert events((await read_until_sentinel(elsewhere, sentinel)).before) == []
    assert events((await read_until_sentinel(idle, sentinel)).before) == []


async def test_a_reader_never_receives_another_readers_booking_events(start_live: StartLive) -> None:
    live, ctx = await start_live()
    alice = await create_user(ctx, Role.READER)
    bob = await create_user(ctx, Role.READER)
    [librarian] = await tokens(ctx, Role.LIBRARIAN)
    book = await create_book(ctx, copies=5)
    alice_client = await open_client(live, "alice", token_for(ctx, alice))
    bob_client = await open_client(live, "bob", token_for(ctx, bob))
    desk = await open_client(live, "desk", librarian)
    await subscribe(alice_client, "bookings:me")
    for topic in ("bookings:me", "books", f"book:{book.id}"):
        assert (await subscribe(bob_client, topic))["type"] == "subscribed"
    refused = await subscribe(bob_client, "bookings")
    assert refused["type"] == "error"
    assert "bookings:read:any" in refused["data"]["message"]
    await subscribe(desk, "bookings")

    start = datetime.now(UTC) + timedelta(days=1)
    window = {"book_id": book.id, "start": start.isoformat(), "end": (start + timedelta(days=2)).isoformat()}
    async with httpx.AsyncClient(base_url=live.http) as http:
        booked = await http.post("/api/v1/bookings", json=window, headers=auth(token_for(ctx, alice)))
        assert booked.status_code == 201, booked.text
        booking_id = booked.json()["id"]
        cancelled = await http.post(f"/api/v1/bookings/{booking_id}/cancel", headers=auth(token_for(ctx, alice)))
        assert cancelled.status_code == 200

    # The cancellation is the last event raised: once it is here, every event has been published.
    arrived = await read_until_sentinel(alice_client, lambda m: m["type"] == "booking.cancelled")
    mine = [*events(arrived.before), arrived.sentinel]
    assert [(m["type"], m["topic"], m["data"]["id"]) for m in mine] == [
        ("booking.created", "bookings:me", booking_id),
        ("booking.cancelled", "bookings:me", booking_id),
    ]
    assert all(m["data"]["user_id"] == alice.id for m in mine)
    sentinel = await broadcast_sentinel(ctx)
    assert events((await read_until_sentinel(alice_client, sentinel)).before) == []
    seen_at_desk = events((await read_until_sentinel(desk, sentinel)).before)
    assert [m["type"] for m in seen_at_desk] == ["booking.created", "booking.cancelled"]
    assert events((await read_until_sentinel(bob_client, sentinel)).before) == []


async def test_unsubscribe_stops_delivery(start_live: StartLive) -> None:
    live, ctx = await start_live()
    [token] = await tokens(ctx, Role.READER)
    client = await open_client(live, "leaver", token)
    await subscribe(client, "books")
    await client.send('{"type": "unsubscribe", "topic": "books"}')
    reply = await receive_until(client, lambda m: m["type"] == "unsubscribed")
    assert reply["data"] == {"topic": "books", "was_subscribed": True}
    await create_book(ctx)
    await published(live, ctx, token)
    assert events((await read_until_sentinel(client, await broadcast_sentinel(ctx))).before) == []
    await client.send('{"type": "unsubscribe", "topic": "books"}')
    again = await receive_until(client, lambda m: m["type"] == "unsubscribed")
    assert again["data"]["was_subscribed"] is False


async def test_bad_commands_get_error_replies_and_the_connection_lives_on(start_live: StartLive) -> None:
    live, ctx = await start_live(ws_max_subscriptions=3)
    [token] = await tokens(ctx, Role.READER)
    client = await open_client(live, "clumsy", token)
    for bad, expected in [
        ("not json", "Invalid JSON"),
        ('{"type": "dance"}', "does not match any of the expected tags"),
        ('{"type": "subscribe"}', "topic"),
        ('{"type": "subscribe", "topic": "books", "last_id": 3}', "last_id"),
        ('{"type": "subscribe", "topic": "secret"}', "unknown topic"),
    ]:
        await client.send(bad)
        reply = await receive_until(client, lambda m: m["type"] == "error")
        assert expected in reply["data"]["message"], (bad, reply)
    await client.send(b"\xff\xfe")
    binary = await receive_until(client, lambda m: m["type"] == "error")
    assert "UTF-8" in binary["data"]["message"]
    assert (await subscribe(client, "books"))["type"] == "subscribed"
    too_many = await subscribe(client, "book:1")
    assert too_many["data"]["message"] == "too many subscriptions"
    await client.send('{"type": "ping"}')
    assert (await receive_until(client, lambda m: m["type"] == "pong"))["data"]["server_time"]


# ----- reconnecting -----


async def resume(client: ClientConnection, topic: str, last_event_id: int, epoch: str) -> dict[str, Any]:
    """Subscribe from a position (an id and its epoch); the ``subscribed`` or ``resync`` reply."""
    command = {"type": "subscribe", "topic": topic, "last_event_id": last_event_id, "last_event_epoch": epoch}
    await client.send(orjson.dumps(command).decode())
    return await receive_until(client, lambda m: m["type"] in ("subscribed", "resync", "error"))


async def test_reconnect_with_last_event_id_yields_exactly_the_missed_messages(start_live: StartLive) -> None:
    live, ctx = await start_live()
    [token] = await tokens(ctx, Role.READER)
    client = await open_client(live, "resumer", token)
    subscribed = await subscribe(client, "books")
    assert subscribed["data"]["last_event_id"] == 0
    await create_book(ctx, title="seen")
    seen = await receive_until(client, lambda m: m["type"] == "book.created")
    await client.close()

    missed = [await create_book(ctx, title=f"missed {n}") for n in range(5)]
    client = await open_client(live, "resumer", token)
    assert seen["epoch"] == subscribed["data"]["epoch"]
    reply = await resume(client, "books", seen["id"], seen["epoch"])
    assert reply["type"] == "subscribed"
    assert reply["data"]["replayed"] == 5
    await create_book(ctx, title="live")
    arrived = await read_until_sentinel(client, lambda m: m["type"] == "book.created" and m["data"]["title"] == "live")
    got = [*events(arrived.before), arrived.sentinel]
    assert [m["data"]["title"] for m in got] == [book.title for book in missed] + ["live"]
    assert [m["id"] for m in got] == list(range(seen["id"] + 1, seen["id"] + 7))
    assert events((await read_until_sentinel(client, await broadcast_sentinel(ctx))).before) == []  # no repeats


async def test_subscribe_reports_the_position_to_resume_from(start_live: StartLive) -> None:
    live, ctx = await start_live()
    [token] = await tokens(ctx, Role.READER)
    for _ in range(3):
        await create_book(ctx)
    client = await open_client(live, "position", token)
    reply = await subscribe(client, "books")
    assert reply["data"]["last_event_id"] == 3
    await client.close()
    await create_book(ctx, title="after")
    client = await open_client(live, "position", token)
    resumed = await resume(client, "books", 3, reply["data"]["epoch"])
    assert resumed["type"] == "subscribed"
    await create_book(ctx, title="sentinel")  # published after the replay was read: it arrives after the replay
    arrived = await read_until_sentinel(
        client, lambda m: m["type"] == "book.created" and m["data"]["title"] == "sentinel"
    )
    assert [m["data"]["title"] for m in events(arrived.before)] == ["after"]


async def test_a_gap_older_than_the_history_gets_a_resync(start_live: StartLive) -> None:
    live, ctx = await start_live(ws_history_size=3)
    [token] = await tokens(ctx, Role.READER)
    for _ in range(6):
        await create_book(ctx)
    client = await open_client(live, "late", token)
    epoch = (await ctx.hub.broker.history("books", None, None)).epoch
    resync = await resume(client, "books", 1, epoch)
    assert resync["data"] == {"topic": "books", "last_event_id": 1, "latest": 6, "epoch": epoch, "reason": "trimmed"}
    assert (await receive(client))["type"] == "subscribed"
    await create_book(ctx, title="next")
    arrived = await read_until_sentinel(client, lambda m: m["type"] == "book.created" and m["data"]["title"] == "next")
    assert (events(arrived.before), arrived.sentinel["id"]) == ([], 7)
    assert events((await read_until_sentinel(client, await broadcast_sentinel(ctx))).before) == []
    assert ctx.hub.resyncs == 1


# ----- broadcasts and heartbeats -----


async def test_broadcast_needs_the_permission_and_reaches_everyone(start_live: StartLive) -> None:
    live, ctx = await start_live()
    librarian, reader = await tokens(ctx, Role.LIBRARIAN, Role.READER)
    clients = [await open_client(live, f"listener-{n}", reader) for n in range(3)]
    async with httpx.AsyncClient(base_url=live.http) as http:
        refused = await http.post("/api/v1/broadcast", json={"message": "hi"}, headers=auth(reader))
        assert refused.status_code == 403
        anonymous = await http.post("/api/v1/broadcast", json={"message": "hi"})
        assert anonymous.status_code == 401
        wrong = await http.post(
            "/api/v1/broadcast", json={"message": "hi", "topic": "bookings"}, headers=auth(librarian)
        )
        assert wrong.status_code == 422
        assert wrong.headers["content-type"] == "application/problem+json"
        sent = await http.post("/api/v1/broadcast", json={"message": "closing at six"}, headers=auth(librarian))
    assert sent.status_code == 202
    assert sent.json() == {"topic": "broadcast", "id": 1}
    for client in clients:
        message = await receive_until(client, lambda m: m["type"] == "broadcast")
        assert message["data"]["message"] == "closing at six"
        assert message["topic"] == "broadcast"
        assert message["id"] == 1


async def test_broadcast_to_a_topic_reaches_only_its_subscribers(start_live: StartLive) -> None:
    live, ctx = await start_live()
    librarian, reader = await tokens(ctx, Role.LIBRARIAN, Role.READER)
    follower = await open_client(live, "follower", reader)
    await subscribe(follower, "book:7")
    bystander = await open_client(live, "bystander", reader)
    async with httpx.AsyncClient(base_url=live.http) as http:
        sent = await http.post(
            "/api/v1/broadcast", json={"message": "new copy", "topic": "book:7"}, headers=auth(librarian)
        )
    assert sent.json()["topic"] == "book:7"
    sentinel = await broadcast_sentinel(ctx)  # the topic's broadcast was published before the answer
    assert [m["data"]["message"] for m in events((await read_until_sentinel(follower, sentinel)).before)] == [
        "new copy"
    ]
    assert events((await read_until_sentinel(bystander, sentinel)).before) == []


async def test_heartbeats_carry_server_time_and_connection_count(start_live: StartLive) -> None:
    live, ctx = await start_live(broadcast_interval=0.2)
    [token] = await tokens(ctx, Role.READER)
    first = await open_client(live, "hb-1", token)
    second = await open_client(live, "hb-2", token)
    beats = [await receive_until(first, lambda m: m["type"] == "heartbeat") for _ in range(3)]
    assert [beat["id"] for beat in beats] == sorted({beat["id"] for beat in beats})
    assert beats[-1]["data"]["connections"] == 2
    assert beats[-1]["data"]["worker"] == ctx.hub.worker
    await second.send('{"type": "unsubscribe", "topic": "heartbeat"}')
    await receive_until(second, lambda m: m["type"] == "unsubscribed")
    ctx.hub.heartbeat()  # handed to every subscriber at once, before the server reads the ping below
    beat = await receive_until(first, lambda m: m["type"] == "heartbeat")
    assert [m for m in (await read_until_sentinel(second, await ping(second))).before if m["type"] == "heartbeat"] == []
    assert beat["data"]["connections"] == 2  # the unsubscribed client is still connected, just not told
    assert "draining" not in beats[-1]["data"]
    await ctx.hub.begin_drain(time.time() + 60)
    draining = await receive_until(first, lambda m: m["type"] == "heartbeat" and "draining" in m["data"])
    assert draining["data"]["draining"] is True


# ----- slow clients -----


async def slow_client(live: Live, client_id: str, token: str) -> ClientConnection:
    """A client with a tiny receive window that will not read: its server-side queue must fill up."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", live.port))
    client = await connect(live.ws(client_id), sock=sock, additional_headers=auth(token), max_queue=1)
    assert (await receive(client))["type"] == "welcome"
    return client


async def test_a_client_that_reads_nothing_is_dropped_while_the_others_stay_on_time(start_live: StartLive) -> None:
    live, ctx = await start_live(ws_send_queue_size=16)
    [token] = await tokens(ctx, Role.READER)
    stalled = await slow_client(live, "stalled", token)
    readers = [await open_client(live, f"reader-{n}", token) for n in range(3)]
    payload = "x" * 60_000  # 200 of these are far more than the socket buffers hold
    broadcast = [Subscription("broadcast", "broadcast")]
    [stalled_connection] = [c for c in ctx.hub.connections() if c.client_id == "stalled"]
    stalled_was_behind = False
    for n in range(200):
        [event_id] = await asyncio.wait_for(ctx.hub.publish("broadcast", broadcast, {"n": n, "p": payload}), 10)
        stalled_was_behind |= not stalled_connection.closed and stalled_connection.writer is not None
        # Every reader has message n before message n + 1 is even published: none waits behind the stalled one.
        for client in readers:
            message = await receive_until(client, lambda m: m["type"] == "broadcast")
            assert (message["id"], message["data"]["n"]) == (event_id, n)
    assert stalled_was_behind, "the stalled client never fell behind while the others were served"

    assert ctx.hub.overflow_closes == 1
    await wait_until(lambda: ctx.hub.active() == 3, within=10, what="the stalled client to be removed")
    # Its TCP window is full, so not even the close frame gets through: the hub gives up on it and ends its
    # handler rather than wait for a peer that does not read.
    await wait_until(
        lambda: (
            stalled_connection.abandoned
            and stalled_connection.handler is not None
            and stalled_connection.handler.done()
        ),
        within=10,
        what="the stalled client's handler to end",
    )
    # Once the stalled client reads again, it finds its connection over, having got only part of the stream.
    got = 0
    try:
        while True:
            raw = await asyncio.wait_for(stalled.recv(), timeout=10)
            got += '"type":"broadcast"' in str(raw)
    except ConnectionClosed:
        pass
    assert got < 200
    assert stalled.close_code == 1006  # closed without a close frame: it never made it through
    for client in (stalled, *readers):
        await client.close()


async def test_a_client_that_pauses_catches_up_without_loss_once_it_reads(start_live: StartLive) -> None:
    live, ctx = await start_live(ws_send_queue_size=1000)
    [token] = await tokens(ctx, Role.READER)
    paused = await slow_client(live, "paused", token)
    [connection] = ctx.hub.connections()
    payload = "y" * 60_000
    broadcast = [Subscription("broadcast", "broadcast")]
    for n in range(100):
        await ctx.hub.publish("broadcast", broadcast, {"n": n, "p": payload})
    assert connection.writer is not None, "the socket should have made a send wait"
    got = [await receive_until(paused, lambda m: m["type"] == "broadcast", within=30) for _ in range(100)]
    assert [m["data"]["n"] for m in got] == list(range(100))
    assert [m["id"] for m in got] == list(range(1, 101))
    await wait_until(lambda: connection.writer is None, within=10, what="the writer to finish")
    await ctx.hub.publish("broadcast", broadcast, {"n": 100})
    assert (await receive_until(paused, lambda m: m["type"] == "broadcast"))["data"]["n"] == 100
    assert ctx.hub.overflow_closes == 0
    await paused.close()
