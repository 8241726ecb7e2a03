"""The live state of user accounts that decides whether an access token still counts.

A token names the user, role and ``token_version`` it was issued under. Each request checks those against the
account's current state, kept here for ``PRINCIPAL_CACHE_TTL`` seconds (1 by default), so a deactivation, a
role change or a logout everywhere takes effect on every worker within that time while most requests never
touch the database.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import bindparam, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from library_api.cache.local import TimedCache
from library_api.users.models import User


@dataclass(frozen=True, slots=True)
class AccountState:
    """What decides whether a user's tokens are honoured, and the profile its owner reads at ``/auth/me``.

    The profile rides along because it is one row either way: with it, ``/auth/me`` answers from this cache
    without a statement, and shows a change made on another worker within the same time-to-live.
    """

    role: str
    is_active: bool
    token_version: int
    email: str
    full_name: str
    created_at: datetime

    @classmethod
    def of(cls, user: User) -> AccountState:
        """The state of an account object just read or written."""
        return cls(
            role=user.role,
            is_active=user.is_active,
            token_version=user.token_version,
            email=user.email,
            full_name=user.full_name,
            created_at=user.created_at,
        )


_STATES = select(
    User.id, User.role, User.is_active, User.token_version, User.email, User.full_name, User.created_at
).where(User.id.in_(bindparam("user_ids", expanding=True)))
REFRESH_CHUNK = 500
"""Accounts read by one statement of :meth:`AccountStateCache.refresh` (well under SQLite's 999 parameters)."""


class AccountStateCache:
    """A bounded time-to-live cache of :class:`AccountState` per user, loaded from the database on a miss.

    Concurrent misses for one user share a single load (:class:`~library_api.cache.local.TimedCache`). ``clock``
    (monotonic seconds) judges the time-to-live; the service uses ``time.monotonic``.
    """

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        ttl: float,
        max_entries: int = 50_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sessionmaker = sessionmaker
        self._cache: TimedCache[int, AccountState | None] = TimedCache(ttl, max_entries, clock)

    async def get(self, user_id: int) -> AccountState | None:
        """The user's current state, or ``None`` when the account does not exist."""
        return await self._cache.get(user_id, lambda: self._load(user_id))

    async def refresh(self, user_ids: Iterable[int]) -> None:
        """Make sure the state of every account of ``user_ids`` is fresh, reading the stale ones together.

        The live-event credential check resolves every connected caller twice a second; with one statement per
        account that is thousands of statements a second at thousands of callers, one after another. This reads
        them :data:`REFRESH_CHUNK` at a time instead; a later :meth:`get` finds them cached.
        """
        await self._cache.refresh(user_ids, self._load_many)

    async def _load_many(self, user_ids: list[int]) -> dict[int, AccountState | None]:
        states: dict[int, AccountState | None] = dict.fromkeys(user_ids)
        async with self._sessionmaker() as session:
            for start in range(0, len(user_ids), REFRESH_CHUNK):
                chunk = user_ids[start : start + REFRESH_CHUNK]
                for row in await session.execute(_STATES, {"user_ids": chunk}):
                    values = dict(row._mapping)
                    user_id = values.pop("id")
                    states[user_id] = AccountState(**values)
        return states

    async def _load(self, user_id: int) -> AccountState | None:
        return (await self._load_many([user_id]))[user_id]

    def remember(self, user_id: int, state: AccountState | None) -> None:
        """Store a state just read or written, so the next request of this worker need not read it."""
        self._cache.remember(user_id, state)

    def forget(self, user_id: int) -> None:
        """Drop what this worker knows about a user after changing the account."""
        self._cache.forget(user_id)
