"""``/bookings``: readers book and see their own; librarians see all and record returns."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Path, Query, Request, status
from starlette.responses import Response

from library_api.bookings.schemas import BookingCreate, BookingOut, BookingPage
from library_api.bookings.service import BookingFilters
from library_api.books.paging import check_window, link_header, next_cursor_in
from library_api.books.repository import Window
from library_api.books.router import LIST_OK, Cursor, Offset
from library_api.dependencies import ContextDep, SessionDep
from library_api.dependencies.permissions import require
from library_api.holdings.models import BookingStatus
from library_api.http.fast_path import FastPathRoute, fast_path
from library_api.http.links import Link
from library_api.idempotency.store import KEY_PATTERN, StoredAnswer
from library_api.problems.responses import problems
from library_api.security.permissions import Permission
from library_api.security.principal import Principal

router = APIRouter(prefix="/bookings", tags=["bookings"], route_class=FastPathRoute)

BookingId = Annotated[int, Path(ge=1, le=2**31 - 1)]
Booker = Annotated[Principal, require(Permission.BOOKINGS_CREATE)]
Viewer = Annotated[Principal, require(Permission.BOOKINGS_READ)]
Canceller = Annotated[Principal, require(Permission.BOOKINGS_CANCEL)]
Manager = Annotated[Principal, require(Permission.BOOKINGS_MANAGE)]
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        pattern=f"^{KEY_PATTERN.pattern}$",
        max_length=255,
        description="Makes a retry return the first answer instead of creating again (1-255 visible ASCII).",
    ),
]

_NEW_BOOKING = {"booking_id": "$response.body#/id"}
LINKS = (
    Link("BookIt", ("POST", "/books"), 201, ("POST", "/bookings"), request_body={"book_id": "$response.body#/id"}),
    Link("GetBooking", ("POST", "/bookings"), 201, ("GET", "/bookings/{booking_id}"), _NEW_BOOKING),
    Link("CancelBooking", ("POST", "/bookings"), 201, ("POST", "/bookings/{booking_id}/cancel"), _NEW_BOOKING),
    Link("ReturnBooking", ("POST", "/bookings"), 201, ("POST", "/bookings/{booking_id}/return"), _NEW_BOOKING),
)
"""A new book can be booked; a new booking can be read, cancelled and returned."""


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    responses=problems(401, 403, 404, 409, 422, 503),
    summary="Book a copy",
    response_model=BookingOut,
)
async def create_booking(
    body: BookingCreate,
    principal: Booker,
    session: SessionDep,
    ctx: ContextDep,
    idempotency_key: IdempotencyKey = None,
) -> BookingOut | Response:
    """Book one copy of a book for ``[start, end)``; 409 when no copy is free for the whole period.

    Send an ``Idempotency-Key`` (a UUID, say) to make retries safe: a retry with the same key and body, after
    a timeout, a 503 or a lost connection, gets the first answer (with ``Idempotent-Replayed: true``) instead
    of a second booking; the same key with another body is a 422, and a retry while the first request still
    runs a 409 ``idempotency-key-in-use``. Keys are per user and kept ``IDEMPOTENCY_KEY_TTL_HOURS``.
    """
    result = await ctx.bookings.create(session, principal, body, idempotency_key)
    if isinstance(result, StoredAnswer):
        return Response(
            result.body,
            status_code=result.status,
            media_type="application/json",
            headers={"Idempotent-Replayed": "true"},
        )
    return result


@fast_path
@router.get(
    "",
    response_model=BookingPage,
    responses={200: LIST_OK, **problems(400, 401, 403, 422)},
    summary="List bookings",
)
async def list_bookings(
    request: Request,
    principal: Viewer,
    ctx: ContextDep,
    user_id: Annotated[int | None, Query(ge=1, le=2**31 - 1, description="Librarians only")] = None,
    book_id: Annotated[int | None, Query(ge=1, le=2**31 - 1)] = None,
    status: BookingStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    offset: Offset = 0,
    cursor: Cursor = None,
) -> Response:
    """The caller's bookings, newest first; librarians see everyone's and may filter by user.

    ``total`` is counted up to ``LIST_TOTAL_CAP`` (``total_relation`` says whether exactly); ``next_cursor``
    and the ``Link`` header lead to the next page at the same cost wherever it is.
    """
    check_window(offset, cursor, ctx.settings.max_list_offset)
    filters = BookingFilters(user_id=user_id, book_id=book_id, status=status)
    window = Window(limit=limit, offset=offset, cursor=cursor, total_cap=ctx.settings.list_total_cap)
    body = await ctx.bookings.page_json(ctx.database, principal, filters, window)
    response = Response(body, media_type="application/json")
    next_cursor = next_cursor_in(body)
    if next_cursor is not None:  # the request's URL is built only for the Link header it then needs
        response.headers.update(link_header(request.url.path, request.url.query, next_cursor))
    return response


@fast_path
@router.get("/{booking_id}", responses=problems(401, 403, 404, 422), summary="One booking")
async def get_booking(booking_id: BookingId, principal: Viewer, ctx: ContextDep) -> BookingOut:
    """A booking of the caller's (or anyone's, for librarians); others' are reported as not found."""
    return await ctx.bookings.get(ctx.database, principal, booking_id)


@router.post("/{booking_id}/cancel", responses=problems(401, 403, 404, 409, 422), summary="Cancel a booking")
async def cancel_booking(
    booking_id: BookingId, principal: Canceller, session: SessionDep, ctx: ContextDep
) -> BookingOut:
    """Cancel an active booking: one's own, or any with ``bookings:manage``."""
    return await ctx.bookings.cancel(session, principal, booking_id)


@router.post("/{booking_id}/return", responses=problems(401, 403, 404, 409, 422), summary="Record a return")
async def return_booking(booking_id: BookingId, principal: Manager, session: SessionDep, ctx: ContextDep) -> BookingOut:
    """Mark an active booking's copy as returned."""
    return await ctx.bookings.mark_returned(session, principal, booking_id)
