"""The ``api_tokens`` table: one row per issued service token, holding its SHA-256 digest, never the token."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import String
from sqlalchemy.orm import Mapped, mapped_column

from library_api.db.base import Base, utcnow


class ApiToken(Base):
    """A credential issued to a service (a monitor, a batch job) rather than to a person.

    ``roles`` is a space-separated list of role names from the permission table. ``prefix`` keeps the first
    characters of the token so that an operator can tell tokens apart in ``tokens list`` without the
    secret. A token counts until ``revoked_at`` is set or ``expires_at`` passes.
    """

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    roles: Mapped[str] = mapped_column(String(500))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(default=None)
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)

    @property
    def role_list(self) -> list[str]:
        """The token's roles as a list, in the order they were given."""
        return self.roles.split()
