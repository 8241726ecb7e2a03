"""The notifier: turns booking events into outbox rows and outbox rows into delivered e-mail.

Nothing here runs on a request's path except :meth:`Notifier.on_domain_event`, which puts the booking id on an
in-memory queue and returns. Background tasks then

* write a confirmation row for each new booking (``INSERT ... ON CONFLICT DO NOTHING`` on ``(kind,
  booking_id)``, so several workers or a repeated event can never queue a mail twice);
* every ``EMAIL_POLL_INTERVAL`` seconds queue reminders for active bookings ending within
  ``BOOKING_REMINDER_HOURS``, and catch up confirmations for bookings of the last hour that have none (the
  event of a process that died before writing its row);
* claim due rows (``FOR UPDATE SKIP LOCKED`` on PostgreSQL, the write lock on SQLite) with a lease, send
  them, and record the outcome: sent, retried later with capped exponential backoff, or failed for good.

When a mail is given up: a permanent refusal (5xx) at once; temporary refusals (4xx) after
``EMAIL_MAX_ATTEMPTS`` of them; an SMTP server that cannot be reached (refused, dropped or timed-out
connections) never by count, only when the mail is ``EMAIL_MAX_AGE_HOURS`` old (48) counted from when it was
queued or last requeued. So an outage of hours ends in delivery once the server is back, and failed rows can be
requeued by an operator (``library-api mail requeue``, :mod:`library_api.notifications.outbox`).

The row is marked sent as soon as the SMTP server has accepted the data (its 250 after DATA), before QUIT.
Every attempt carries the row's Message-ID, set once at the first attempt. Delivery is still at least once: a
process that dies between the 250 and that commit (or a database that refuses the commit) sends the mail again
after its lease (5 minutes), and the copy carries the same Message-ID, which recipients' mail systems use to
recognise it. Every time in here comes from an injectable clock (tests move it instead of waiting).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession

from library_api.books.models import Book
from library_api.config import Settings
from library_api.db.base import utcnow
from library_api.db.engine import Database, begin_write
from library_api.events import DomainEvent
from library_api.holdings.models import Booking, BookingStatus
from library_api.lifecycle.loops import Loops
from library_api.notifications.mailer import DeliveryError, Failure, Mailer, message_id_for
from library_api.notifications.messages import redact_reset_token, render
from library_api.notifications.models import EmailKind, EmailStatus, OutboxEmail
from library_api.users.models import User

logger = logging.getLogger("library_api.notifications")

BATCH = 20
"""Rows claimed per round; a full batch makes the sender go again at once."""

LEASE = timedelta(minutes=5)
"""How long a claimed row is left alone by other workers while it is being sent."""

CATCH_UP = timedelta(hours=1)
"""How far back the periodic scan looks for bookings whose confirmation was never queued."""

MAX_BACKOFF = 3600.0
"""The longest pause between two attempts at one mail (seconds)."""

_MAX_EXPONENT = 16
QUEUE_SIZE = 10_000

Keep = Callable[[Any], bool]


class Notifier:
    """E-mail for booking events; inert when ``SMTP_HOST`` is not configured."""

    def __init__(self, settings: Settings, database: Database, clock: Callable[[], datetime] = utcnow) -> None:
        self.settings = settings
        self.clock = clock
        """The current time (aware UTC); injectable so that retry schedules are tested without waiting."""
        self.enabled = settings.email_enabled
        self._database = database
        self._mailer = Mailer(settings) if self.enabled else None
        self._new_bookings: asyncio.Queue[int] = asyncio.Queue(maxsize=QUEUE_SIZE)
        self._wake = asyncio.Event()
        self._loops = Loops()
        self.queued = 0
        self.sent = 0
        self.retried = 0
        self.failed = 0

    def stats(self) -> dict[str, int]:
        """Counters of this process, for metrics and tests."""
        return {"queued": self.queued, "sent": self.sent, "retried": self.retried, "failed": self.failed}

    async def on_domain_event(self, event: DomainEvent) -> None:
        """The event bus handler: note a new booking and return at once."""
        if not self.enabled or event.type != "booking.created":
            return
        try:
            self._new_bookings.put_nowait(int(event.data["id"]))
        except asyncio.QueueFull:
            logger.warning("confirmation queue full; the periodic scan will queue booking %s", event.data["id"])

    async def start(self) -> None:
        """Start the background work (nothing when e-mail is off)."""
        if not self.enabled or self._loops.running:
            return
        logger.info(
            "e-mail notifications on: %s:%d (%s), from %s",
            self.settings.smtp_host,
            self.settings.smtp_port,
            self.settings.smtp_security,
            self.settings.email_from,
        )
        self._wake.set()  # the first delivery round runs at once
        self._loops.start("email-confirmations", self._confirm_round)
        self._loops.start(
            "email-delivery", self._deliver_round, errors=(SQLAlchemyError, OSError), on_error=self._round_failed
        )

    async def stop(self) -> None:
        """Write the confirmations still in memory (bounded), then stop; unsent rows wait for the next start."""
        if not self._loops.running:
            return
        if not self._new_bookings.empty():
            with contextlib.suppress(TimeoutError, SQLAlchemyError, OSError):
                await asyncio.wait_for(self._confirm_batch(self._take_all()), timeout=5)
        await self._loops.stop()

    # ----- queueing -----

    def _take_all(self) -> list[int]:
        ids = []
        while not self._new_bookings.empty():
            ids.append(self._new_bookings.get_nowait())
        return ids

    async def _confirm_round(self) -> None:
        ids = [await self._new_bookings.get(), *self._take_all()]
        try:
            await self._confirm_batch(ids)
        except (SQLAlchemyError, OSError) as exc:
            logger.warning("could not queue booking confirmations %s (%s); the scan will retry", ids, exc)
        self._wake.set()

    async def _confirm_batch(self, booking_ids: list[int]) -> None:
        await self.enqueue(EmailKind.BOOKING_CONFIRMATION, Booking.id.in_(booking_ids))

    async def enqueue(self, kind: EmailKind, condition: ColumnElement[bool], keep: Keep | None = None) -> int:
        """Queue a ``kind`` mail for every booking matching ``condition`` that has none yet; how many were new."""
        outbox = OutboxEmail.__table__
        async with self._database.sessionmaker() as session:
            await begin_write(session)
            statement = (
                select(Booking.id, Booking.start_at, Booking.end_at, Booking.created_at, User.email, User.full_name)
                .add_columns(Book.title)
                .join(User, User.id == Booking.user_id)
                .join(Book, Book.id == Booking.book_id)
                .outerjoin(OutboxEmail, and_(OutboxEmail.booking_id == Booking.id, OutboxEmail.kind == kind.value))
                .where(OutboxEmail.id.is_(None), condition)
            )
            rows = [row for row in (await session.execute(statement)).all() if keep is None or keep(row)]
            if not rows:
                return 0
            now = self.clock()
            values = []
            for row in rows:
                subject, body = render(
                    kind, name=row.full_name, title=row.title, booking_id=row.id, start=row.start_at, end=row.end_at
                )
                values.append(
                    {
                        "kind": kind.value,
                        "booking_id": row.id,
                        "recipient": row.email,
                        "subject": subject,
                        "body": body,
                        "status": EmailStatus.PENDING.value,
                        "attempts": 0,
                        "next_attempt_at": now,
                        "created_at": now,
                        "updated_at": now,
                    }
                )
            dialect = postgresql if self._database.dialect == "postgresql" else sqlite
            insert = dialect.insert(outbox).values(values).on_conflict_do_nothing(index_elements=["kind", "booking_id"])
            result = await session.execute(insert)
            await session.commit()
        added = max(int(getattr(result, "rowcount", 0) or 0), 0)
        self.queued += added
        return added

    async def scan(self) -> None:
        """Queue due reminders and any confirmation the event path missed."""
        now = self.clock()
        hours = self.settings.booking_reminder_hours
        if hours > 0:
            window = timedelta(hours=hours)

            def existed_before_the_window(row: Any) -> bool:
                created: datetime = row.created_at
                end: datetime = row.end_at
                return created <= end - window

            await self.enqueue(
                EmailKind.BOOKING_REMINDER,
                and_(Booking.status == BookingStatus.ACTIVE, Booking.end_at > now, Booking.end_at <= now + window),
                existed_before_the_window,
            )
        await self.enqueue(
            EmailKind.BOOKING_CONFIRMATION,
            and_(Booking.status == BookingStatus.ACTIVE, Booking.created_at >= now - CATCH_UP),
        )

    def add_mail(self, session: AsyncSession, kind: EmailKind, recipient: str, subject: str, body: str) -> None:
        """Queue a mail about no booking in the caller's transaction: it exists if and when that commits.

        Call :meth:`wake` after the commit, so the mail leaves at once rather than at the next poll.
        """
        now = self.clock()
        session.add(
            OutboxEmail(
                kind=kind.value,
                recipient=recipient,
                subject=subject[:200],
                body=body,
                status=EmailStatus.PENDING.value,
                attempts=0,
                next_attempt_at=now,
                created_at=now,
                updated_at=now,
            )
        )

    def wake(self) -> None:
        """Have the delivery loop look for due mail now (a mail was just queued)."""
        self.queued += 1
        self._wake.set()

    # ----- delivery -----

    async def _deliver_round(self) -> None:
        """Wait for due mail (woken by a new one, or the poll interval), then queue and send what is due.

        The wait comes first, so that a failed round (logged by :meth:`_round_failed`) is retried after it; the
        first round does not wait (:meth:`start` wakes it).
        """
        await self._loops.pause(self.settings.email_poll_interval, self._wake)
        self._wake.clear()
        await self.scan()
        while await self.deliver_due() == BATCH and not self._loops.stopping:
            pass

    def _round_failed(self, exc: Exception) -> None:
        logger.warning("e-mail delivery round failed (%s); retrying in %.0f s", exc, self.settings.email_poll_interval)

    async def deliver_due(self) -> int:
        """Claim the rows that are due, send them, record each outcome; how many were claimed."""
        assert self._mailer is not None
        now = self.clock()
        async with self._database.sessionmaker() as session:
            await begin_write(session)
            statement = (
                select(OutboxEmail)
                .where(OutboxEmail.status == EmailStatus.PENDING, OutboxEmail.next_attempt_at <= now)
                .order_by(OutboxEmail.id)
                .limit(BATCH)
            )
            if self._database.dialect == "postgresql":
                statement = statement.with_for_update(skip_locked=True)
            claimed = list((await session.execute(statement)).scalars())
            for email in claimed:
                email.attempts += 1
                email.next_attempt_at = now + LEASE
                if email.message_id is None:
                    email.message_id = message_id_for(email.id, self._mailer.domain)
            await session.commit()
        for email in claimed:
            await self._deliver(email)
        return len(claimed)

    async def _deliver(self, email: OutboxEmail) -> None:
        assert self._mailer is not None
        assert email.message_id is not None
        message = self._mailer.compose(email.recipient, email.subject, email.body, message_id=email.message_id)

        # A password-reset link is a credential: once the server has the mail, the outbox keeps no usable copy.
        scrub = {"body": redact_reset_token(email.body)} if email.kind == EmailKind.PASSWORD_RESET else {}

        async def accepted() -> None:
            await self._record(email.id, status=EmailStatus.SENT, sent_at=self.clock(), last_error=None, **scrub)
            self.sent += 1

        try:
            await self._mailer.send(message, on_accepted=accepted)
        except DeliveryError as exc:
            await self._record_failure(email, exc)

    def give_up_reason(self, email: OutboxEmail, error: DeliveryError) -> str | None:
        """Why ``email`` is failed for good after ``error``, or ``None`` when it is tried again."""
        if error.failure is Failure.PERMANENT:
            return "refused for good"
        if error.failure is Failure.TRANSIENT and email.refusals >= self.settings.email_max_attempts:
            return f"{email.refusals} temporary refusals (EMAIL_MAX_ATTEMPTS)"
        since = email.requeued_at or email.created_at
        limit = timedelta(hours=self.settings.email_max_age_hours)
        if self.clock() - since >= limit:
            return f"undelivered for {self.settings.email_max_age_hours:g} h (EMAIL_MAX_AGE_HOURS)"
        return None

    async def _record_failure(self, email: OutboxEmail, error: DeliveryError) -> None:
        if error.failure is Failure.TRANSIENT:
            email.refusals += 1
        reason = self.give_up_reason(email, error)
        if reason is None:
            exponent = min(email.attempts - 1, _MAX_EXPONENT)
            delay = min(self.settings.email_retry_delay * 2**exponent, MAX_BACKOFF)
            delay *= random.uniform(0.8, 1.2)  # noqa: S311 - jitter, not a secret
            await self._record(
                email.id,
                next_attempt_at=self.clock() + timedelta(seconds=delay),
                refusals=email.refusals,
                last_error=str(error),
            )
            self.retried += 1
            logger.info(
                "e-mail %d not delivered (%s); attempt %d, retrying in %.0f s", email.id, error, email.attempts, delay
            )
            return
        await self._record(email.id, status=EmailStatus.FAILED, refusals=email.refusals, last_error=str(error))
        self.failed += 1
        logger.warning(
            "e-mail %d (%s) failed for good after %d attempt(s), %s: %s; `library-api mail requeue %d` retries it",
            email.id,
            email.kind,
            email.attempts,
            reason,
            error,
            email.id,
        )

    async def _record(self, email_id: int, **values: Any) -> None:
        async with self._database.sessionmaker() as session:
            await begin_write(session)
            email = await session.get(OutboxEmail, email_id)
            if email is not None:
                for name, value in values.items():
                    setattr(email, name, value)
                await session.commit()
