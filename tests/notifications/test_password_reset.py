"""Forgotten passwords, end to end: the link mailed through the outbox to a real SMTP server, then spent.

Every test runs on SQLite and PostgreSQL. The mail is read from the SMTP server's inbox (STARTTLS, as in
``test_email``); expiry is reached by moving the service's injectable clock, never by waiting.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import uuid
from datetime import timedelta
from email.message import Message
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select, update

from library_api.app import create_app
from library_api.auth.models import PasswordReset
from library_api.db.base import utcnow
from library_api.dependencies.context import AppContext
from library_api.notifications.models import EmailKind, EmailStatus, OutboxEmail
from library_api.security.permissions import Role
from library_api.server.uvicorn import TLSWebSocketsProtocol
from library_api.users.models import User
from tests.conftest import fast_settings
from tests.notifications.conftest import StartApp, apps
from tests.support.certs import ServerTls
from tests.support.factories import PASSWORD, bearer, create_user, token_for, unique_email
from tests.support.http import client_for
from tests.support.live import closed_with, open_client, serve_in_loop, subscribe
from tests.support.polling import wait_until
from tests.support.services import REDIS_URL, require_redis
from tests.support.smtp import SmtpServer

RESET_URL = "https://library.example.com/reset-password"
NEW_PASSWORD = "a-brand-new-passphrase-42"
REQUEST = "/api/v1/auth/password-reset"
CONFIRM = "/api/v1/auth/password-reset/confirm"


async def start(start_app: StartApp, smtp: SmtpServer, **values: object) -> tuple[AppContext, FastAPI]:
    ctx = await start_app(smtp.port, password_reset_url=RESET_URL, **values)
    return ctx, apps[id(ctx)]


def body_of(mail: Message) -> str:
    payload = mail.get_payload(decode=True)
    assert isinstance(payload, bytes)
    return payload.decode()


def token_in(mail: Message) -> str:
    found = re.search(re.escape(RESET_URL) + r"#token=([A-Za-z0-9_-]+)", body_of(mail))
    assert found is not None, body_of(mail)
    return found.group(1)


async def mail_to(smtp: SmtpServer, address: str, count: int = 1) -> Message:
    """The ``count``-th mail the SMTP server accepted for ``address``, once it has arrived."""

    def received() -> list[Message]:
        return [mail for mail in smtp.inbox.messages if mail["To"] == address]

    await wait_until(lambda: len(received()) >= count, within=15, what=f"mail number {count} to {address}")
    return received()[count - 1]


async def ask(http: httpx.AsyncClient, email: str) -> httpx.Response:
    return await http.post(REQUEST, json={"email": email})


async def login(http: httpx.AsyncClient, email: str, password: str) -> httpx.Response:
    return await http.post("/api/v1/auth/login", data={"username": email, "password": password})


async def test_a_forgotten_password_is_reset_through_the_mailed_link(smtp: SmtpServer, start_app: StartApp) -> None:
    ctx, app = await start(start_app, smtp)
    user = await create_user(ctx, Role.READER)
    async with client_for(app) as http:
        signed_in = (await login(http, user.email, PASSWORD)).json()
        asked = await ask(http, user.email)
        assert asked.status_code == 202, asked.text
        assert asked.json()["expires_in"] == 30 * 60

        mail = await mail_to(smtp, user.email)
        token = token_in(mail)
        assert mail["Subject"] == "Reset your library password"
        await wait_until(lambda: ctx.notifier.sent == 1, within=10, what="the mail to be recorded as sent")
        async with ctx.database.sessionmaker() as session:
            row = (await session.execute(select(OutboxEmail))).scalar_one()
            reset = (await session.execute(select(PasswordReset))).scalar_one()
        assert (row.kind, row.status, row.booking_id) == (EmailKind.PASSWORD_RESET, EmailStatus.SENT, None)
        assert mail["Message-ID"] == row.message_id == f"<library-api.outbox.{row.id}@library.example.com>"
        assert token not in row.body and "#token=(removed-from-the-outbox-once-sent)" in row.body
        assert reset.token_hash == hashlib.sha256(token.encode()).hexdigest() != token

        confirmed = await http.post(CONFIRM, json={"token": token, "password": NEW_PASSWORD})
        assert confirmed.status_code == 204, confirmed.text

        assert (await http.get("/api/v1/auth/me", headers=bearer(signed_in["access_token"]))).status_code == 401
        refreshed = await http.post("/api/v1/auth/refresh", json={"refresh_token": signed_in["refresh_token"]})
        assert refreshed.status_code == 401
        assert (await login(http, user.email, PASSWORD)).status_code == 401
        assert (await login(http, user.email, NEW_PASSWORD)).status_code == 200

        again = await http.post(CONFIRM, json={"token": token, "password": "yet-another-passphrase"})
        assert again.status_code == 410
        assert again.json()["type"] == "urn:library-api:problem:reset-token-used"
        assert "used already" in again.json()["detail"]
    assert (await login(client_for(app), user.email, NEW_PASSWORD)).status_code == 200


async def test_known_and_unknown_addresses_get_the_same_answer(smtp: SmtpServer, start_app: StartApp) -> None:
    ctx, app = await start(start_app, smtp, rate_limit_enabled=True)
    known = await create_user(ctx, Role.READER)
    sentinel = await create_user(ctx, Role.READER)
    answers = []
    for peer, address in (("192.0.2.1", known.email), ("192.0.2.2", unique_email("nobody"))):
        async with client_for(app, peer) as http:
            answers.append(await ask(http, address))
    first, second = ({k: v for k, v in a.headers.items() if k != "x-request-id"} for a in answers)
    assert [a.status_code for a in answers] == [202, 202]
    assert answers[0].content == answers[1].content
    assert first == second
    assert "ratelimit" in first  # the route's per-address count, the same for both

    async with client_for(app, "192.0.2.3") as http:
        assert (await ask(http, sentinel.email)).status_code == 202
    await mail_to(smtp, sentinel.email)
    await wait_until(lambda: ctx.password_resets.processed == 3, within=10, what="every request to be handled")
    assert sorted(mail["To"] for mail in smtp.inbox.messages) == sorted([known.email, sentinel.email])


async def test_a_link_expires_and_a_newer_one_replaces_it(smtp: SmtpServer, start_app: StartApp) -> None:
    ctx, app = await start(start_app, smtp)
    user = await create_user(ctx, Role.READER)
    resets = ctx.password_resets
    async with client_for(app) as http:
        assert (await ask(http, user.email.upper())).status_code == 202  # every spelling finds the account
        first = token_in(await mail_to(smtp, user.email))
        assert (await ask(http, user.email)).status_code == 202
        second = token_in(await mail_to(smtp, user.email, 2))

        replaced = await http.post(CONFIRM, json={"token": first, "password": NEW_PASSWORD})
        assert replaced.status_code == 410
        assert replaced.json()["type"] == "urn:library-api:problem:reset-token-revoked"

        resets.clock = lambda: utcnow() + timedelta(minutes=30, seconds=1)
        expired = await http.post(CONFIRM, json={"token": second, "password": NEW_PASSWORD})
        assert expired.status_code == 410
        assert expired.json()["type"] == "urn:library-api:problem:reset-token-expired"
        assert (await login(http, user.email, PASSWORD)).status_code == 200  # nothing changed

        resets.clock = lambda: utcnow() + timedelta(minutes=29)
        assert (await http.post(CONFIRM, json={"token": second, "password": NEW_PASSWORD})).status_code == 204


async def test_bad_tokens_and_weak_passwords_are_refused_without_spending_the_link(
    smtp: SmtpServer, start_app: StartApp
) -> None:
    ctx, app = await start(start_app, smtp, password_min_length=12)
    user = await create_user(ctx, Role.READER)
    async with client_for(app) as http:
        unknown = await http.post(CONFIRM, json={"token": "not-a-token-we-issued", "password": NEW_PASSWORD})
        assert unknown.status_code == 400
        assert unknown.json()["type"] == "urn:library-api:problem:invalid-reset-token"
        assert unknown.headers["content-type"] == "application/problem+json"

        assert (await ask(http, user.email)).status_code == 202
        token = token_in(await mail_to(smtp, user.email))
        weak = await http.post(CONFIRM, json={"token": token, "password": "short-9ch"})
        assert weak.status_code == 422
        assert weak.json()["errors"][0]["field"] == "body.password"
        assert (await http.post(CONFIRM, json={"token": token, "password": NEW_PASSWORD})).status_code == 204


async def test_requests_are_limited_per_address_asked_for_and_per_client(smtp: SmtpServer, start_app: StartApp) -> None:
    ctx, app = await start(start_app, smtp, rate_limit_enabled=True, rate_limit_password_reset_account="2/hour")
    known = await create_user(ctx, Role.READER)
    refusals = []
    for address in (known.email, unique_email("nobody")):
        statuses = []
        for peer in ("198.51.100.1", "198.51.100.2", "198.51.100.3"):
            async with client_for(app, peer) as http:
                answer = await ask(http, address)
            statuses.append(answer.status_code)
        assert statuses == [202, 202, 429], address
        refusals.append(answer)
    known_refusal, unknown_refusal = refusals
    assert known_refusal.json() | {"instance": None} == unknown_refusal.json() | {"instance": None}
    assert known_refusal.headers["retry-after"] == unknown_refusal.headers["retry-after"]
    assert '"password-reset-account";q=2;w=3600' in known_refusal.headers["ratelimit-policy"]

    async with client_for(app, "198.51.100.9") as http:
        statuses = [(await ask(http, unique_email("spray"))).status_code for _ in range(6)]
        confirms = [
            (await http.post(CONFIRM, json={"token": f"guess-{n}", "password": NEW_PASSWORD})).status_code
            for n in range(11)
        ]
    assert statuses == [202] * 5 + [429]  # the route's own limit per client address: 5 a minute
    assert confirms == [400] * 10 + [429]


async def test_reset_is_unavailable_without_mail(start_app: StartApp) -> None:
    ctx = await start_app(None, password_reset_url=RESET_URL)
    user = await create_user(ctx, Role.READER)
    async with client_for(apps[id(ctx)]) as http:
        answer = await ask(http, user.email)
    assert answer.status_code == 503
    assert answer.json()["type"] == "urn:library-api:problem:password-reset-unavailable"
    async with ctx.database.sessionmaker() as session:
        assert (await session.execute(select(PasswordReset))).first() is None


async def test_a_deactivated_account_gets_no_link_and_cannot_spend_one(smtp: SmtpServer, start_app: StartApp) -> None:
    ctx, app = await start(start_app, smtp)
    leaving = await create_user(ctx, Role.READER)
    staying = await create_user(ctx, Role.READER)
    async with client_for(app) as http:
        assert (await ask(http, leaving.email)).status_code == 202
        token = token_in(await mail_to(smtp, leaving.email))
        # One UPDATE, not a read then a write: on SQLite a read transaction cannot become a write one once the
        # notifier (marking the mail sent) has written meanwhile.
        async with ctx.database.sessionmaker() as session:
            deactivated = await session.execute(update(User).where(User.id == leaving.id).values(is_active=False))
            assert deactivated.rowcount == 1
            await session.commit()
        refused = await http.post(CONFIRM, json={"token": token, "password": NEW_PASSWORD})
        assert refused.status_code == 403
        assert (await ask(http, leaving.email)).status_code == 202
        assert (await ask(http, staying.email)).status_code == 202
        await mail_to(smtp, staying.email)  # the sentinel: handled after the deactivated account's request
    assert [mail["To"] for mail in smtp.inbox.messages] == [leaving.email, staying.email]


@pytest.mark.parametrize("ending", ["logout-all", "password change"])
async def test_ending_the_sessions_ends_unused_links(smtp: SmtpServer, start_app: StartApp, ending: str) -> None:
    ctx, app = await start(start_app, smtp)
    user = await create_user(ctx, Role.READER)
    async with client_for(app) as http:
        assert (await ask(http, user.email)).status_code == 202
        token = token_in(await mail_to(smtp, user.email))
        access = (await login(http, user.email, PASSWORD)).json()["access_token"]
        if ending == "logout-all":
            assert (await http.post("/api/v1/auth/logout-all", headers=bearer(access))).status_code == 204
        else:
            change = {"password": "changed-by-the-owner-1", "current_password": PASSWORD}
            assert (await http.patch("/api/v1/auth/me", json=change, headers=bearer(access))).status_code == 200
        refused = await http.post(CONFIRM, json={"token": token, "password": NEW_PASSWORD})
    assert refused.status_code == 410
    assert refused.json()["type"] == "urn:library-api:problem:reset-token-revoked"


async def test_a_reset_closes_the_accounts_live_socket(
    smtp: SmtpServer, committed_url: str, tmp_path: Path, tls: ServerTls
) -> None:
    settings = fast_settings(
        database_url=committed_url,
        upload_dir=tmp_path,
        broadcast_interval=0,
        ws_credential_check_interval=0.2,
        smtp_host="127.0.0.1",
        smtp_port=smtp.port,
        smtp_ca_file=tls.ca_file,
        email_from="noreply@library.example.com",
        email_poll_interval=0.2,
        password_reset_url=RESET_URL,
    )
    app = create_app(settings)
    async with serve_in_loop(app, ws=TLSWebSocketsProtocol, ws_max_size=settings.ws_max_size) as live:
        ctx: AppContext = app.state.context
        user = await create_user(ctx, Role.READER)
        async with (
            await open_client(live, "forgetful", token_for(ctx, user)) as client,
            httpx.AsyncClient(base_url=live.http, timeout=10) as http,
        ):
            await subscribe(client, "books")
            assert (await ask(http, user.email)).status_code == 202
            token = token_in(await mail_to(smtp, user.email))
            assert (await http.post(CONFIRM, json={"token": token, "password": NEW_PASSWORD})).status_code == 204
            code, reason = await closed_with(client)
    assert (code, reason) == (4401, "The access token has been revoked.")


async def test_two_concurrent_uses_of_one_link_set_one_password(smtp: SmtpServer, start_app: StartApp) -> None:
    ctx, app = await start(start_app, smtp)
    user = await create_user(ctx, Role.READER)
    async with client_for(app) as http:
        assert (await ask(http, user.email)).status_code == 202
        token = token_in(await mail_to(smtp, user.email))
        answers = await asyncio.gather(
            *(http.post(CONFIRM, json={"token": token, "password": f"{NEW_PASSWORD}-{n}"}) for n in range(2))
        )
        statuses = sorted(answer.status_code for answer in answers)
        assert statuses == [204, 410], [answer.text for answer in answers]
        loser = next(answer for answer in answers if answer.status_code == 410)
        assert loser.json()["type"] == "urn:library-api:problem:reset-token-used"
        winner = answers.index(next(answer for answer in answers if answer.status_code == 204))
        assert (await login(http, user.email, f"{NEW_PASSWORD}-{winner}")).status_code == 200
        assert (await login(http, user.email, f"{NEW_PASSWORD}-{1 - winner}")).status_code == 401


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
async def test_the_per_address_count_is_shared_by_workers_through_redis(smtp: SmtpServer, start_app: StartApp) -> None:
    """Two applications on one database and one Redis, as two workers: the third request is refused by either."""
    require_redis()
    shared = {
        "redis_url": REDIS_URL,
        "cache_key_prefix": f"t{uuid.uuid4().hex[:10]}_",
        "rate_limit_enabled": True,
        "rate_limit_password_reset_account": "2/hour",
    }
    first, first_app = await start(start_app, smtp, **shared)
    second, second_app = await start(start_app, smtp, **shared)
    address = unique_email("nobody")
    async with client_for(first_app, "198.51.100.1") as one, client_for(second_app, "198.51.100.2") as two:
        statuses = [(await ask(http, address)).status_code for http in (one, two, one, two)]
    assert statuses == [202, 202, 429, 429]
    assert first is not second
