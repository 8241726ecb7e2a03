"""Credentials followed for the life of a connection, observed from real clients of a real server.

Each account or token change is made through the API while a client is connected; the client sees its
connection closed (4401) or its subscriptions dropped, and events published after that point never reach it.
The time from the change to the close is printed for the record (``-s``), never asserted: the outcome is.
Expiry uses the guard's injectable clock, so a token's ``exp`` is reached without waiting half an hour.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest
from sqlalchemy import event, update
from websockets.asyncio.client import ClientConnection, connect

from library_api.dependencies.context import AppContext
from library_api.realtime.client import LiveClient, login_session
from library_api.realtime.credentials import CredentialGuard, certificate_expiry, presented_token
from library_api.realtime.held_credential import Credential
from library_api.realtime.topics import Subscription
from library_api.security.permissions import Role
from library_api.security.principal import CredentialKind, Principal
from library_api.security.tokens import TokenService
from library_api.users.models import User
from library_api.users.schemas import UserAdminUpdate
from tests.realtime.conftest import SQLITE_ONLY, StartLive
from tests.support.certs import PKI
from tests.support.factories import PASSWORD, create_book, create_user, token_for
from tests.support.live import Live, closed_with, open_client, receive, receive_until, subscribe
from tests.support.polling import wait_until

live_app = pytest.mark.parametrize(**SQLITE_ONLY)

MANUAL = {"ws_credential_check_interval": 60.0}
"""No periodic check within a test: the test runs :meth:`CredentialGuard.sweep` itself, at the instant it chooses."""


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def send(client: ClientConnection, command: dict[str, Any]) -> None:
    await client.send(orjson.dumps(command).decode())


async def broadcast(ctx: AppContext, message: str, topic: str = "broadcast") -> None:
    await ctx.hub.publish("broadcast", [Subscription(topic, topic)], {"message": message, "sender": "test"})


async def closed_after(client: ClientConnection, change: Callable[[], Awaitable[None]], what: str) -> int | None:
    """Make the change, read until the server closes the socket, report how long it took; the close code."""
    await change()
    changed = time.monotonic()
    code, reason = await closed_with(client, within=10)
    print(f"{what}: closed {code} ({reason}) {time.monotonic() - changed:.3f} s after the change")
    return code


async def admin_http(live: Live, ctx: AppContext) -> httpx.AsyncClient:
    admin = await create_user(ctx, Role.ADMIN)
    return httpx.AsyncClient(base_url=live.http, headers=bearer(token_for(ctx, admin)), timeout=10)


# ----- account and token changes, through the API, with the periodic check running -----


@live_app
async def test_deactivation_demotion_password_change_logout_all_and_revocation_close_the_socket(
    start_live: StartLive,
) -> None:
    live, ctx = await start_live(ws_credential_check_interval=0.2)
    async with await admin_http(live, ctx) as admin:

        async def patch(user_id: int, body: dict[str, Any]) -> None:
            response = await admin.patch(f"/api/v1/users/{user_id}", json=body)
            assert response.status_code == 200, response.text

        deactivated = await create_user(ctx, Role.READER)
        demoted = await create_user(ctx, Role.LIBRARIAN)
        renamed = await create_user(ctx, Role.READER)
        leaving = await create_user(ctx, Role.READER)
        row, api_token = await _api_token(ctx)

        async def change_password() -> None:
            response = await admin.patch(
                "/api/v1/auth/me",
                json={"password": "another-long-passphrase-7", "current_password": PASSWORD},
                headers=bearer(token_for(ctx, renamed)),
            )
            assert response.status_code == 200, response.text

        async def logout_all() -> None:
            response = await admin.post("/api/v1/auth/logout-all", headers=bearer(token_for(ctx, leaving)))
            assert response.status_code == 204, response.text

        async def revoke() -> None:
            response = await admin.delete(f"/api/v1/tokens/{row}")
            assert response.status_code == 204, response.text

        cases: list[tuple[str, str, Callable[[], Awaitable[None]]]] = [
            ("deactivation", token_for(ctx, deactivated), lambda: patch(deactivated.id, {"is_active": False})),
            ("demotion", token_for(ctx, demoted), lambda: patch(demoted.id, {"role": "reader"})),
            ("password change", token_for(ctx, renamed), change_password),
            ("logout-all", token_for(ctx, leaving), logout_all),
            ("API token revocation", api_token, revoke),
        ]
        for name, token, change in cases:
            client = await open_client(live, f"case-{cases.index((name, token, change))}", token)
            async with client:
                await subscribe(client, "books")
                assert await closed_after(client, change, name) == 4401, name
    assert ctx.credentials.revoked >= len(cases)


async def _api_token(ctx: AppContext) -> tuple[int, str]:
    async with ctx.database.sessionmaker() as session:
        row, token = await ctx.api_tokens.create(session, name="job", roles=["librarian"], issuer=None)
    return row.id, token


@live_app
async def test_a_revoked_caller_receives_nothing_published_after_the_check(start_live: StartLive) -> None:
    """The check drops every subscription before it closes: an event published right after it never arrives."""
    live, ctx = await start_live(**MANUAL)
    user = await create_user(ctx, Role.READER)
    async with await open_client(live, "revoked", token_for(ctx, user)) as client:
        await broadcast(ctx, "before")
        assert (await receive(client))["data"]["message"] == "before"
        async with ctx.database.sessionmaker() as session:
            await ctx.users.end_all_sessions(session, user.id)
        await ctx.credentials.sweep()
        await broadcast(ctx, "after")
        code, reason = await closed_with(client)
    assert (code, reason) == (4401, "The access token has been revoked.")


# ----- permissions lost: subscriptions dropped -----


@live_app
async def test_renewing_with_fewer_permissions_drops_bookings_and_leaks_nothing(start_live: StartLive) -> None:
    live, ctx = await start_live(**MANUAL)
    librarian = await create_user(ctx, Role.LIBRARIAN)
    other = await create_user(ctx, Role.READER)
    book = await create_book(ctx, copies=5)
    async with await open_client(live, "demoted", token_for(ctx, librarian)) as client:
        assert (await subscribe(client, "bookings"))["type"] == "subscribed"
        assert (await subscribe(client, "bookings:me"))["type"] == "subscribed"
        async with ctx.database.sessionmaker() as session:
            demoted = await ctx.users.update_by_admin(session, None, librarian.id, _role("reader"))
        await send(client, {"type": "auth", "token": token_for(ctx, demoted)})
        dropped = await receive_until(client, lambda m: m["type"] == "unsubscribed")
        assert dropped["data"]["topic"] == "bookings"
        assert "bookings:read:any" in dropped["data"]["reason"]
        renewed = await receive_until(client, lambda m: m["type"] == "authenticated")
        assert renewed["data"]["roles"] == ["reader"]
        start = datetime.now(UTC) + timedelta(hours=1)
        async with httpx.AsyncClient(base_url=live.http, timeout=10) as http:
            made = await http.post(
                "/api/v1/bookings",
                json={"book_id": book.id, "start": start.isoformat(), "end": (start + timedelta(days=1)).isoformat()},
                headers=bearer(token_for(ctx, other)),
            )
            assert made.status_code == 201, made.text
            await wait_until(lambda: ctx.hub.stats()["messages_published"] >= 2, within=10, what="the event")
        await broadcast(ctx, "sentinel")
        seen = []
        while not seen or seen[-1]["type"] != "broadcast":
            seen.append(await receive(client))
    assert [m for m in seen if m["topic"] == "bookings"] == []
    assert ctx.credentials.dropped == 1


def _role(role: str) -> UserAdminUpdate:
    return UserAdminUpdate(role=role)


@live_app
async def test_losing_events_subscribe_closes_with_4403(start_live: StartLive) -> None:
    live, ctx = await start_live(**MANUAL)
    user = await create_user(ctx, Role.READER)
    async with await open_client(live, "no-events", token_for(ctx, user)) as client:
        [connection] = ctx.hub.connections()
        subject = connection.principal.subject
        nothing = Principal(subject, CredentialKind.ACCESS_TOKEN, frozenset(), frozenset(), user.id)
        ctx.credentials.apply(connection, nothing)
        assert (await closed_with(client))[0] == 4403


# ----- access tokens expire on the socket; renewal in band -----


def guard_clock(guard: CredentialGuard, at: float) -> None:
    guard.clock = lambda: at


@live_app
async def test_an_access_token_not_renewed_is_told_and_then_closed(start_live: StartLive) -> None:
    live, ctx = await start_live(**MANUAL, ws_auth_renew_notice=60, ws_auth_grace=5)
    user = await create_user(ctx, Role.READER)
    async with await open_client(live, "expiring", token_for(ctx, user)) as client:
        [connection] = ctx.hub.connections()
        assert connection.credential is not None
        exp = connection.credential.credential.expires_at
        assert exp is not None
        guard_clock(ctx.credentials, exp - 30)
        await ctx.credentials.sweep()
        notice = await receive(client)
        assert notice["type"] == "auth_expiring"
        assert notice["data"] == {"exp": int(exp), "seconds_left": 30, "grace": 5}
        await ctx.credentials.sweep()  # told once
        guard_clock(ctx.credentials, exp + 4)
        await ctx.credentials.sweep()  # within the grace
        await send(client, {"type": "ping"})
        assert (await receive(client))["type"] == "pong"
        guard_clock(ctx.credentials, exp + 5)
        await ctx.credentials.sweep()
        assert await closed_with(client) == (4401, "the credential expired; reconnect with a fresh one")
    assert ctx.credentials.expired == 1


@live_app
async def test_a_renewed_token_keeps_the_connection_and_every_position(start_live: StartLive) -> None:
    live, ctx = await start_live(**MANUAL)
    user = await create_user(ctx, Role.READER)
    longer = TokenService(ctx.settings.model_copy(update={"access_token_expire_minutes": 90}))
    async with await open_client(live, "renewing", token_for(ctx, user)) as client:
        await subscribe(client, "books")
        await create_book(ctx)
        first = await receive_until(client, lambda m: m["topic"] == "books")
        [connection] = ctx.hub.connections()
        assert connection.credential is not None
        exp = connection.credential.credential.expires_at
        assert exp is not None
        guard_clock(ctx.credentials, exp - 10)
        await ctx.credentials.sweep()
        assert (await receive(client))["type"] == "auth_expiring"
        fresh = longer.issue_access(user_id=user.id, role=user.role, token_version=user.token_version)
        await send(client, {"type": "auth", "token": fresh.token})
        renewed = await receive(client)
        assert renewed["type"] == "authenticated"
        assert renewed["data"]["exp"] > exp
        guard_clock(ctx.credentials, exp + 60)
        await ctx.credentials.sweep()
        await create_book(ctx)
        second = await receive_until(client, lambda m: m["topic"] == "books")
        assert (second["epoch"], second["id"]) == (first["epoch"], first["id"] + 1)


@live_app
async def test_renewal_with_another_callers_or_a_bad_token_is_refused(start_live: StartLive) -> None:
    live, ctx = await start_live(**MANUAL)
    user, stranger = await create_user(ctx, Role.READER), await create_user(ctx, Role.READER)
    async with await open_client(live, "kept", token_for(ctx, user)) as client:
        await send(client, {"type": "auth", "token": token_for(ctx, stranger)})
        refused = await receive(client)
        assert refused["type"] == "error"
        assert "another caller" in refused["data"]["message"]
        await send(client, {"type": "auth", "token": "not-a-token"})
        assert (await receive(client))["data"]["request"] == "auth"
        [connection] = ctx.hub.connections()
        assert connection.principal.subject == f"user:{user.id}"


@live_app
async def test_welcome_names_the_expiry_and_first_message_tokens_are_followed(start_live: StartLive) -> None:
    live, ctx = await start_live(**MANUAL)
    user = await create_user(ctx, Role.READER)
    token = token_for(ctx, user)
    async with connect(live.ws("first")) as client:
        await send(client, {"type": "auth", "token": token})
        welcome = await receive(client)
        assert welcome["data"]["exp"] == ctx.tokens.verify_access(token).expires_at
        [connection] = ctx.hub.connections()
        assert connection.credential is not None
        assert connection.credential.credential.secret == token


@live_app
async def test_connections_opened_with_one_token_share_its_credential_and_each_is_told_once(
    start_live: StartLive,
) -> None:
    live, ctx = await start_live(**MANUAL, ws_auth_renew_notice=60)
    user = await create_user(ctx, Role.READER)
    token, other = token_for(ctx, user), token_for(ctx, user)
    assert token != other
    async with (
        await open_client(live, "one", token) as one,
        await open_client(live, "two", token) as two,
        await open_client(live, "three", other) as three,
    ):
        held = {connection.client_id: connection.credential for connection in ctx.hub.connections()}
        first, second, third = held["one"], held["two"], held["three"]
        assert first is not None and second is not None and third is not None
        assert first is not second  # what was told is per connection
        assert first.credential is second.credential  # what was proved is shared
        assert third.credential != first.credential
        exp = first.credential.expires_at
        assert exp is not None
        guard_clock(ctx.credentials, exp - 30)
        await ctx.credentials.sweep()
        await ctx.credentials.sweep()
        await broadcast(ctx, "sentinel")
        for client in (one, two, three):
            assert (await receive(client))["type"] == "auth_expiring"
            assert (await receive(client))["data"]["message"] == "sentinel"  # told once, nothing else
        guard_clock(ctx.credentials, exp + ctx.settings.ws_auth_grace)
        await ctx.credentials.sweep()
        for client in (one, two, three):
            assert (await closed_with(client))[0] == 4401
    assert ctx.credentials.expired == 3


@live_app
async def test_a_check_of_many_callers_reads_their_accounts_in_one_statement_and_acts_on_what_it_read(
    start_live: StartLive,
) -> None:
    live, ctx = await start_live(**MANUAL)
    users = [await create_user(ctx, Role.READER) for _ in range(12)]
    clients = [await open_client(live, f"caller-{n}", token_for(ctx, user)) for n, user in enumerate(users)]
    deactivated = users[3]
    async with ctx.database.sessionmaker() as session:  # behind the service's back: only a fresh read can see it
        await session.execute(update(User).where(User.id == deactivated.id).values(is_active=False))
        await session.commit()
    for user in users:
        ctx.accounts.forget(user.id)  # every cached state expired, as it does every PRINCIPAL_CACHE_TTL
    account_reads: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if "FROM users" in statement:
            account_reads.append(statement)

    event.listen(ctx.database.engine.sync_engine, "before_cursor_execute", record)
    try:
        await ctx.credentials.sweep()
    finally:
        event.remove(ctx.database.engine.sync_engine, "before_cursor_execute", record)
    assert len(account_reads) == 1, account_reads  # one per account before: twelve, one after another
    assert (await closed_with(clients[3]))[0] == 4401
    await broadcast(ctx, "sentinel")
    for n, client in enumerate(clients):
        if n != 3:
            assert (await receive(client))["data"]["message"] == "sentinel"
            await client.close()


def test_a_credential_hashes_and_compares_by_what_it_holds() -> None:
    token = Credential(CredentialKind.ACCESS_TOKEN, "secret", 100.0)
    same = Credential(CredentialKind.ACCESS_TOKEN, "secret", 100.0)
    assert same == token
    assert hash(same) == hash(token)
    assert {token: "found"}[same] == "found"
    for different in (
        Credential(CredentialKind.API_TOKEN, "secret", 100.0),
        Credential(CredentialKind.ACCESS_TOKEN, "other", 100.0),
        Credential(CredentialKind.ACCESS_TOKEN, "secret", 101.0),
    ):
        assert different != token
        assert different not in {token}
    assert "_hash" not in repr(token)


# ----- client certificates -----


@live_app
async def test_a_certificate_connection_ends_when_the_certificate_expires(start_live: StartLive, pki: PKI) -> None:
    live, ctx = await start_live(**MANUAL, forwarded_cert_proxies=["127.0.0.1"], tls_ca_file=pki.ca)
    async with connect(live.ws("certified"), additional_headers=pki.forwarded("librarian")) as client:
        assert (await receive(client))["type"] == "welcome"
        not_after = certificate_expiry(pki.cert("librarian").read_text())
        assert not_after is not None
        await ctx.credentials.sweep()
        await send(client, {"type": "ping"})
        assert (await receive(client))["type"] == "pong"
        guard_clock(ctx.credentials, not_after)
        await ctx.credentials.sweep()
        assert (await closed_with(client))[0] == 4401


@live_app
async def test_a_certificate_connection_ends_when_a_crl_reload_revokes_it(start_live: StartLive, pki: PKI) -> None:
    live, ctx = await start_live(
        **MANUAL, forwarded_cert_proxies=["127.0.0.1"], tls_ca_file=pki.ca, tls_crl_file=pki.crl
    )
    async with (
        connect(live.ws("revoked-live"), additional_headers=pki.forwarded("revoked")) as revoked,
        connect(live.ws("still-good"), additional_headers=pki.forwarded("reader")) as good,
    ):
        assert (await receive(revoked))["type"] == "welcome"
        assert (await receive(good))["type"] == "welcome"
        await ctx.credentials.sweep()
        await send(revoked, {"type": "ping"})
        assert (await receive(revoked))["type"] == "pong"
        pki.revoke("revoked")  # a new CRL file, as an operator would publish it
        started = time.monotonic()
        await ctx.credentials.sweep()
        code, reason = await closed_with(revoked)
        print(f"CRL reload: closed {code} {time.monotonic() - started:.3f} s after the sweep")
        assert (code, reason) == (4401, "The client certificate has been revoked.")
        await send(good, {"type": "ping"})
        assert (await receive(good))["type"] == "pong"
        pki.revoke()  # the empty list again, so that other tests of the module see the certificate valid


# ----- pieces -----


def test_presented_token_reads_the_header_the_api_key_and_the_subprotocol() -> None:
    assert presented_token({"headers": [(b"authorization", b"Bearer abc")]}) == "abc"
    assert presented_token({"headers": [(b"x-api-key", b" lib_x ")]}) == "lib_x"
    assert presented_token({"headers": [], "subprotocols": ["library-api.v1", "bearer.tok"]}) == "tok"
    assert presented_token({"headers": [(b"authorization", b"Basic abc")]}) is None
    assert certificate_expiry("not a certificate") is None
    assert not Credential(CredentialKind.API_TOKEN, "lib_x").renewable


# ----- the Python client renews by itself -----


@live_app
async def test_the_python_client_renews_through_the_refresh_token_and_keeps_its_positions(
    start_live: StartLive,
) -> None:
    live, ctx = await start_live(**MANUAL)
    user = await create_user(ctx, Role.READER)
    session = await login_session(live.http, user.email, PASSWORD)
    first_token = session.access_token
    client = LiveClient(live.http, "renewing-client", first_token, ["books"], renew=session.renew)
    stop = asyncio.Event()
    running = asyncio.create_task(client.run(stop))
    try:
        await wait_until(lambda: client.last_ids["books"] is not None, within=10, what="the subscription")
        await create_book(ctx)
        await wait_until(lambda: client.last_ids["books"] == 1, within=10, what="the first event")
        [connection] = ctx.hub.connections()
        assert connection.credential is not None
        exp = connection.credential.credential.expires_at
        assert exp is not None
        guard_clock(ctx.credentials, exp - 10)
        await ctx.credentials.sweep()
        await wait_until(
            lambda: connection.credential is not None and connection.credential.credential.secret != first_token,
            within=10,
            what="the renewal",
        )
        assert client.token == session.access_token != first_token
        assert await session.renew(first_token) == session.access_token  # already renewed: no second refresh
        renewed_exp = connection.credential.credential.expires_at
        assert renewed_exp is not None and renewed_exp >= exp
        guard_clock(ctx.credentials, renewed_exp - 1)  # the renewed token counts now (a login's lifetime from now)
        await ctx.credentials.sweep()
        await create_book(ctx)
        await wait_until(lambda: client.last_ids["books"] == 2, within=10, what="the event after the renewal")
        assert client.stats.reconnects == 0
        assert ctx.hub.connections() == [connection]
        session.refresh_token = "not-a-refresh-token"
        assert await session.renew(session.access_token) is None
    finally:
        stop.set()
        await running
