"""The account-state cache: time-to-live, bounded size, and no caching when the TTL is zero."""

from __future__ import annotations

import dataclasses

from library_api.context import AppContext
from library_api.security.accounts import AccountState, AccountStateCache
from tests.support.factories import create_user


async def test_cache_is_bounded_and_ttl_zero_always_reads(ctx: AppContext) -> None:
    user = await create_user(ctx)
    bounded = AccountStateCache(ctx.database.sessionmaker, ttl=60, max_entries=2)
    for user_id in (user.id, 10_001, 10_002):
        await bounded.get(user_id)
    assert await bounded.get(10_001) is None
    bounded.forget(10_001)
    uncached = AccountStateCache(ctx.database.sessionmaker, ttl=0)
    uncached.remember(user.id, dataclasses.replace(AccountState.of(user), role="admin", token_version=99))
    state = await uncached.get(user.id)
    assert state == AccountState.of(user)
    assert (state.role, state.token_version, state.email) == ("reader", 0, user.email)
