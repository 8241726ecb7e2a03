"""The ``idempotency_keys`` table: the first answer to each (caller, operation, key), kept for a while."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Index, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from library_api.db.base import Base


class IdempotencyRecord(Base):
    """One key a caller sent with a creating request, what the request was, and the answer it got.

    Written in the same transaction as what the request created, so the answer is stored exactly when the
    creation committed. ``status`` is 0 while that transaction is still open (the row is inserted first, so
    that a concurrent duplicate waits on its unique index instead of creating again).
    """

    __tablename__ = "idempotency_keys"
    __table_args__ = (
        UniqueConstraint("user_id", "scope", "key"),
        Index("ix_idempotency_keys_expires_at", "expires_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    scope: Mapped[str] = mapped_column(String(64))
    key: Mapped[str] = mapped_column(String(255))
    fingerprint: Mapped[str] = mapped_column(String(64))
    status: Mapped[int]
    body: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime]
