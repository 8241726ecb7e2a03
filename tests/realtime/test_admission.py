"""The WebSocket abuse limits for real: Uvicorn on loopback, real clients trying each attack, and each one failing.

A first message too large before authentication, handshakes beyond the address's rate, sockets held open
without authenticating, and more connections than a caller may hold: each is refused with its documented answer
(close 1009, HTTP 429, HTTP 429, close 4429), while well-behaved clients, other addresses and other callers go on
being served.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from redis import Redis
from starlette.types import Message
from starlette.websockets import WebSocket
from websockets.asyncio.client import ClientConnection, connect
from websockets.datastructures import Headers
from websockets.exceptions import InvalidStatus

from library_api.config import Settings
from library_api.dependencies.context import AppContext
from library_api.realtime.admission import Admission, Denied, Refusal
from library_api.realtime.router import _deny
from library_api.resilience.rate_limits import RateLimiter
from library_api.security.permissions import Role
from library_api.security.principal import CredentialKind, Principal
from tests.realtime.conftest import SQLITE_ONLY, StartLive
from tests.support.factories import bearer, create_user, token_for
from tests.support.live import Live, closed_with, open_client, receive
from tests.support.polling import wait_until
from tests.support.services import REDIS_URL, require_redis

LOOPBACK = "127.0.0.1"


async def refused(url: str, **options: Any) -> tuple[int, Headers, dict[str, Any]]:
    """Attempt a handshake that must be refused; the HTTP status, headers and problem body of the refusal."""
    with pytest.raises(InvalidStatus) as refusal:
        await connect(url, open_timeout=10, **options)
    response = refusal.value.response
    body: dict[str, Any] = orjson.loads(response.body or b"{}")
    return response.status_code, response.headers, body


def refusals_metric(ctx: AppContext, reason: Refusal) -> str:
    """The exposition line of ``websocket_refusals_total`` for ``reason``."""
    prefix = f'websocket_refusals_total{{reason="{reason}"}}'
    text = ctx.metrics.expose(None)[0].decode()
    return next((line for line in text.splitlines() if line.startswith(prefix)), "")


def auth_message(token: str) -> str:
    return orjson.dumps({"type": "auth", "token": token}).decode()


# ----- a large first message before authentication -----


@pytest.mark.parametrize(**SQLITE_ONLY)
async def test_a_first_message_over_the_preauth_limit_is_closed_1009_and_auth_still_works(
    start_live: StartLive,
) -> None:
    live, ctx = await start_live(ws_auth_timeout=30)
    limit = ctx.admission.preauth_max_size
    assert limit == 16 * 1024
    token = token_for(ctx, await create_user(ctx, Role.READER))
    envelope = '{"type": "auth", "token": "'
    at_limit = envelope + "x" * (limit - len(envelope) - 2) + '"}'
    assert len(at_limit.encode()) == limit

    async with connect(live.ws("at-limit"), max_size=None) as client:
        await client.send(at_limit)  # not too big, only not a token the schema accepts
        code, reason = await closed_with(client)
    assert code == 4401, reason
    async with connect(live.ws("one-byte-over"), max_size=None) as client:
        await client.send(at_limit.replace('"}', 'x"}'))
        code, reason = await closed_with(client)
    assert (code, reason) == (1009, f"the first message exceeds {limit} bytes: authenticate first")
    async with connect(live.ws("binary-over")) as client:
        await client.send(b"\0" * (limit + 1))
        code, _ = await closed_with(client)
    assert code == 1009

    async with connect(live.ws("polite")) as client:
        await client.send(auth_message(token))
        welcome = await receive(client)
    assert welcome["type"] == "welcome"
    assert ctx.admission.refusals[Refusal.PREAUTH_SIZE] == 2
    assert refusals_metric(ctx, Refusal.PREAUTH_SIZE).endswith(" 2.0")
    assert ctx.hub.connections_opened == 1


# ----- handshakes per address -----


async def handshake_and_leave(live: Live, client_id: str, headers: dict[str, str], **options: Any) -> None:
    """Connect with ``headers``, get the ``welcome``, and leave."""
    async with connect(live.ws(client_id), additional_headers=headers, open_timeout=10, **options) as client:
        assert (await receive(client))["type"] == "welcome"


@pytest.mark.parametrize(**SQLITE_ONLY)
async def test_handshakes_beyond_the_address_rate_get_429_and_other_addresses_do_not(
    start_live: StartLive, caplog: pytest.LogCaptureFixture
) -> None:
    live, ctx = await start_live(rate_limit_enabled=True, ws_handshake_rate="3/minute")
    token = token_for(ctx, await create_user(ctx, Role.READER))
    for n in range(3):
        await handshake_and_leave(live, f"tab-{n}", bearer(token))

    status, headers, problem = await refused(live.ws("tab-3"), additional_headers=bearer(token))
    assert status == 429
    assert 1 <= int(headers["Retry-After"]) <= 60
    assert headers["Content-Type"] == "application/problem+json"
    assert problem["type"].endswith(":too-many-requests")
    assert "3 per 60 s" in problem["detail"]
    await refused(live.ws("no-credential-either"))  # every handshake counts, with or without a credential

    await handshake_and_leave(live, "other-address", bearer(token), local_addr=("127.0.0.2", 0))
    assert ctx.admission.refusals[Refusal.HANDSHAKE_RATE] == 2
    assert refusals_metric(ctx, Refusal.HANDSHAKE_RATE).endswith(" 2.0")
    assert ctx.hub.connections_opened == 4
    # A refusal is an answer, not a server error: nothing is logged as one.
    assert [record.getMessage() for record in caplog.records if record.levelname == "ERROR"] == []


@pytest.mark.parametrize(**SQLITE_ONLY)
async def test_behind_a_trusted_proxy_the_forwarded_client_address_is_counted(start_live: StartLive) -> None:
    live, ctx = await start_live(
        rate_limit_enabled=True, ws_handshake_rate="2/minute", trusted_proxies=[f"{LOOPBACK}/32"]
    )
    token = token_for(ctx, await create_user(ctx, Role.READER))
    first = {**bearer(token), "X-Forwarded-For": "203.0.113.7"}
    second = {**bearer(token), "X-Forwarded-For": "203.0.113.8"}
    for n in range(2):
        await handshake_and_leave(live, f"proxied-{n}", first)
    assert (await refused(live.ws("proxied-2"), additional_headers=first))[0] == 429
    await handshake_and_leave(live, "another-client", second)


@pytest.mark.parametrize(**SQLITE_ONLY)
async def test_handshakes_are_not_counted_while_rate_limiting_is_off(start_live: StartLive) -> None:
    live, ctx = await start_live(ws_handshake_rate="1/minute")
    token = token_for(ctx, await create_user(ctx, Role.READER))
    for n in range(3):
        await handshake_and_leave(live, f"free-{n}", bearer(token))
    assert ctx.admission.refusals[Refusal.HANDSHAKE_RATE] == 0


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    require_redis()
    prefix = f"test{uuid.uuid4().hex[:10]}_"
    yield prefix
    with Redis.from_url(REDIS_URL) as client:
        keys = [*client.scan_iter(match=f"{prefix}*"), *client.scan_iter(match=f"{{{prefix}}}*")]
        if keys:
            client.delete(*keys)


@pytest.mark.redis
@pytest.mark.parametrize(**SQLITE_ONLY)
async def test_with_redis_the_handshake_rate_holds_across_workers(start_live: StartLive, redis_prefix: str) -> None:
    shared = {
        "rate_limit_enabled": True,
        "ws_handshake_rate": "3/minute",
        "redis_url": REDIS_URL,
        "cache_key_prefix": redis_prefix,
        "realtime_redis_prefix": redis_prefix,
    }
    first, ctx = await start_live(**shared)
    second, _ = await start_live(**shared)
    token = token_for(ctx, await create_user(ctx, Role.READER))
    await handshake_and_leave(first, "w1-a", bearer(token))
    await handshake_and_leave(second, "w2-a", bearer(token))
    await handshake_and_leave(first, "w1-b", bearer(token))
    assert (await refused(second.ws("w2-b"), additional_headers=bearer(token)))[0] == 429
    assert (await refused(first.ws("w1-c"), additional_headers=bearer(token)))[0] == 429


# ----- sockets waiting to authenticate -----


@pytest.mark.parametrize(**SQLITE_ONLY)
async def test_sockets_waiting_to_authenticate_are_capped_per_address(start_live: StartLive) -> None:
    live, ctx = await start_live(ws_max_pending_per_address=2, ws_auth_timeout=60)
    token = token_for(ctx, await create_user(ctx, Role.READER))
    waiting = [await connect(live.ws(f"waiting-{n}")) for n in range(2)]
    assert ctx.admission.pending(LOOPBACK) == 2

    status, headers, problem = await refused(live.ws("one-too-many"))
    assert status == 429
    assert headers["Retry-After"] == "60"
    assert "waiting to authenticate" in problem["detail"]
    # A credential in the handshake is never pending: such clients are not held back.
    await handshake_and_leave(live, "with-a-header", bearer(token))

    await waiting[0].send(auth_message(token))
    assert (await receive(waiting[0]))["type"] == "welcome"
    await wait_until(lambda: ctx.admission.pending(LOOPBACK) == 1, within=10, what="the slot to be given back")
    third = await connect(live.ws("third"))
    await waiting[1].close()
    await wait_until(lambda: ctx.admission.pending(LOOPBACK) == 1, within=10, what="the leaver's slot")
    fourth = await connect(live.ws("fourth"))
    assert ctx.admission.pending(LOOPBACK) == 2
    assert ctx.admission.refusals[Refusal.PENDING] == 1
    assert refusals_metric(ctx, Refusal.PENDING).endswith(" 1.0")
    for client in (waiting[0], third, fourth):
        await client.close()
    await wait_until(lambda: ctx.admission.pending(LOOPBACK) == 0, within=10, what="every slot to be free")


# ----- connections per caller -----


@pytest.mark.parametrize(**SQLITE_ONLY)
async def test_a_caller_holds_at_most_the_configured_connections(start_live: StartLive) -> None:
    live, ctx = await start_live(ws_max_connections_per_principal=3)
    alice = await create_user(ctx, Role.READER)
    token = token_for(ctx, alice)
    subject = f"user:{alice.id}"
    tabs: dict[str, ClientConnection] = {f"tab-{n}": await open_client(live, f"tab-{n}", token) for n in range(3)}

    async with connect(live.ws("tab-3"), additional_headers=bearer(token)) as extra:
        code, reason = await closed_with(extra)
    assert (code, reason) == (4429, "this credential already holds 3 connections; close one first")
    async with connect(live.ws("first-message")) as late:  # the count applies however the caller authenticates
        await late.send(auth_message(token))
        assert (await closed_with(late))[0] == 4429

    # Reconnecting with an id it holds replaces that connection, so it is never refused.
    replacement = await open_client(live, "tab-1", token)
    assert (await closed_with(tabs["tab-1"]))[0] == 4000
    tabs["tab-1"] = replacement
    # Other callers have their own count.
    bob = await open_client(live, "tab-0", token_for(ctx, await create_user(ctx, Role.READER)))

    await tabs.pop("tab-0").close()
    await wait_until(lambda: ctx.admission.held(subject) == 2, within=10, what="the closed tab to be released")
    tabs["tab-4"] = await open_client(live, "tab-4", token)
    assert ctx.admission.held(subject) == 3
    assert ctx.admission.refusals[Refusal.PRINCIPAL] == 2
    assert refusals_metric(ctx, Refusal.PRINCIPAL).endswith(" 2.0")
    for client in (*tabs.values(), bob):
        await client.close()
    await wait_until(lambda: ctx.admission.held(subject) == 0, within=10, what="every connection to be released")


# ----- the parts on their own -----


def admission(**values: Any) -> Admission:
    return Admission(Settings(**values), RateLimiter(redis=None, key_prefix="unit"))


def test_a_claim_is_given_back_once_and_a_replacement_shares_its_place() -> None:
    limits = admission(ws_max_connections_per_principal=1)
    reader = Principal("user:1", CredentialKind.ACCESS_TOKEN, frozenset({"reader"}), frozenset())
    old = limits.claim(reader, "tab", LOOPBACK)
    new = limits.claim(reader, "tab", LOOPBACK)  # the same id: a reconnection replacing ``old``
    assert old is not None and new is not None
    assert limits.claim(reader, "other", LOOPBACK) is None
    old.release()
    old.release()
    assert limits.held("user:1") == 1
    new.release()
    assert limits.held("user:1") == 0


def test_anonymous_callers_are_counted_per_address() -> None:
    limits = admission(ws_max_connections_per_principal=1, ws_allow_anonymous=True)
    anonymous = Principal("anonymous", CredentialKind.ANONYMOUS, frozenset(), frozenset())
    assert limits.claim(anonymous, "a", "192.0.2.1") is not None
    assert limits.claim(anonymous, "b", "192.0.2.1") is None
    assert limits.claim(anonymous, "b", "192.0.2.2") is not None


def test_the_preauth_limit_never_exceeds_the_message_limit() -> None:
    assert admission(ws_max_size=4096).preauth_max_size == 4096
    assert admission().preauth_max_size == 16 * 1024


async def test_without_the_denial_extension_a_refused_handshake_is_closed_before_it_is_accepted() -> None:
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "websocket.connect"}

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {"type": "websocket", "path": "/ws/x", "headers": [], "query_string": b"", "extensions": {}}
    await _deny(WebSocket(scope, receive, send), Denied(Refusal.PENDING, "busy", 10))
    assert sent == [{"type": "websocket.close", "code": 1013, "reason": "busy"}]
