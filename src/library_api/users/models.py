"""The ``users`` table."""

from __future__ import annotations

from sqlalchemy import String
from sqlalchemy.orm import Mapped, mapped_column

from library_api.db.base import Base, TimestampMixin


class User(TimestampMixin, Base):
    """A person who logs in: a reader, a librarian or an administrator.

    ``token_version`` is bumped whenever issued access tokens must stop working (logout everywhere, a role
    change, deactivation); tokens carry the version they were issued under.
    """

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    full_name: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(32), default="reader")
    is_active: Mapped[bool] = mapped_column(default=True)
    token_version: Mapped[int] = mapped_column(default=0)
