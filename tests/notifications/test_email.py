"""E-mail notifications against a real SMTP server (aiosmtpd on loopback), on SQLite and PostgreSQL.

The server requires STARTTLS, the service's default ``SMTP_SECURITY``, with a certificate from a private CA that
the service trusts through ``SMTP_CA_FILE`` (``test_smtp_security.py`` covers implicit TLS and AUTH).
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from sqlalchemy import update

from library_api.config import ConfigError, load_settings
from library_api.db.base import utcnow
from library_api.holdings.models import Booking, BookingStatus
from library_api.notifications.models import EmailKind, EmailStatus, OutboxEmail
from library_api.security.permissions import Role
from tests.notifications.conftest import StartApp, book_one, outbox
from tests.support.certs import ServerTls
from tests.support.factories import create_book, create_user, token_for
from tests.support.polling import wait_until
from tests.support.smtp import Inbox, SmtpServer


async def test_a_booking_is_confirmed_by_mail_after_the_response(smtp: SmtpServer, start_app: StartApp) -> None:
    smtp.inbox.gate.clear()  # the SMTP server takes no mail until the booking has been answered
    ctx = await start_app(smtp.port)
    reader = await create_user(ctx, Role.READER)
    book = await create_book(ctx, title="The Left Hand of Darkness")
    # Were the request to wait for the mail, it could not finish while the server holds every delivery.
    response = await asyncio.wait_for(book_one(ctx, token_for(ctx, reader), book.id), timeout=30)
    assert response.status_code == 201
    assert smtp.inbox.messages == []
    smtp.inbox.gate.set()

    await wait_until(lambda: ctx.notifier.sent == 1, within=10, what="the confirmation to be sent")
    assert smtp.inbox.encrypted == [True]  # over STARTTLS, verified against SMTP_CA_FILE
    mail = smtp.inbox.messages[0]
    assert mail["To"] == reader.email
    assert mail["From"] == "Library System <noreply@library.example.com>"
    assert mail["Subject"] == "Booking confirmed: The Left Hand of Darkness"
    text = mail.get_payload(decode=True).decode()  # type: ignore[union-attr]
    assert f"booking #{response.json()['id']}" in text
    assert reader.full_name in text
    [row] = await outbox(ctx)
    assert (row.kind, row.status, row.attempts) == (EmailKind.BOOKING_CONFIRMATION, EmailStatus.SENT, 1)
    assert ctx.notifier.stats()["sent"] == 1


async def test_transient_refusals_are_retried_until_delivered_once(smtp: SmtpServer, start_app: StartApp) -> None:
    smtp.inbox.refusals = 2
    ctx = await start_app(smtp.port)
    reader = await create_user(ctx, Role.READER)
    book = await create_book(ctx)
    assert (await book_one(ctx, token_for(ctx, reader), book.id)).status_code == 201
    await wait_until(lambda: ctx.notifier.sent == 1, within=15, what="delivery after two refusals")
    [row] = await outbox(ctx)
    assert (row.status, row.attempts) == (EmailStatus.SENT, 3)
    assert smtp.inbox.attempts == 3
    assert ctx.notifier.stats() == {"queued": 1, "sent": 1, "retried": 2, "failed": 0}


async def test_a_permanent_refusal_is_not_retried(smtp: SmtpServer, start_app: StartApp) -> None:
    smtp.inbox.refusals = 1
    smtp.inbox.refusal = "550 5.1.1 no such mailbox"
    # A retry would be due at once: rows are claimed in id order, so one would go out before the sentinel below.
    ctx = await start_app(smtp.port, email_retry_delay=0.000_001)
    reader = await create_user(ctx, Role.READER)
    book = await create_book(ctx, copies=2)
    await book_one(ctx, token_for(ctx, reader), book.id)
    await wait_until(lambda: ctx.notifier.failed == 1, within=10, what="the failure to be recorded")
    [row] = await outbox(ctx)
    assert (row.status, row.attempts) == (EmailStatus.FAILED, 1)
    assert "550" in (row.last_error or "")

    await book_one(ctx, token_for(ctx, reader), book.id)  # the sentinel: a later mail that is accepted
    await wait_until(lambda: ctx.notifier.sent == 1, within=10, what="the sentinel mail to be sent")
    assert smtp.inbox.attempts == 2  # the refused one once, the sentinel once: no retry came before it
    assert [(r.status, r.attempts) for r in await outbox(ctx)] == [(EmailStatus.FAILED, 1), (EmailStatus.SENT, 1)]


async def test_mail_waits_for_an_smtp_server_that_is_down(start_app: StartApp, tls: ServerTls) -> None:
    down = SmtpServer(inbox=Inbox(), starttls=tls.server_context)
    ctx = await start_app(down.port)
    reader = await create_user(ctx, Role.READER)
    book = await create_book(ctx)
    response = await book_one(ctx, token_for(ctx, reader), book.id)
    assert response.status_code == 201
    await wait_until(lambda: ctx.notifier.retried >= 1, within=10, what="a failed attempt")
    [row] = await outbox(ctx)
    assert row.status == EmailStatus.PENDING
    assert row.last_error
    down.start()
    try:
        await wait_until(lambda: len(down.inbox.messages) == 1, within=15, what="delivery once the server is up")
    finally:
        down.stop()


async def test_one_reminder_before_a_booking_ends_whatever_the_number_of_workers(
    smtp: SmtpServer, start_app: StartApp
) -> None:
    workers = [await start_app(smtp.port, booking_reminder_hours=24) for _ in range(2)]
    ctx = workers[0]
    reader = await create_user(ctx, Role.READER)
    book = await create_book(ctx, copies=3)
    now = utcnow()
    async with ctx.database.sessionmaker() as session:
        long_ago = now - timedelta(days=3)
        due = Booking(
            book_id=book.id, user_id=reader.id, start_at=now - timedelta(days=2), end_at=now + timedelta(hours=6)
        )
        later = Booking(book_id=book.id, user_id=reader.id, start_at=now, end_at=now + timedelta(days=5))
        short = Booking(book_id=book.id, user_id=reader.id, start_at=now, end_at=now + timedelta(hours=3))
        for booking in (due, later, short):
            booking.status = BookingStatus.ACTIVE
            session.add(booking)
        await session.commit()
        await session.execute(update(Booking).where(Booking.id.in_([due.id, later.id])).values(created_at=long_ago))
        await session.commit()
    await asyncio.gather(*(worker.notifier.scan() for worker in workers))
    await asyncio.gather(*(worker.notifier.scan() for worker in workers))
    settled: list[OutboxEmail] = []

    async def every_row_sent() -> bool:
        settled[:] = await outbox(ctx)
        return bool(settled) and all(row.status == EmailStatus.SENT for row in settled)

    await wait_until(every_row_sent, within=10, what="every queued mail to be sent")
    # Each row is claimed by one worker and marked sent after the server took it: the inbox holds each once.
    await wait_until(lambda: len(smtp.inbox.messages) == len(settled), within=10, what="one message per row")
    subjects = sorted(str(message["Subject"]) for message in smtp.inbox.messages)
    reminders = [subject for subject in subjects if subject.startswith("Reminder:")]
    assert len(reminders) == 1, subjects
    rows = await outbox(ctx)
    assert {(row.kind, row.booking_id) for row in rows if row.kind == EmailKind.BOOKING_REMINDER} == {
        (EmailKind.BOOKING_REMINDER, due.id)
    }
    # the short booking was created inside its own reminder window: its confirmation says enough
    assert (EmailKind.BOOKING_CONFIRMATION, short.id) in {(row.kind, row.booking_id) for row in rows}


async def test_off_without_smtp_host(start_app: StartApp) -> None:
    ctx = await start_app(None)
    assert not ctx.notifier.enabled
    reader = await create_user(ctx, Role.READER)
    book = await create_book(ctx)
    assert (await book_one(ctx, token_for(ctx, reader), book.id)).status_code == 201
    # Nothing could write or send a mail later: no e-mail task runs, and the booking was not even noted.
    assert not [task.get_name() for task in asyncio.all_tasks() if task.get_name().startswith("email-")]
    assert ctx.notifier.stats() == {"queued": 0, "sent": 0, "retried": 0, "failed": 0}
    assert await outbox(ctx) == []


@pytest.mark.parametrize(
    ("env", "problem"),
    [
        ({"SMTP_HOST": "mail.example.com"}, "EMAIL_FROM: SMTP_HOST is set"),
        ({"SMTP_HOST": "mail.example.com", "EMAIL_FROM": "not an address"}, "EMAIL_FROM"),
        (
            {"SMTP_HOST": "mail.example.com", "EMAIL_FROM": "a@example.com", "SMTP_USER": "u"},
            "SMTP_USER/SMTP_PASSWORD",
        ),
        (
            {"SMTP_HOST": "mail.example.com", "EMAIL_FROM": "a@example.com", "EMAIL_FROM_NAME": "a\nBcc: x"},
            "EMAIL_FROM_NAME",
        ),
    ],
)
def test_mail_settings_are_checked_before_start(env: dict[str, str], problem: str) -> None:
    with pytest.raises(ConfigError) as error:
        load_settings(env=env, env_file=None)
    assert any(line.startswith(problem) for line in error.value.problems), error.value.problems
