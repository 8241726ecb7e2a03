"""Bookings through HTTP: the reader's and the librarian's journeys, the rules, and who sees what."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
import pytest

from library_api.db.base import utcnow
from library_api.dependencies.context import AppContext
from library_api.security.permissions import Role
from tests.support.factories import create_book, user_headers


def window(start_in: timedelta = timedelta(days=1), length: timedelta = timedelta(days=3)) -> dict[str, str]:
    start = utcnow().replace(microsecond=0) + start_in
    return {"start": start.isoformat(), "end": (start + length).isoformat()}


async def book(client: httpx.AsyncClient, headers: dict[str, str], book_id: int, **period: str) -> httpx.Response:
    return await client.post("/api/v1/bookings", json={"book_id": book_id, **(period or window())}, headers=headers)


async def test_reader_journey(client: httpx.AsyncClient, ctx: AppContext) -> None:
    reader, headers = await user_headers(ctx)
    title = await create_book(ctx, copies=1)

    created = await book(client, headers, title.id)
    assert created.status_code == 201, created.text
    booking = created.json()
    assert booking["status"] == "active" and booking["user_id"] == reader.id

    mine = await client.get("/api/v1/bookings", headers=headers)
    assert [item["id"] for item in mine.json()["items"]] == [booking["id"]]
    assert (await client.get(f"/api/v1/bookings/{booking['id']}", headers=headers)).json()["book_id"] == title.id

    taken = await book(client, headers, title.id)
    assert taken.status_code == 409  # the only copy is taken for that period

    cancelled = await client.post(f"/api/v1/bookings/{booking['id']}/cancel", headers=headers)
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert (await client.post(f"/api/v1/bookings/{booking['id']}/cancel", headers=headers)).status_code == 409
    assert (await book(client, headers, title.id)).status_code == 201  # the copy is free again


async def test_librarian_journey(client: httpx.AsyncClient, ctx: AppContext) -> None:
    reader, reader_headers = await user_headers(ctx)
    _, librarian = await user_headers(ctx, Role.LIBRARIAN)
    title = await create_book(ctx, copies=2)
    now_window = {"start": utcnow().isoformat(), "end": (utcnow() + timedelta(days=2)).isoformat()}
    booking = (await book(client, reader_headers, title.id, **now_window)).json()
    assert (await client.get(f"/api/v1/books/{title.id}")).json()["available_now"] == 1

    everyone = await client.get(
        "/api/v1/bookings", params={"user_id": reader.id, "status": "active"}, headers=librarian
    )
    assert [item["id"] for item in everyone.json()["items"]] == [booking["id"]]

    assert (await client.post(f"/api/v1/bookings/{booking['id']}/return", headers=reader_headers)).status_code == 403
    returned = await client.post(f"/api/v1/bookings/{booking['id']}/return", headers=librarian)
    assert returned.status_code == 200 and returned.json()["status"] == "returned"
    assert returned.json()["closed_at"] is not None
    assert (await client.get(f"/api/v1/books/{title.id}")).json()["available_now"] == 2
    assert (await client.post(f"/api/v1/bookings/{booking['id']}/return", headers=librarian)).status_code == 409


async def test_overlap_counts_instants_not_bookings(client: httpx.AsyncClient, ctx: AppContext) -> None:
    _, headers = await user_headers(ctx)
    title = await create_book(ctx, copies=2)
    day = timedelta(days=1)
    base = utcnow().replace(microsecond=0) + day

    def span(start: int, end: int) -> dict[str, str]:
        return {"start": (base + start * day).isoformat(), "end": (base + end * day).isoformat()}

    assert (await book(client, headers, title.id, **span(0, 2))).status_code == 201
    assert (await book(client, headers, title.id, **span(3, 5))).status_code == 201
    # [1, 4) overlaps both, but never both at the same instant: two copies suffice
    assert (await book(client, headers, title.id, **span(1, 4))).status_code == 201
    # now day 1.5 holds two bookings: a third over it is refused, back-to-back at day 5 is fine
    assert (await book(client, headers, title.id, **span(1, 2))).status_code == 409
    assert (await book(client, headers, title.id, **span(5, 6))).status_code == 201


async def test_readers_never_see_each_others_bookings(client: httpx.AsyncClient, ctx: AppContext) -> None:
    _, alice = await user_headers(ctx)
    _, bob = await user_headers(ctx)
    title = await create_book(ctx, copies=5)
    alices = (await book(client, alice, title.id)).json()

    assert (await client.get(f"/api/v1/bookings/{alices['id']}", headers=bob)).status_code == 404
    assert (await client.post(f"/api/v1/bookings/{alices['id']}/cancel", headers=bob)).status_code == 404
    listing = await client.get("/api/v1/bookings", params={"user_id": 1}, headers=bob)  # the filter is ignored
    assert listing.json()["items"] == [] and listing.json()["total"] == 0
    by_book = await client.get("/api/v1/bookings", params={"book_id": title.id}, headers=bob)
    assert by_book.json()["total"] == 0
    assert (await client.get(f"/api/v1/bookings/{alices['id']}", headers=alice)).status_code == 200


@pytest.mark.parametrize(
    ("period", "field"),
    [
        (window(start_in=-timedelta(days=1)), "body.start"),
        (window(length=timedelta(days=31)), "body.end"),
        (window(length=-timedelta(hours=1)), "body.end"),
        ({"start": "2031-01-01T00:00:00", "end": "2031-01-02T00:00:00Z"}, "body.start"),
    ],
    ids=["past", "too-long", "reversed", "naive"],
)
async def test_invalid_periods_are_422(
    client: httpx.AsyncClient, ctx: AppContext, period: dict[str, str], field: str
) -> None:
    _, headers = await user_headers(ctx)
    title = await create_book(ctx)
    response = await book(client, headers, title.id, **period)
    assert response.status_code == 422, response.text
    assert field in [error["field"] for error in response.json()["errors"]]


async def test_unknown_book_and_anonymous(client: httpx.AsyncClient, ctx: AppContext) -> None:
    _, headers = await user_headers(ctx)
    assert (await book(client, headers, 424242)).status_code == 404
    assert (await client.post("/api/v1/bookings", json={"book_id": 1, **window()})).status_code == 401
    assert (await client.get("/api/v1/bookings")).status_code == 401


async def test_time_zones_are_respected(client: httpx.AsyncClient, ctx: AppContext) -> None:
    _, headers = await user_headers(ctx)
    title = await create_book(ctx)
    start = (utcnow() + timedelta(days=2)).replace(microsecond=0)
    kyiv = start.astimezone(tz=datetime.now(UTC).astimezone().tzinfo)
    created = await book(client, headers, title.id, start=kyiv.isoformat(), end=(start + timedelta(days=1)).isoformat())
    assert created.status_code == 201
    assert datetime.fromisoformat(created.json()["start"]) == start


async def test_copies_cannot_drop_below_future_peak_and_delete_waits_for_returns(
    client: httpx.AsyncClient, ctx: AppContext
) -> None:
    _, reader = await user_headers(ctx)
    _, librarian = await user_headers(ctx, Role.LIBRARIAN)
    title = await create_book(ctx, copies=3)
    first = (await book(client, reader, title.id)).json()
    await book(client, reader, title.id)

    refused = await client.patch(f"/api/v1/books/{title.id}", json={"copies": 1}, headers=librarian)
    assert refused.status_code == 409
    assert (await client.patch(f"/api/v1/books/{title.id}", json={"copies": 2}, headers=librarian)).status_code == 200

    assert (await client.delete(f"/api/v1/books/{title.id}", headers=librarian)).status_code == 409
    bookings = (await client.get("/api/v1/bookings", params={"book_id": title.id}, headers=librarian)).json()["items"]
    for item in bookings:
        await client.post(f"/api/v1/bookings/{item['id']}/cancel", headers=librarian)
    assert (await client.delete(f"/api/v1/books/{title.id}", headers=librarian)).status_code == 204
    assert (await client.get(f"/api/v1/bookings/{first['id']}", headers=librarian)).status_code == 404


async def test_pagination_of_bookings(client: httpx.AsyncClient, ctx: AppContext) -> None:
    _, reader = await user_headers(ctx)
    title = await create_book(ctx, copies=5)
    ids = [(await book(client, reader, title.id)).json()["id"] for _ in range(3)]
    page = (await client.get("/api/v1/bookings", params={"limit": 2}, headers=reader)).json()
    assert [item["id"] for item in page["items"]] == ids[::-1][:2] and page["total"] == 3
    rest = (await client.get("/api/v1/bookings", params={"limit": 2, "offset": 2}, headers=reader)).json()
    assert [item["id"] for item in rest["items"]] == ids[:1]
    beyond = (await client.get("/api/v1/bookings", params={"offset": 10}, headers=reader)).json()
    assert beyond["items"] == [] and beyond["total"] == 3
