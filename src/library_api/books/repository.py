"""Catalogue queries: one statement per read, with the copies available now computed in SQL."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    ScalarSelect,
    Select,
    bindparam,
    delete,
    exists,
    func,
    literal_column,
    select,
    true,
)
from sqlalchemy.ext.asyncio import AsyncSession

from library_api.books.models import Book, BookAuthor, BookTag, author_rows
from library_api.books.ordering import AUTHOR_ORDERINGS, ORDERINGS
from library_api.books.paging import TotalRelation, capped_count, decode_cursor, encode_cursor, total_of
from library_api.books.schemas import BookSort
from library_api.books.search import (
    FTS,
    SUBSTRING_BASE,
    SearchQuery,
    full_text_match,
    full_text_relevance,
    parse_query,
    prepare,
    similar_match,
    similarity,
    substring_match,
)
from library_api.db.base import UTCDateTime
from library_api.holdings.models import Booking, BookingStatus


@dataclass(frozen=True, slots=True)
class BookFilters:
    """What a catalogue search narrows by; every field is optional."""

    q: str | None = None
    author: str | None = None
    tags: tuple[str, ...] = ()
    year_from: int | None = None
    year_to: int | None = None
    available: bool | None = None


@dataclass(frozen=True, slots=True)
class Window:
    """Which page of a list: its size, and where it starts (an offset, or a cursor from the previous page)."""

    limit: int
    offset: int = 0
    cursor: str | None = None
    total_cap: int = 1000


@dataclass(frozen=True, slots=True)
class BookRows:
    """One page of books with their copies in use, the capped total and where the next page starts."""

    rows: list[tuple[Book, int]]
    total: int
    total_relation: TotalRelation
    next_cursor: str | None


_NOW = bindparam("now", type_=UTCDateTime())

_HOLDING = (
    Booking.book_id == Book.id,
    Booking.status == BookingStatus.ACTIVE,
    Booking.start_at <= _NOW,
    Booking.end_at > _NOW,
)
"""A booking of the book in hand that holds a copy at the bound instant ``now``."""

IN_USE_NOW: ScalarSelect[int] = select(func.count()).where(*_HOLDING).correlate(Book).scalar_subquery()
"""A correlated count of a book's bookings holding a copy at the bound instant ``now``.

Statements here are built once and executed with parameters: SQLAlchemy then finds the compiled form by its
cache key instead of building and compiling the query on every request.
"""

_BOOK_WITH_USE = select(Book, IN_USE_NOW).where(Book.id == bindparam("book_id"))


_YEAR_SORTS = frozenset({BookSort.YEAR, BookSort.YEAR_DESC})

AnySelect = Select[*tuple[Any, ...]]
"""A ``SELECT`` of any columns."""


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
        self, session: AsyncSession, filters: BookFilters, sort: BookSort, window: Window, now: datetime
    ) -> BookRows:
        """A page of matching books in ``sort`` order, with their copies in use at ``now``.

        Three reads whose cost does not grow with the table: the page itself (an index range read of
        ``limit + 1`` rows after the cursor, the extra row telling whether there is a next page) with the count
        of matches capped at ``total_cap + 1``; then the copies in use of the page's books only.
        """
        postgresql = session.get_bind().dialect.name == "postgresql"
        if sort is BookSort.RELEVANCE:
            if filters.q:
                return await self._by_relevance(session, filters, parse_query(filters.q), window, now, postgresql)
            sort = BookSort.TITLE  # nothing to rank: the default order
        matches = self._filtered(select(literal_column("1")), filters, postgresql, counting=True)
        counted = capped_count(matches, window.total_cap + 1)
        by_author = filters.author is not None and sort in AUTHOR_ORDERINGS
        ordering = AUTHOR_ORDERINGS[sort] if by_author else ORDERINGS[sort]
        statement = self._filtered(select(Book, counted), filters, postgresql, by_author=by_author)
        if sort in _YEAR_SORTS and ordering.key is not None:
            # The year range restated on the sort key: the index read starts at the range, not at the first year.
            if filters.year_from is not None:
                statement = statement.where(ordering.key >= filters.year_from)
            if filters.year_to is not None:
                statement = statement.where(ordering.key <= filters.year_to)
        if window.cursor is not None:
            statement = statement.where(ordering.after(ordering.decode(window.cursor)))
        statement = statement.order_by(*ordering.order_by()).limit(window.limit + 1).offset(window.offset)
        found = (await session.execute(statement, {"now": now})).all()
        # an empty page has no row to carry the count
        count = found[0][1] if found else (await session.execute(select(counted), {"now": now})).scalar_one()
        books = [row[0] for row in found[: window.limit]]
        more = len(found) > window.limit
        in_use = await self._in_use(session, [book.id for book in books], now)
        total, relation = total_of(count, window.total_cap)
        next_cursor = ordering.cursor_of(books[-1]) if more else None
        return BookRows([(book, in_use.get(book.id, 0)) for book in books], total, relation, next_cursor)

    async def _by_relevance(
        self,
        session: AsyncSession,
        filters: BookFilters,
        query: SearchQuery,
        window: Window,
        now: datetime,
        postgresql: bool,
    ) -> BookRows:
        """A page of the matches of ``query`` (and of the other filters), best first.

        The candidates are read as ``(id, relevance)`` pairs, at most ``total_cap + 1`` of them: the full-text
        matches from the GIN index, stopping there; then, for a plain query and only while fewer have been found,
        substring matches, then similar words (each read stops at what is missing). They are ranked here (see
        :mod:`library_api.books.search`); the page is the ``limit`` after the cursor, which carries the relevance
        and the id of the previous page's last book, and only its books are loaded. When more books match than
        the cap (``total_relation`` ``gte``), the ranking covers those candidates and the pages end with them: a
        narrower query, or an explicit ``sort``, reaches the others.
        """
        rest = replace(filters, q=None)
        cap = window.total_cap + 1
        if postgresql:
            await prepare(session)
        scored = select(Book.id, full_text_relevance(query, postgresql))
        if not postgresql:
            scored = scored.select_from(FTS).join(Book, Book.id == FTS.c.rowid)
        matched = self._filtered(scored, rest, postgresql).where(full_text_match(query, postgresql))
        found = await self._first(session, matched, cap, now)
        if query.plain is not None:
            tiers = [(substring_match(query.plain), similarity(query.plain, postgresql) + SUBSTRING_BASE)]
            if postgresql:
                tiers.append((similar_match(query.plain), similarity(query.plain, postgresql)))
            for condition, score in tiers:
                if len(found) >= cap:
                    break
                more = self._filtered(select(Book.id, score), rest, postgresql).where(condition)
                if found:
                    more = more.where(Book.id.not_in(list(found)))
                found.update(await self._first(session, more, cap - len(found), now))
        ranked = sorted(found.items(), key=lambda pair: (-pair[1], pair[0]))
        if window.cursor is not None:
            after_relevance, after_id = decode_cursor(window.cursor, BookSort.RELEVANCE.value, (float, int))
            ranked = [pair for pair in ranked if (-pair[1], pair[0]) > (-after_relevance, after_id)]
        chosen = ranked[window.offset : window.offset + window.limit + 1]
        page = chosen[: window.limit]
        loaded = await session.execute(select(Book).where(Book.id.in_([book_id for book_id, _ in page])))
        books = {book.id: book for book in loaded.scalars()}
        in_use = await self._in_use(session, list(books), now)
        total, relation = total_of(len(found), window.total_cap)
        last = page[-1] if len(chosen) > window.limit else None
        next_cursor = None if last is None else encode_cursor(BookSort.RELEVANCE.value, (last[1], last[0]))
        rows = [(books[book_id], in_use.get(book_id, 0)) for book_id, _ in page if book_id in books]
        return BookRows(rows, total, relation, next_cursor)

    @staticmethod
    async def _first(session: AsyncSession, statement: AnySelect, count: int, now: datetime) -> dict[int, float]:
        """The first ``count`` ``(id, relevance)`` pairs ``statement`` selects, by id.

        In the order an index read yields them, the same on every page (see :func:`library_api.books.search.prepare`):
        all the matches when there are fewer, else the first ``count`` in the table's order (on a catalogue that
        only grows, the oldest), read without visiting the others.
        """
        return {row[0]: row[1] for row in await session.execute(statement.limit(count), {"now": now})}

    async def _in_use(self, session: AsyncSession, book_ids: list[int], now: datetime) -> dict[int, int]:
        """The copies in use at ``now`` of each of these books (absent: none), read for them alone."""
        if not book_ids:
            return {}
        statement = (
            select(Booking.book_id, func.count())
            .where(
                Booking.book_id.in_(book_ids),
                Booking.status == BookingStatus.ACTIVE,
                Booking.start_at <= _NOW,
                Booking.end_at > _NOW,
            )
            .group_by(Booking.book_id)
        )
        rows = (await session.execute(statement, {"now": now})).all()
        return {row[0]: row[1] for row in rows}

    def _filtered(
        self,
        statement: AnySelect,
        filters: BookFilters,
        postgresql: bool,
        *,
        counting: bool = False,
        by_author: bool = False,
    ) -> AnySelect:
        """``statement`` over ``books`` narrowed by ``filters``.

        Authors and tags are semi-joins on their index tables (``ix_book_authors_name_key``,
        ``ix_book_tags_tag``), which the planner may read first for a rare value or probe while walking the sort
        order for a common one. Availability on PostgreSQL is a ``LATERAL`` join counting the copies in use of
        each book the read walks, so a page stops probing when it is full; SQLite (the embedded, small-catalogue
        default) has no ``LATERAL`` and compares the same count as a correlated subquery.

        ``counting`` (the capped count, which needs no order) starts from the first tag's index rows instead,
        joined to their books: a thousand index entries and probes rather than a walk of the books in id order
        until a thousand of them carry the tag. Each book has a tag once, so nothing is counted twice.

        ``by_author`` (a title order with an author filter) starts from that author's rows instead, joined to
        their books, so that the page reads ``ix_book_authors_name_title`` in order: the author's books by
        title, however rare they are among the others. A book has each lower-cased author name once.
        """
        tags = [tag.strip().lower() for tag in filters.tags]
        author = filters.author.strip().lower() if filters.author else None
        if by_author and author is not None:
            statement = statement.select_from(BookAuthor).join(Book, Book.id == BookAuthor.book_id)
            statement, author = statement.where(BookAuthor.name_key == author), None
        elif counting and tags:
            first = tags.pop(0)
            statement = statement.select_from(BookTag).join(Book, Book.id == BookTag.book_id)
            statement = statement.where(BookTag.tag == first)
        else:
            statement = statement.select_from(Book)
        if filters.q:
            statement = statement.where(self._matching(parse_query(filters.q), postgresql))
        if author is not None:
            statement = statement.where(Book.id.in_(select(BookAuthor.book_id).where(BookAuthor.name_key == author)))
        for tag in tags:
            statement = statement.where(Book.id.in_(select(BookTag.book_id).where(BookTag.tag == tag)))
        if filters.year_from is not None:
            statement = statement.where(Book.year >= filters.year_from)
        if filters.year_to is not None:
            statement = statement.where(Book.year <= filters.year_to)
        if filters.available is None:
            return statement
        in_use: ColumnElement[int]
        if postgresql:
            held = select(func.count().label("held")).where(*_HOLDING).lateral("in_use")
            statement = statement.join(held, true())
            in_use = held.c.held
        else:
            in_use = IN_USE_NOW
        return statement.where(in_use < Book.copies if filters.available else in_use >= Book.copies)

    @staticmethod
    def _matching(query: SearchQuery, postgresql: bool) -> ColumnElement[bool]:
        """Whether a book matches ``q`` in an explicit order: in full text, or (a plain query) as substrings."""
        full_text = full_text_match(query, postgresql)
        if not postgresql:
            full_text = Book.id.in_(select(FTS.c.rowid).where(full_text))
        return full_text if query.plain is None else full_text | substring_match(query.plain)

    async def replace_index_rows(self, session: AsyncSession, book: Book) -> None:
        """Rewrite the author and tag rows the filters use so they match the book's lists."""
        await session.execute(delete(BookAuthor).where(BookAuthor.book_id == book.id))
        await session.execute(delete(BookTag).where(BookTag.book_id == book.id))
        self.add_index_rows(session, book)

    def add_index_rows(self, session: AsyncSession, book: Book) -> None:
        """Add the author and tag rows of a book that has just been given its id."""
        session.add_all(BookAuthor(**row) for row in author_rows(book.id, book.title, book.authors))
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
        # The first start after now and the first end after now: each the head of an index range
        # (ix_bookings_status_start, ix_bookings_status_end), not a pass over every active booking.
        active = Booking.status == BookingStatus.ACTIVE
        starts = select(func.min(Booking.start_at)).where(active, Booking.start_at > now)
        ends = select(func.min(Booking.end_at)).where(active, Booking.end_at > now)
        if book_id is not None:
            starts, ends = starts.where(Booking.book_id == book_id), ends.where(Booking.book_id == book_id)
        row = (await session.execute(select(starts.scalar_subquery(), ends.scalar_subquery()))).one()
        moments: list[datetime] = [moment for moment in row if moment is not None]
        return min(moments, default=None)

    async def has_active_bookings(self, session: AsyncSession, book_id: int) -> bool:
        """Whether any booking of the book is still active (returned or cancelled ones do not count)."""
        query = select(exists().where(Booking.book_id == book_id, Booking.status == BookingStatus.ACTIVE))
        return bool((await session.execute(query)).scalar())

    async def delete(self, session: AsyncSession, book: Book) -> None:
        """Delete a book with its closed bookings (history of a title that no longer exists)."""
        await session.execute(delete(Booking).where(Booking.book_id == book.id))
        await session.delete(book)
