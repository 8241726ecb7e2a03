"""Booking rules: never more active bookings at one instant than the book has copies.

The check and the insert happen under a lock on the book: ``SELECT ... FOR UPDATE`` of the book row on
PostgreSQL, ``BEGIN IMMEDIATE`` (the database write lock) on SQLite. Concurrent requests for the same book,
from any connection or server process, therefore decide one after another, each seeing the bookings
committed before it.

Every change writes its live event into the outbox in the same transaction
(:func:`~library_api.realtime.outbox.record`), and hands it to the in-process event bus once committed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Integer, Select, bindparam, literal_column, select
from sqlalchemy.ext.asyncio import AsyncSession

from library_api.bookings.page_cache import BookingPages
from library_api.bookings.schemas import BookingCreate, BookingOut, BookingPage
from library_api.books.paging import capped_count, decode_cursor, encode_cursor, total_of
from library_api.books.repository import BookRepository, Window
from library_api.db.base import utcnow
from library_api.db.engine import Database, begin_write
from library_api.db.reads import HotRead
from library_api.events import DomainEvent, EventBus
from library_api.holdings.models import Booking, BookingStatus
from library_api.holdings.periods import peak_overlap
from library_api.idempotency.store import Claim, IdempotencyStore, StoredAnswer
from library_api.problems import Conflict, Forbidden, InvalidInput, NotFound
from library_api.realtime.outbox import record
from library_api.security.permissions import Permission
from library_api.security.principal import Principal


@dataclass(frozen=True, slots=True)
class BookingFilters:
    """What a librarian's booking list narrows by (readers always see only their own)."""

    user_id: int | None = None
    book_id: int | None = None
    status: BookingStatus | None = None


def present(booking: Booking) -> BookingOut:
    """The public view of a booking."""
    return BookingOut(
        id=booking.id,
        book_id=booking.book_id,
        user_id=booking.user_id,
        start=booking.start_at,
        end=booking.end_at,
        status=BookingStatus(booking.status),
        created_at=booking.created_at,
        closed_at=booking.closed_at,
    )


_VIEW_COLUMNS = (
    Booking.id,
    Booking.book_id,
    Booking.user_id,
    Booking.start_at,
    Booking.end_at,
    Booking.status,
    Booking.created_at,
    Booking.closed_at,
)
"""What :class:`BookingOut` shows; reads select these plain columns, sparing the ORM's per-row object work."""


_ANY_BOOKING = HotRead(select(*_VIEW_COLUMNS).where(Booking.id == bindparam("booking_id")))
_OWN_BOOKING = HotRead(_ANY_BOOKING.statement.where(Booking.user_id == bindparam("user_id")))
_OWNED = Booking.user_id == bindparam("user_id")
_OWN_COUNT = HotRead(
    select(
        capped_count(
            select(literal_column("1")).select_from(Booking).where(_OWNED),
            bindparam("count_limit", type_=Integer),
        ).label("total")
    )
)
_OWN_PAGE = HotRead(
    select(
        *_VIEW_COLUMNS,
        capped_count(
            select(literal_column("1")).select_from(Booking).where(_OWNED),
            bindparam("count_limit", type_=Integer),
        ).label("total"),
    )
    .where(_OWNED, Booking.id < bindparam("before", type_=Integer))
    .order_by(Booking.id.desc())
    .limit(bindparam("limit", type_=Integer))
    .offset(bindparam("offset", type_=Integer))
)
"""The hot reads (one booking; a reader's own unfiltered page), built and compiled once: a request only binds
parameters, and on PostgreSQL the driver runs them directly (:mod:`library_api.db.reads`).

A page is read newest first from ``before`` (the id its cursor carries; past every id without one), with its
count of matches capped: an index range read of ``limit + 1`` rows and at most ``cap + 1`` index entries."""

CURSOR_SORT = "-id"
"""The one order of booking lists (newest first), named in their cursors."""
_PAST_EVERY_ID = 2**31 - 1
"""A ``before`` no booking id reaches: the start of the list."""


def present_row(row: Mapping[Any, Any]) -> BookingOut:
    """The public view of a booking read as the columns of :data:`_VIEW_COLUMNS`, by label."""
    return BookingOut(
        id=row["id"],
        book_id=row["book_id"],
        user_id=row["user_id"],
        start=row["start_at"],
        end=row["end_at"],
        status=BookingStatus(row["status"]),
        created_at=row["created_at"],
        closed_at=row["closed_at"],
    )


class BookingService:
    """Creating, listing, cancelling and returning bookings."""

    def __init__(
        self,
        events: EventBus,
        max_length: timedelta,
        start_grace: timedelta,
        idempotency: IdempotencyStore | None = None,
        pages: BookingPages | None = None,
    ) -> None:
        self._events = events
        self._pages = pages
        self._books = BookRepository()
        self._max_length = max_length
        self._start_grace = start_grace
        self._idempotency = idempotency or IdempotencyStore(timedelta(hours=24))

    async def create(
        self, session: AsyncSession, principal: Principal, data: BookingCreate, idempotency_key: str | None = None
    ) -> BookingOut | StoredAnswer:
        """Book one copy for the caller, or 409 when every copy is taken at some instant of the period.

        With ``idempotency_key`` the key is claimed in the booking's own transaction, and a retry with the same
        key and body returns the first answer (a :class:`StoredAnswer`) instead of booking again (see
        :mod:`library_api.idempotency.store`).
        """
        user_id = self._owner(principal)
        start, end = data.start.astimezone(UTC), data.end.astimezone(UTC)
        now = utcnow()
        if end <= start:
            raise InvalidInput("The booking must end after it starts.", field="body.end")
        if start < now - self._start_grace:
            raise InvalidInput("The booking cannot start in the past.", field="body.start")
        if end - start > self._max_length:
            days = self._max_length.total_seconds() / 86400
            raise InvalidInput(f"A booking lasts at most {days:g} days.", field="body.end")
        await begin_write(session)
        claim: Claim | None = None
        if idempotency_key is not None:
            claimed = await self._idempotency.claim(
                session, user_id, "bookings.create", idempotency_key, data.model_dump(mode="json")
            )
            if isinstance(claimed, StoredAnswer):
                await session.rollback()
                return claimed
            claim = claimed
        book = await self._books.lock(session, data.book_id)
        if book is None:
            raise NotFound(f"No book with id {data.book_id}.")
        periods = await self._books.active_periods(session, book.id, start)
        if peak_overlap(periods, start, end) + 1 > book.copies:
            raise Conflict("No copy of this book is free for the whole period.")
        booking = Booking(book_id=book.id, user_id=user_id, start_at=start, end_at=end, status=BookingStatus.ACTIVE)
        session.add(booking)
        await session.flush()
        view = present(booking)
        if claim is not None:
            await self._idempotency.answer(session, claim, 201, view.model_dump_json())
        return await self._commit("booking.created", session, view)

    async def page_json(
        self, database: Database, principal: Principal, filters: BookingFilters, window: Window
    ) -> bytes:
        """:meth:`page` as the JSON of its answer; a reader's own unfiltered page through the page cache.

        Only that page is cached (:mod:`library_api.bookings.page_cache`): its answer changes only with the
        reader's own bookings, whose every change invalidates it. Librarians' and filtered lists are read each time.
        """

        async def load() -> bytes:
            return (await self.page(database, principal, filters, window)).model_dump_json(by_alias=True).encode()

        user_id = principal.user_id
        if (
            self._pages is None
            or user_id is None
            or filters != BookingFilters()
            or principal.can(Permission.BOOKINGS_READ_ANY)
        ):
            return await load()
        return await self._pages.page(user_id, window, load)

    async def page(
        self, database: Database, principal: Principal, filters: BookingFilters, window: Window
    ) -> BookingPage:
        """Bookings the caller may see, newest first: their own, or anyone's with ``bookings:read:any``.

        A page is an index range read (``id``, or ``(user_id, id)``, ``(status, id)``, ``(book_id, id)`` for a
        filter) of ``limit + 1`` rows after the cursor, with the count of matches capped at ``total_cap + 1``.
        """
        sees_all = principal.can(Permission.BOOKINGS_READ_ANY)
        before = _PAST_EVERY_ID if window.cursor is None else decode_cursor(window.cursor, CURSOR_SORT, (int,))[0]
        if not sees_all and filters == BookingFilters():
            count_limit = window.total_cap + 1
            parameters = {
                "user_id": self._owner(principal),
                "before": before,
                "count_limit": count_limit,
                "limit": window.limit + 1,
                "offset": window.offset,
            }
            rows = await _OWN_PAGE.fetch(database, parameters)
            if rows:
                count = rows[0]["total"]
            else:  # an empty page has no row to carry the count
                counts = await _OWN_COUNT.fetch(
                    database, {"user_id": parameters["user_id"], "count_limit": count_limit}
                )
                count = counts[0]["total"]
        else:
            rows, count = await self._filtered_page(database, principal, filters, window, before, sees_all=sees_all)
        total, relation = total_of(count, window.total_cap)
        more = len(rows) > window.limit
        items = [present_row(row) for row in rows[: window.limit]]
        return BookingPage(
            items=items,
            total=total,
            limit=window.limit,
            offset=window.offset,
            total_relation=relation,
            next_cursor=encode_cursor(CURSOR_SORT, (items[-1].id,)) if more else None,
        )

    async def _filtered_page(
        self,
        database: Database,
        principal: Principal,
        filters: BookingFilters,
        window: Window,
        before: int,
        *,
        sees_all: bool,
    ) -> tuple[Sequence[Mapping[Any, Any]], int]:
        """A page and its capped count for a librarian's list or a filtered one, built for the filters given."""
        conditions = self._conditions(principal, filters, sees_all=sees_all)
        matches: Select[*tuple[Any, ...]] = select(literal_column("1")).select_from(Booking).where(*conditions)
        counted = capped_count(matches, window.total_cap + 1)
        statement = (
            select(*_VIEW_COLUMNS, counted.label("total"))
            .where(*conditions, Booking.id < before)
            .order_by(Booking.id.desc())
            .limit(window.limit + 1)
            .offset(window.offset)
        )
        async with database.read_connection() as connection:
            rows = (await connection.execute(statement)).mappings().all()
            if rows:
                return rows, rows[0]["total"]
        async with database.read_connection() as connection:  # an empty page has no row to carry the count
            return rows, (await connection.execute(select(counted))).scalar_one()

    def _conditions(
        self, principal: Principal, filters: BookingFilters, *, sees_all: bool
    ) -> list[ColumnElement[bool]]:
        conditions: list[ColumnElement[bool]] = []
        if not sees_all:
            conditions.append(Booking.user_id == self._owner(principal))
        elif filters.user_id is not None:
            conditions.append(Booking.user_id == filters.user_id)
        if filters.book_id is not None:
            conditions.append(Booking.book_id == filters.book_id)
        if filters.status is not None:
            conditions.append(Booking.status == filters.status)
        return conditions

    async def get(self, database: Database, principal: Principal, booking_id: int) -> BookingOut:
        """One booking; another reader's booking is reported as not found."""
        if principal.can(Permission.BOOKINGS_READ_ANY):
            rows = await _ANY_BOOKING.fetch(database, {"booking_id": booking_id})
        else:
            parameters = {"booking_id": booking_id, "user_id": self._owner(principal)}
            rows = await _OWN_BOOKING.fetch(database, parameters)
        if not rows:
            raise NotFound(f"No booking with id {booking_id}.")
        return present_row(rows[0])

    async def cancel(self, session: AsyncSession, principal: Principal, booking_id: int) -> BookingOut:
        """Cancel an active booking: its owner may, and so may anyone with ``bookings:manage``."""
        await begin_write(session)
        booking = await self._visible(session, principal, booking_id, lock=True)
        if booking.user_id != principal.user_id and not principal.can(Permission.BOOKINGS_MANAGE):
            raise NotFound(f"No booking with id {booking_id}.")
        return await self._close(session, booking, BookingStatus.CANCELLED, "booking.cancelled")

    async def mark_returned(self, session: AsyncSession, principal: Principal, booking_id: int) -> BookingOut:
        """Record the copy's return (librarians, via the route's ``bookings:manage``)."""
        await begin_write(session)
        booking = await self._visible(session, principal, booking_id, lock=True)
        return await self._close(session, booking, BookingStatus.RETURNED, "booking.returned")

    async def _close(
        self, session: AsyncSession, booking: Booking, status: BookingStatus, event_type: str
    ) -> BookingOut:
        if booking.status != BookingStatus.ACTIVE:
            raise Conflict(f"The booking is already {booking.status}.")
        booking.status = status
        booking.closed_at = utcnow()
        return await self._commit(event_type, session, present(booking))

    async def _visible(
        self, session: AsyncSession, principal: Principal, booking_id: int, *, lock: bool = False
    ) -> Booking:
        statement = select(Booking).where(Booking.id == booking_id)
        if not principal.can(Permission.BOOKINGS_READ_ANY):
            statement = statement.where(Booking.user_id == self._owner(principal))
        if lock:
            statement = statement.with_for_update()
        booking = (await session.execute(statement)).scalar_one_or_none()
        if booking is None:
            raise NotFound(f"No booking with id {booking_id}.")
        return booking

    @staticmethod
    def _owner(principal: Principal) -> int:
        if principal.user_id is None:
            raise Forbidden("Bookings belong to user accounts; this credential does not belong to one.")
        return principal.user_id

    async def _commit(self, event_type: str, session: AsyncSession, view: BookingOut) -> BookingOut:
        """Write the booking's event in the transaction, commit it, then tell the in-process bus."""
        event = DomainEvent(
            type=event_type,
            topics=("bookings", f"book:{view.book_id}"),
            data=view.model_dump(mode="json"),
            owner_id=view.user_id,
        )
        await record(session, [event])
        await session.commit()
        await self._events.publish(event)
        return view
