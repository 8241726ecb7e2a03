"""The account-state cache: its time-to-live (on a clock the test moves), its bound, and no caching at TTL zero.

Whether an answer came from the cache or from the database is seen by changing the account's row behind the
cache's back: a cached state still shows the old name, a loaded one the new.
"""

from __future__ import annotations

import dataclasses

import pytest
from sqlalchemy import update

from library_api.dependencies.context import AppContext
from library_api.users import accounts
from library_api.users.accounts import AccountState, AccountStateCache
from library_api.users.models import User
from tests.support.factories import create_user


class Clock:
    """Monotonic seconds that move only when the test says so."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


async def rename(ctx: AppContext, user_id: int, full_name: str) -> None:
    """Change the account's row directly, as another worker would."""
    async with ctx.database.sessionmaker() as session:
        await session.execute(update(User).where(User.id == user_id).values(full_name=full_name))
        await session.commit()


async def name_in(cache: AccountStateCache, user_id: int) -> str:
    state = await cache.get(user_id)
    assert state is not None
    return state.full_name


async def test_a_state_is_served_from_memory_until_its_ttl_passes(ctx: AppContext) -> None:
    user = await create_user(ctx)
    clock = Clock()
    cache = AccountStateCache(ctx.database.sessionmaker, ttl=5, clock=clock)
    assert await name_in(cache, user.id) == user.full_name
    await rename(ctx, user.id, "Renamed Elsewhere")

    clock.now += 4
    assert await name_in(cache, user.id) == user.full_name  # within the TTL: the cached state
    clock.now += 1
    assert await name_in(cache, user.id) == "Renamed Elsewhere"  # the TTL has passed: loaded again
    await rename(ctx, user.id, "Renamed Twice")
    assert await name_in(cache, user.id) == "Renamed Elsewhere"  # and that load is cached for another TTL


async def test_the_cache_holds_at_most_max_entries_and_drops_the_oldest(ctx: AppContext) -> None:
    first, second, third = [await create_user(ctx) for _ in range(3)]
    cache = AccountStateCache(ctx.database.sessionmaker, ttl=60, max_entries=2, clock=Clock())
    for user in (first, second, third):
        await cache.get(user.id)
    for user in (first, second, third):
        await rename(ctx, user.id, f"New name {user.id}")

    assert await name_in(cache, second.id) == second.full_name  # still held
    assert await name_in(cache, third.id) == third.full_name  # still held
    assert await name_in(cache, first.id) == f"New name {first.id}"  # dropped when the third was stored
    assert await name_in(cache, second.id) == f"New name {second.id}"  # and storing the first dropped the second


async def test_an_unknown_account_is_none_and_forget_drops_a_state(ctx: AppContext) -> None:
    user = await create_user(ctx)
    cache = AccountStateCache(ctx.database.sessionmaker, ttl=60, clock=Clock())
    assert await cache.get(987_654_321) is None
    assert await name_in(cache, user.id) == user.full_name
    await rename(ctx, user.id, "Renamed")
    cache.forget(user.id)
    assert await name_in(cache, user.id) == "Renamed"


async def test_ttl_zero_always_reads(ctx: AppContext) -> None:
    user = await create_user(ctx)
    uncached = AccountStateCache(ctx.database.sessionmaker, ttl=0)
    uncached.remember(user.id, dataclasses.replace(AccountState.of(user), role="admin", token_version=99))
    state = await uncached.get(user.id)
    assert state == AccountState.of(user)
    assert (state.role, state.token_version, state.email) == ("reader", 0, user.email)


async def test_a_refresh_reads_every_stale_account_together_in_chunks_and_caches_the_missing_too(
    ctx: AppContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(accounts, "REFRESH_CHUNK", 2)  # three accounts and a missing id: two statements
    users = [await create_user(ctx) for _ in range(3)]
    clock = Clock()
    cache = AccountStateCache(ctx.database.sessionmaker, ttl=5, clock=clock)
    assert await name_in(cache, users[0].id) == users[0].full_name
    for user in users:
        await rename(ctx, user.id, f"Renamed {user.id}")
    missing = max(user.id for user in users) + 1000
    await cache.refresh([*(user.id for user in users), missing])
    for user in users:
        await rename(ctx, user.id, "Renamed after the refresh")  # what a get shows now comes from the cache
    assert await name_in(cache, users[0].id) == users[0].full_name  # still fresh: not read again
    assert [await name_in(cache, user.id) for user in users[1:]] == [f"Renamed {user.id}" for user in users[1:]]
    assert await cache.get(missing) is None
    clock.now += 5
    await cache.refresh(user.id for user in users)
    assert [await name_in(cache, user.id) for user in users] == ["Renamed after the refresh"] * 3
