"""``Idempotency-Key`` on ``POST /bookings``: a retry gets the first answer, never a second booking."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from datetime import timedelta
from pathlib import Path

import httpx
from sqlalchemy import func, select, update

from library_api.app import create_app
from library_api.db.base import utcnow
from library_api.dependencies.context import AppContext
from library_api.holdings.models import Booking
from library_api.idempotency.models import IdempotencyRecord
from library_api.idempotency.store import IdempotencyStore
from tests.conftest import fast_settings
from tests.support.factories import bearer, create_book, create_user, token_for, user_headers


def period(days_from_now: int = 1) -> dict[str, str]:
    start = utcnow().replace(microsecond=0) + timedelta(days=days_from_now)
    return {"start": start.isoformat(), "end": (start + timedelta(days=2)).isoformat()}


async def bookings_of(ctx: AppContext, user_id: int) -> int:
    async with ctx.database.sessionmaker() as session:
        count = await session.scalar(select(func.count()).select_from(Booking).where(Booking.user_id == user_id))
    return int(count or 0)


async def test_a_retry_with_the_same_key_gets_the_first_answer(client: httpx.AsyncClient, ctx: AppContext) -> None:
    reader, headers = await user_headers(ctx)
    title = await create_book(ctx, copies=5)
    body = {"book_id": title.id, **period()}
    keyed = {**headers, "Idempotency-Key": str(uuid.uuid4())}

    first = await client.post("/api/v1/bookings", json=body, headers=keyed)
    assert first.status_code == 201, first.text
    assert "idempotent-replayed" not in first.headers
    retry = await client.post("/api/v1/bookings", json=body, headers=keyed)
    assert retry.status_code == 201
    assert retry.headers["idempotent-replayed"] == "true"
    assert retry.headers["content-type"] == "application/json"
    assert retry.json() == first.json()
    assert await bookings_of(ctx, reader.id) == 1

    # Without a key every request is new.
    assert (await client.post("/api/v1/bookings", json=body, headers=headers)).status_code == 201
    assert await bookings_of(ctx, reader.id) == 2


async def test_the_same_key_for_another_request_is_refused(client: httpx.AsyncClient, ctx: AppContext) -> None:
    reader, headers = await user_headers(ctx)
    title = await create_book(ctx, copies=5)
    keyed = {**headers, "Idempotency-Key": "order-17"}
    assert (await client.post("/api/v1/bookings", json={"book_id": title.id, **period()}, headers=keyed)).is_success
    other = await client.post("/api/v1/bookings", json={"book_id": title.id, **period(5)}, headers=keyed)
    assert other.status_code == 422
    assert other.headers["content-type"] == "application/problem+json"
    assert other.json()["type"].endswith(":idempotency-key-reused")
    assert await bookings_of(ctx, reader.id) == 1

    # Keys belong to their user: another reader may use the same one.
    _, stranger = await user_headers(ctx)
    same_key = {**stranger, "Idempotency-Key": "order-17"}
    assert (await client.post("/api/v1/bookings", json={"book_id": title.id, **period(5)}, headers=same_key)).is_success


async def test_errors_are_not_stored_and_bad_keys_are_refused(client: httpx.AsyncClient, ctx: AppContext) -> None:
    reader, headers = await user_headers(ctx)
    keyed = {**headers, "Idempotency-Key": "retry-me"}
    missing = {"book_id": 2_000_000_000, **period()}
    assert (await client.post("/api/v1/bookings", json=missing, headers=keyed)).status_code == 404
    assert (await client.post("/api/v1/bookings", json=missing, headers=keyed)).status_code == 404
    title = await create_book(ctx, copies=1)
    found = await client.post("/api/v1/bookings", json={**missing, "book_id": title.id}, headers=keyed)
    assert found.status_code == 201  # the failed attempts left nothing behind under the key

    for bad in ("", "with space", "x" * 256, "é".encode()):
        refused = await client.post(
            "/api/v1/bookings",
            json={"book_id": title.id, **period()},
            headers={**headers, "Idempotency-Key": bad},  # type: ignore[dict-item]
        )
        assert refused.status_code == 422, bad
    assert await bookings_of(ctx, reader.id) == 1


async def test_an_expired_key_is_a_new_request(client: httpx.AsyncClient, ctx: AppContext) -> None:
    reader, headers = await user_headers(ctx)
    title = await create_book(ctx, copies=5)
    body = {"book_id": title.id, **period()}
    keyed = {**headers, "Idempotency-Key": "old"}
    assert (await client.post("/api/v1/bookings", json=body, headers=keyed)).status_code == 201
    async with ctx.database.sessionmaker() as session:
        await session.execute(update(IdempotencyRecord).values(expires_at=utcnow() - timedelta(seconds=1)))
        await session.commit()
    again = await client.post("/api/v1/bookings", json=body, headers=keyed)
    assert again.status_code == 201
    assert "idempotent-replayed" not in again.headers
    assert await bookings_of(ctx, reader.id) == 2
    async with ctx.database.sessionmaker() as session:
        await session.execute(update(IdempotencyRecord).values(expires_at=utcnow() - timedelta(seconds=1)))
        await session.commit()
        assert await IdempotencyStore(timedelta(hours=1)).purge_expired(session) >= 1


async def test_concurrent_duplicates_book_once(committed_url: str, tmp_path: Path) -> None:
    """Twenty copies of one keyed request at once, on a real pool: one booking, every answer the same."""
    app = create_app(fast_settings(database_url=committed_url, upload_dir=tmp_path, database_pool_size=10))
    async with app.router.lifespan_context(app):
        ctx: AppContext = app.state.context
        title = await create_book(ctx, copies=1)
        reader = await create_user(ctx)
        headers = {**bearer(token_for(ctx, reader)), "Idempotency-Key": str(uuid.uuid4())}
        body = {"book_id": title.id, **period()}
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            responses = await asyncio.gather(
                *(client.post("/api/v1/bookings", json=body, headers=headers) for _ in range(20))
            )
        statuses = Counter(response.status_code for response in responses)
        assert set(statuses) <= {201, 409}, statuses
        created = [response.json() for response in responses if response.status_code == 201]
        assert created and all(item == created[0] for item in created)
        in_use = [response.json()["type"] for response in responses if response.status_code == 409]
        assert all(kind.endswith(":idempotency-key-in-use") for kind in in_use), in_use
        assert sum("idempotent-replayed" not in response.headers for response in responses if response.is_success) == 1
        assert await bookings_of(ctx, reader.id) == 1
