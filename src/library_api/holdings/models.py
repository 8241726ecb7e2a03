"""The ``bookings`` table: one copy of a book held by a reader for a period (see the package docs)."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import CheckConstraint, ForeignKey, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from library_api.db.base import Base, TimestampMixin


class BookingStatus(StrEnum):
    """A booking is active until it is returned (by a librarian) or cancelled (by its owner or a librarian)."""

    ACTIVE = "active"
    RETURNED = "returned"
    CANCELLED = "cancelled"


class Booking(TimestampMixin, Base):
    """One copy of a book held by a reader for the half-open period ``[start_at, end_at)``."""

    __tablename__ = "bookings"
    __table_args__ = (
        CheckConstraint("end_at > start_at", name="period_positive"),
        Index("ix_bookings_book_status_start", "book_id", "status", "start_at"),
        Index("ix_bookings_user_id_id", "user_id", "id"),
        Index("ix_bookings_status_start", "status", "start_at"),
        Index("ix_bookings_status_end", "status", "end_at"),
        Index("ix_bookings_status_id", "status", "id"),
        Index("ix_bookings_book_id_id", "book_id", "id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    book_id: Mapped[int] = mapped_column(ForeignKey("books.id", ondelete="RESTRICT"))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    start_at: Mapped[datetime]
    end_at: Mapped[datetime]
    status: Mapped[str] = mapped_column(String(16), default=BookingStatus.ACTIVE)
    closed_at: Mapped[datetime | None] = mapped_column(default=None)
