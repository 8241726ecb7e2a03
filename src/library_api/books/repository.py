"""Catalogue queries: one statement per read, with the copies available now computed in SQL."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, ScalarSelect, bindparam, case, delete, exists, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from library_api.bookings.models import Booking, BookingStatus
from library_api.books.models import Book, BookAuthor, BookTag
from library_api.books.schemas import BookSort
from library_api.db.base import UTCDateTime


@dataclass(frozen=True, slots=True)
class BookFilters:
    """What a catalogue search narrows by; every field is optional."""

    q: str | None = None
    author: str | None = None
    tags: tuple[str, ...] = ()
    year_from: int | None = None
    year_to: int | None = None
    available: bool | None = None


_SORTS: dict[BookSort, Any] = {
    BookSort.TITLE: Book.title.asc(),
    BookSort.TITLE_DESC: Book.title.desc(),
    BookSort.YEAR: Book.year.asc().nulls_last(),
    BookSort.YEAR_DESC: Book.year.desc().nulls_last(),
    BookSort.CREATED: Book.created_at.asc(),
    BookSort.CREATED_DESC: Book.created_at.desc(),
    BookSort.ID: Book.id.asc(),
    BookSort.ID_DESC: Book.id.desc(),
}


_NOW = bindparam("now", type_=UTCDateTime())

IN_USE_NOW: ScalarSelect[int] = (
    select(func.count())
    .where(
        Booking.book_id == Book.id,
        Booking.status == BookingStatus.ACTIVE,
        Booking.start_at <= _NOW,
        Booking.end_at > _NOW,
    )
    .correlate(Book)
    .scalar_subquery()
)
"""A correlated count of a book's bookings holding a copy at the bound instant ``now``.

Statements here are built once and executed with parameters: SQLAlchemy then finds the compiled form by its
cache key instead of building and compiling the query on every request.
"""

_BOOK_WITH_USE = select(Book, IN_USE_NOW).where(Book.id == bindparam("book_id"))


def search_text(title: str, authors: list[str]) -> str:
    """The lower-cased text ``q`` searches: the title and every author."""
    return " | ".join([title, *authors]).lower()


class BookRepository:
    """Reads and writes of books and their author/tag index rows."""

    async def get_with_availability(
        self, session: AsyncSession, book_id: int, now: datetime
    ) -> tuple[Book, int] | None:
        """A book and the number of its copies in use at ``now``."""
        row = (await session.execute(_BOOK_WITH_USE, {"book_id": book_id, "now": now})).one_or_none()
        return None if row is None else (row[0], row[1])

    async def lock(self, session: AsyncSession, book_id: int) -> Book | None:
        """Load a book for change, holding its row lock on PostgreSQL until the transaction ends."""
        result = await session.execute(
            select(Book).where(Book.id == book_id).with_for_update().execution_options(populate_existing=True)
        )
        return result.scalar_one_or_none()

    async def page(
        self, session: AsyncSession, filters: BookFilters, sort: BookSort, limit: int, offset: int, now: datetime
    ) -> tuple[list[tuple[Book, int]], int]:
        """A page of matching books with their copies in use, and the total number of matches."""
        in_use = IN_USE_NOW
        conditions = self._conditions(filters, in_use)
        statement = (
            select(Book, in_use, func.count().over())
            .where(*conditions)
            .order_by(_SORTS[sort], Book.id.asc() if not sort.value.startswith("-") else Book.id.desc())
            .limit(limit)
            .offset(offset)
        )
        rows = (await session.execute(statement, {"now": now})).all()
        if rows:
            return [(row[0], row[1]) for row in rows], rows[0][2]
        if offset == 0:
            return [], 0
        count = select(func.count()).select_from(Book).where(*conditions)
        total = (await session.execute(count, {"now": now})).scalar_one()
        return [], total

    def _conditions(self, filters: BookFilters, in_use: ColumnElement[int]) -> list[ColumnElement[bool]]:
        conditions: list[ColumnElement[bool]] = []
        if filters.q:
            conditions.append(Book.search_text.contains(filters.q.lower(), autoescape=True))
        if filters.author:
            conditions.append(
                exists().where(BookAuthor.book_id == Book.id, BookAuthor.name_key == filters.author.strip().lower())
            )
        for tag in filters.tags:
            conditions.append(exists().where(BookTag.book_id == Book.id, BookTag.tag == tag.strip().lower()))
        if filters.year_from is not None:
            conditions.append(Book.year >= filters.year_from)
        if filters.year_to is not None:
            conditions.append(Book.year <= filters.year_to)
        if filters.available is True:
            conditions.append(in_use < Book.copies)
        elif filters.available is False:
            conditions.append(in_use >= Book.copies)
        return conditions

    async def replace_index_rows(self, session: AsyncSession, book: Book) -> None:
        """Rewrite the author and tag rows the filters use so they match the book's lists."""
        await session.execute(delete(BookAuthor).where(BookAuthor.book_id == book.id))
        await session.execute(delete(BookTag).where(BookTag.book_id == book.id))
        self.add_index_rows(session, book)

    def add_index_rows(self, session: AsyncSession, book: Book) -> None:
        """Add the author and tag rows of a book that has just been given its id."""
        session.add_all(BookAuthor(book_id=book.id, position=i, name_key=a.lower()) for i, a in enumerate(book.authors))
        session.add_all(BookTag(book_id=book.id, tag=tag) for tag in book.tags)

    async def active_periods(
        self, session: AsyncSession, book_id: int, since: datetime
    ) -> list[tuple[datetime, datetime]]:
        """The periods of a book's active bookings that have not ended by ``since``."""
        rows = await session.execute(
            select(Booking.start_at, Booking.end_at).where(
                Booking.book_id == book_id, Booking.status == BookingStatus.ACTIVE, Booking.end_at > since
            )
        )
        return [(row[0], row[1]) for row in rows]

    async def next_availability_change(
        self, session: AsyncSession, now: datetime, book_id: int | None = None
    ) -> datetime | None:
        """The first instant after ``now`` at which an active booking (of one book, or of any) starts or ends.

        Until then the copies available now, and so every catalogue answer, stay as they are: it bounds how
        long such an answer may be cached.
        """
        boundary = case((Booking.start_at > now, Booking.start_at), else_=Booking.end_at)
        query = select(func.min(boundary)).where(Booking.status == BookingStatus.ACTIVE, Booking.end_at > now)
        if book_id is not None:
            query = query.where(Booking.book_id == book_id)
        value: datetime | None = (await session.execute(query)).scalar_one()
        return value

    async def has_active_bookings(self, session: AsyncSession, book_id: int) -> bool:
        """Whether any booking of the book is still active (returned or cancelled ones do not count)."""
        query = select(exists().where(Booking.book_id == book_id, Booking.status == BookingStatus.ACTIVE))
        return bool((await session.execute(query)).scalar())

    async def delete(self, session: AsyncSession, book: Book) -> None:
        """Delete a book with its closed bookings (history of a title that no longer exists)."""
        await session.execute(delete(Booking).where(Booking.book_id == book.id))
        await session.delete(book)
