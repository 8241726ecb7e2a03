"""The live event outbox's table: events of committed changes waiting for the relay to publish them.

A model module of its own, so that the table list Alembic reads (:mod:`library_api.tables`) names it without
importing the real-time layer's logic.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from library_api.db.base import Base, utcnow

TABLE = "live_event_outbox"


class LiveEventRow(Base):
    """One live event of a committed change, waiting to be published (deleted once the broker accepted it)."""

    __tablename__ = TABLE

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer(), "sqlite"), primary_key=True)
    """Commit order for changes that lock the same rows; the relay publishes in this order."""
    key: Mapped[str] = mapped_column(String(32))
    """A random id of the row, by which the broker recognises a second publication of it."""
    type: Mapped[str] = mapped_column(String(64))
    routes: Mapped[str] = mapped_column(Text)
    """JSON ``[[topic, stream], ...]``: where the message goes."""
    data: Mapped[str] = mapped_column(Text)
    """JSON payload, as the event carried it."""
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
