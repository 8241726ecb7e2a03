"""E-mail that ends delivered: long SMTP outages, a sender that dies in QUIT, and failed mails requeued.

A real SMTP server (aiosmtpd on loopback, ``tests.support.smtp``) and a real database (SQLite and
PostgreSQL). Each test drives a notifier of its own with an injected clock: an outage of hours is the clock
moved from one scheduled attempt to the next, never waited for. The service's own sender stays off
(``start_app(None)``) so that nothing but the test claims the rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import pytest
from aiosmtpd.smtp import AuthResult, LoginPassword

from library_api.db.base import utcnow
from library_api.dependencies.context import AppContext
from library_api.holdings.models import Booking
from library_api.notifications.mailer import message_id_for
from library_api.notifications.models import EmailKind, EmailStatus
from library_api.notifications.service import LEASE, Notifier
from library_api.security.permissions import Role
from tests.conftest import fast_settings
from tests.notifications.conftest import StartApp, book_one, outbox
from tests.support.cli import invoke
from tests.support.factories import create_book, create_user, token_for
from tests.support.polling import wait_until
from tests.support.ports import port_of, refused_port, reserved_socket
from tests.support.smtp import Inbox, SmtpServer, SocketController

DOMAIN = "library.example.com"


class Clock:
    """Aware UTC time that moves only when told to."""

    def __init__(self) -> None:
        self.now = utcnow()

    def __call__(self) -> datetime:
        return self.now

    def advance_to(self, moment: datetime) -> None:
        self.now = max(self.now, moment)


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    """This module's SMTP server: plain SMTP, started for the test and stopped after it."""
    server = SmtpServer(inbox=Inbox())
    server.start()
    yield server
    server.stop()


def sender(port: int, clock: Clock, ctx: AppContext, **values: object) -> Notifier:
    """A notifier on the test's database, sending to ``port`` with ``clock``."""
    settings: dict[str, object] = {
        "smtp_host": "127.0.0.1",
        "smtp_port": port,
        "smtp_security": "none",
        "email_from": f"noreply@{DOMAIN}",
        "email_retry_delay": 30,
        "smtp_timeout": 10,
    }
    settings.update(values)
    return Notifier(fast_settings(**settings), ctx.database, clock=clock)


async def one_queued_mail(ctx: AppContext, notifier: Notifier) -> int:
    """Book a copy (with the service's own mail off) and queue its confirmation on ``notifier``."""
    reader = await create_user(ctx, Role.READER)
    book = await create_book(ctx)
    response = await book_one(ctx, token_for(ctx, reader), book.id)
    assert response.status_code == 201, response.text
    assert await notifier.enqueue(EmailKind.BOOKING_CONFIRMATION, Booking.id == response.json()["id"]) == 1
    return max(row.id for row in await outbox(ctx))


async def test_an_outage_far_beyond_the_attempt_budget_ends_delivered_once(start_app: StartApp) -> None:
    ctx = await start_app(None)
    clock = Clock()
    server = SmtpServer(inbox=Inbox())  # not started: connections are refused
    notifier = sender(server.port, clock, ctx, email_max_attempts=2)
    email_id = await one_queued_mail(ctx, notifier)
    started = clock.now
    for _ in range(10):  # five times EMAIL_MAX_ATTEMPTS, hours of outage
        assert await notifier.deliver_due() == 1
        [row] = await outbox(ctx)
        assert row.status == EmailStatus.PENDING, row.last_error
        assert "ConnectionRefused" in (row.last_error or "") or "connect" in (row.last_error or "").lower()
        clock.advance_to(row.next_attempt_at)
    assert clock.now - started > timedelta(hours=2)
    assert row.message_id == message_id_for(email_id, DOMAIN)  # set at the first attempt, kept since

    server.start()
    try:
        assert await notifier.deliver_due() == 1
    finally:
        server.stop()
    [row] = await outbox(ctx)
    assert (row.status, row.attempts, row.refusals) == (EmailStatus.SENT, 11, 0)
    [message] = server.inbox.messages
    assert message["Message-ID"] == row.message_id
    assert notifier.stats() == {"queued": 1, "sent": 1, "retried": 10, "failed": 0}


async def test_temporary_refusals_still_count_and_the_age_limit_ends_an_outage(
    smtp: SmtpServer, start_app: StartApp
) -> None:
    ctx = await start_app(None)
    clock = Clock()
    smtp.inbox.refusals = 5
    notifier = sender(smtp.port, clock, ctx, email_max_attempts=2)
    await one_queued_mail(ctx, notifier)
    for _ in range(2):
        assert await notifier.deliver_due() == 1
        [row] = await outbox(ctx)
        clock.advance_to(row.next_attempt_at)
    assert (row.status, row.refusals) == (EmailStatus.FAILED, 2)
    assert "451" in (row.last_error or "")

    down = sender(refused_port(), clock, ctx, email_max_age_hours=1)
    await one_queued_mail(ctx, down)
    clock.advance_to(clock.now + timedelta(hours=1))
    assert await down.deliver_due() == 1
    failed = [row for row in await outbox(ctx) if row.status == EmailStatus.FAILED]
    assert len(failed) == 2
    assert down.stats()["failed"] == 1


@dataclass
class QuitHangs(Inbox):
    """An SMTP server that accepts the data and then does not answer QUIT (until released, at most 30 s)."""

    in_quit: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)

    async def handle_QUIT(self, server: Any, session: Any, envelope: Any) -> str:
        self.in_quit.set()
        await asyncio.get_running_loop().run_in_executor(None, self.release.wait, 30)
        return "221 Bye"


async def test_a_sender_that_dies_in_quit_after_the_data_was_accepted_sends_nothing_twice(
    start_app: StartApp,
) -> None:
    ctx = await start_app(None)
    clock = Clock()
    inbox = QuitHangs()
    server = SmtpServer(inbox=inbox)
    server.start()
    try:
        notifier = sender(server.port, clock, ctx, smtp_timeout=30)
        email_id = await one_queued_mail(ctx, notifier)
        delivery = asyncio.create_task(notifier.deliver_due())
        await wait_until(inbox.in_quit.is_set, within=10, what="the sender to wait in QUIT")
        [row] = await outbox(ctx)
        assert row.status == EmailStatus.SENT  # committed on the 250 after DATA, before QUIT
        delivery.cancel()  # the sender dies while QUIT is unanswered
        with contextlib.suppress(asyncio.CancelledError):
            await delivery

        restarted = sender(server.port, clock, ctx)
        clock.advance_to(clock.now + LEASE + timedelta(minutes=1))  # the lease of the dead sender is over
        assert await restarted.deliver_due() == 0
    finally:
        inbox.release.set()
        server.stop()
    [message] = inbox.messages
    assert message["Message-ID"] == message_id_for(email_id, DOMAIN)


async def test_failed_mails_are_listed_and_requeued_from_the_command_line(
    smtp: SmtpServer, start_app: StartApp, committed_url: str
) -> None:
    ctx = await start_app(None)
    clock = Clock()
    down = sender(refused_port(), clock, ctx, email_max_age_hours=1)
    first = await one_queued_mail(ctx, down)
    second_booking_mail = await one_queued_mail(ctx, down)
    clock.advance_to(clock.now + timedelta(hours=2))
    assert await down.deliver_due() == 2
    env = {"DATABASE_URL": committed_url}

    listed = invoke(["mail", "list", "--failed", "--json"], env)
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert sorted(row["id"] for row in rows) == [first, second_booking_mail]
    assert all(row["status"] == "failed" and row["message_id"] for row in rows)
    table = invoke(["mail", "list"], env)
    assert table.returncode == 0
    assert "failed" in table.stdout and "EMAIL_MAX_AGE" not in table.stdout
    assert invoke(["mail", "list", "--pending", "--json"], env).stdout.strip() == "[]"

    one = invoke(["mail", "requeue", str(first)], env)
    assert (one.returncode, one.stdout.strip()) == (0, f"requeued 1 mail(s): {first}")
    again = invoke(["mail", "requeue", str(first), "999999"], env)
    assert again.returncode == 1
    assert f"mail {first}: not failed (pending)" in again.stderr
    assert "mail 999999: no such mail" in again.stderr
    assert invoke(["mail", "requeue"], env).returncode == 2
    assert invoke(["mail", "list", "--failed", "--pending"], env).returncode == 2
    everything = invoke(["mail", "requeue", "--all-failed"], env)
    assert everything.stdout.strip() == f"requeued 1 mail(s): {second_booking_mail}"

    up = sender(smtp.port, clock, ctx, email_max_age_hours=1)
    assert await up.deliver_due() == 2  # the age limit counts from the requeue
    assert {row.status for row in await outbox(ctx)} == {EmailStatus.SENT}
    assert len(smtp.inbox.messages) == 2


@dataclass
class Picky(Inbox):
    """Refuses some recipients at RCPT: ``refuse`` maps an address to the reply."""

    refuse: dict[str, str] = field(default_factory=dict)

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:
        if address in self.refuse:
            return self.refuse[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"


def login_as(user: str, password: str) -> Any:
    def authenticate(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
        ok = isinstance(data, LoginPassword) and (data.login, data.password) == (user.encode(), password.encode())
        return AuthResult(success=ok)

    return authenticate


async def test_login_then_send(start_app: StartApp) -> None:
    ctx = await start_app(None)
    inbox = Inbox()
    sock = reserved_socket()
    port = port_of(sock)
    controller = SocketController(inbox, sock, auth_require_tls=False, authenticator=login_as("mailer", "s3cret"))
    controller.start()
    try:
        notifier = sender(port, Clock(), ctx, smtp_user="mailer", smtp_password="s3cret")
        await one_queued_mail(ctx, notifier)
        assert await notifier.deliver_due() == 1
    finally:
        controller.stop()
    [row] = await outbox(ctx)
    assert row.status == EmailStatus.SENT
    assert len(inbox.messages) == 1


@pytest.mark.parametrize(
    ("reply", "status"), [("550 5.1.1 unknown", EmailStatus.FAILED), ("450 4.2.1 busy", EmailStatus.PENDING)]
)
async def test_a_refused_recipient(start_app: StartApp, reply: str, status: EmailStatus) -> None:
    ctx = await start_app(None)
    inbox = Picky()
    server = SmtpServer(inbox=inbox)
    server.start()
    try:
        notifier = sender(server.port, Clock(), ctx)
        email_id = await one_queued_mail(ctx, notifier)
        [row] = await outbox(ctx)
        inbox.refuse[row.recipient] = reply
        assert await notifier.deliver_due() == 1
    finally:
        server.stop()
    [row] = await outbox(ctx)
    assert (row.id, row.status) == (email_id, status)
    assert "recipient refused" in (row.last_error or "")
