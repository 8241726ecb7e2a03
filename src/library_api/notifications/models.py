"""The ``email_outbox`` table: every e-mail the service owes someone, until it is sent or given up."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import ForeignKey, Index, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from library_api.db.base import Base, TimestampMixin


class EmailKind(StrEnum):
    """Why a mail is sent; with the booking it concerns, at most one mail of each kind exists.

    Mails about no booking (``booking_id`` empty, a password reset) are not limited by that constraint.
    """

    BOOKING_CONFIRMATION = "booking_confirmation"
    BOOKING_REMINDER = "booking_reminder"
    PASSWORD_RESET = "password_reset"  # noqa: S105 - a kind of mail, not a secret


class EmailStatus(StrEnum):
    """Pending until the SMTP server accepts it (sent) or it fails for good (failed)."""

    PENDING = "pending"
    SENT = "sent"
    FAILED = "failed"


class OutboxEmail(TimestampMixin, Base):
    """One e-mail, rendered when it was queued, with its delivery attempts."""

    __tablename__ = "email_outbox"
    __table_args__ = (
        UniqueConstraint("kind", "booking_id"),
        Index("ix_email_outbox_status_next_attempt_at", "status", "next_attempt_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    booking_id: Mapped[int | None] = mapped_column(ForeignKey("bookings.id", ondelete="CASCADE"))
    recipient: Mapped[str] = mapped_column(String(320))
    subject: Mapped[str] = mapped_column(String(200))
    body: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default=EmailStatus.PENDING)
    attempts: Mapped[int] = mapped_column(default=0)
    refusals: Mapped[int] = mapped_column(default=0, server_default="0")
    """Temporary (4xx) refusals since queued or requeued; what ``EMAIL_MAX_ATTEMPTS`` bounds."""
    next_attempt_at: Mapped[datetime]
    last_error: Mapped[str | None] = mapped_column(String(500), default=None)
    sent_at: Mapped[datetime | None] = mapped_column(default=None)
    message_id: Mapped[str | None] = mapped_column(String(255), default=None)
    """The Message-ID header of every attempt: set once, at the first, so a resend is recognisably the same mail."""
    requeued_at: Mapped[datetime | None] = mapped_column(default=None)
    """When an operator last requeued the mail; the age limit on retries counts from here (else from creation)."""
