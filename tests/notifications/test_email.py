"""E-mail notifications against a real SMTP server (aiosmtpd on loopback), on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from datetime import timedelta
from email import message_from_bytes
from email.message import Message
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from aiosmtpd.controller import Controller
from fastapi import FastAPI
from sqlalchemy import select, update

from library_api.app import create_app
from library_api.bookings.models import Booking, BookingStatus
from library_api.config import ConfigError, load_settings
from library_api.context import AppContext
from library_api.db.base import utcnow
from library_api.notifications.models import EmailKind, EmailStatus, OutboxEmail
from library_api.security.permissions import Role
from tests.conftest import fast_settings
from tests.support.factories import bearer, create_book, create_user, token_for
from tests.support.live import wait_until
from tests.support.ports import port_of, reserved_socket


@dataclass
class Inbox:
    """An SMTP server's behaviour and what it accepted: the first ``refusals`` deliveries get ``refusal``."""

    refusals: int = 0
    refusal: str = "451 4.3.0 try again later"
    hold: float = 0.0
    messages: list[Message] = field(default_factory=list)
    accepted_at: list[float] = field(default_factory=list)
    attempts: int = 0

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.attempts += 1
        if self.refusals:
            self.refusals -= 1
            return self.refusal
        await asyncio.sleep(self.hold)
        self.messages.append(message_from_bytes(envelope.content))
        self.accepted_at.append(time.monotonic())
        return "250 2.0.0 accepted"


class SocketController(Controller):  # type: ignore[misc]
    """aiosmtpd's threaded controller serving on a socket bound in advance (through its ``_create_server`` hook)."""

    def __init__(self, handler: Inbox, sock: socket.socket) -> None:
        self.sock = sock
        super().__init__(handler, hostname="127.0.0.1", port=sock.getsockname()[1])

    def _create_server(self) -> Any:
        return self.loop.create_server(self._factory_invoker, sock=self.sock, ssl=self.ssl_context)


@dataclass
class SmtpServer:
    """An SMTP server on a port reserved from the start: refused until :meth:`start`, and no one else's meanwhile."""

    inbox: Inbox
    listener: socket.socket = field(default_factory=reserved_socket)
    controller: Controller | None = None

    @property
    def port(self) -> int:
        return port_of(self.listener)

    def start(self) -> None:
        self.listener.listen()
        self.controller = SocketController(self.inbox, self.listener)
        self.controller.start()

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()
            self.controller = None
        self.listener.close()


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    server = SmtpServer(inbox=Inbox())
    server.start()
    yield server
    server.stop()


StartApp = Callable[..., Awaitable[AppContext]]

apps: dict[int, FastAPI] = {}
"""The application behind each context started by ``start_app`` in the running test."""


@pytest_asyncio.fixture
async def start_app(committed_url: str, tmp_path: Path) -> AsyncIterator[StartApp]:
    """Applications (lifespan running, so the notifier's tasks too) on this test's committed database."""
    async with AsyncExitStack() as stack:
        apps.clear()

        async def start(port: int | None, **values: object) -> AppContext:
            mail: dict[str, object] = {}
            if port is not None:
                mail = {
                    "smtp_host": "127.0.0.1",
                    "smtp_port": port,
                    "smtp_security": "none",
                    "email_from": "noreply@library.example.com",
                    "email_poll_interval": 0.2,
                    "email_retry_delay": 0.2,
                }
            mail.update(values)
            app = create_app(fast_settings(database_url=committed_url, upload_dir=tmp_path, **mail))
            await stack.enter_async_context(app.router.lifespan_context(app))
            context: AppContext = app.state.context
            apps[id(context)] = app
            return context

        yield start


def window(days_from_now: float = 1, length_days: float = 2) -> dict[str, str]:
    start = utcnow() + timedelta(days=days_from_now)
    return {"start": start.isoformat(), "end": (start + timedelta(days=length_days)).isoformat()}


async def book_one(ctx: AppContext, token: str, book_id: int) -> tuple[httpx.Response, float]:
    transport = httpx.ASGITransport(app=apps[id(ctx)])
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        response = await http.post("/api/v1/bookings", json={"book_id": book_id, **window()}, headers=bearer(token))
    return response, time.monotonic()


async def outbox(ctx: AppContext) -> list[OutboxEmail]:
    async with ctx.database.sessionmaker() as session:
        return list((await session.execute(select(OutboxEmail).order_by(OutboxEmail.id))).scalars())


async def test_a_booking_is_confirmed_by_mail_after_the_response(smtp: SmtpServer, start_app: StartApp) -> None:
    smtp.inbox.hold = 0.5  # a slow SMTP server: the request must not wait for it
    ctx = await start_app(smtp.port)
    reader = await create_user(ctx, Role.READER)
    book = await create_book(ctx, title="The Left Hand of Darkness")
    response, answered_at = await book_one(ctx, token_for(ctx, reader), book.id)
    assert response.status_code == 201

    await wait_until(lambda: ctx.notifier.sent == 1, within=10, what="the confirmation to be sent")
    assert answered_at < smtp.inbox.accepted_at[0], "the request waited for the mail"
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
    assert (await book_one(ctx, token_for(ctx, reader), book.id))[0].status_code == 201
    await wait_until(lambda: ctx.notifier.sent == 1, within=15, what="delivery after two refusals")
    [row] = await outbox(ctx)
    assert (row.status, row.attempts) == (EmailStatus.SENT, 3)
    assert smtp.inbox.attempts == 3
    assert ctx.notifier.stats() == {"queued": 1, "sent": 1, "retried": 2, "failed": 0}


async def test_a_permanent_refusal_is_not_retried(smtp: SmtpServer, start_app: StartApp) -> None:
    smtp.inbox.refusals = 5
    smtp.inbox.refusal = "550 5.1.1 no such mailbox"
    ctx = await start_app(smtp.port)
    reader = await create_user(ctx, Role.READER)
    book = await create_book(ctx)
    await book_one(ctx, token_for(ctx, reader), book.id)
    await wait_until(lambda: ctx.notifier.failed == 1, within=10, what="the failure to be recorded")
    [row] = await outbox(ctx)
    assert (row.status, row.attempts) == (EmailStatus.FAILED, 1)
    assert "550" in (row.last_error or "")
    await asyncio.sleep(0.6)  # three poll intervals: a retry would have happened by now
    assert smtp.inbox.attempts == 1


async def test_mail_waits_for_an_smtp_server_that_is_down(start_app: StartApp) -> None:
    down = SmtpServer(inbox=Inbox())
    ctx = await start_app(down.port)
    reader = await create_user(ctx, Role.READER)
    book = await create_book(ctx)
    response, _ = await book_one(ctx, token_for(ctx, reader), book.id)
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
    await wait_until(lambda: len(smtp.inbox.messages) >= 2, within=10, what="the reminder and a confirmation")
    await asyncio.sleep(0.6)
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
    assert (await book_one(ctx, token_for(ctx, reader), book.id))[0].status_code == 201
    await asyncio.sleep(0.3)
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
