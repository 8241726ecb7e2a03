"""The live state of user accounts that decides whether an access token still counts.

A token names the user, role and ``token_version`` it was issued under. Each request checks those against the
account's current state, kept here for ``PRINCIPAL_CACHE_TTL`` seconds (1 by default), so a deactivation, a
role change or a logout everywhere takes effect on every worker within that time while most requests never
touch the database.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from library_api.users.models import User


@dataclass(frozen=True, slots=True)
class AccountState:
    """What decides whether a user's tokens are honoured."""

    role: str
    is_active: bool
    token_version: int


class AccountStateCache:
    """A bounded time-to-live cache of :class:`AccountState` per user, loaded from the database on a miss."""

    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession], ttl: float, max_entries: int = 50_000) -> None:
        self._sessionmaker = sessionmaker
        self._ttl = ttl
        self._max_entries = max_entries
        self._entries: OrderedDict[int, tuple[float, AccountState | None]] = OrderedDict()

    async def get(self, user_id: int) -> AccountState | None:
        """The user's current state, or ``None`` when the account does not exist."""
        now = time.monotonic()
        cached = self._entries.get(user_id)
        if cached is not None and cached[0] > now:
            return cached[1]
        async with self._sessionmaker() as session:
            row = (
                await session.execute(select(User.role, User.is_active, User.token_version).where(User.id == user_id))
            ).one_or_none()
        state = (
            None
            if row is None
            else AccountState(role=row.role, is_active=row.is_active, token_version=row.token_version)
        )
        self.remember(user_id, state)
        return state

    def remember(self, user_id: int, state: AccountState | None) -> None:
        """Store a state just read or written, so the next request of this worker need not read it."""
        if self._ttl <= 0:
            return
        self._entries[user_id] = (time.monotonic() + self._ttl, state)
        self._entries.move_to_end(user_id)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)

    def forget(self, user_id: int) -> None:
        """Drop what this worker knows about a user after changing the account."""
        self._entries.pop(user_id, None)
