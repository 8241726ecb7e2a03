"""Catalogue operations: reads for everyone, changes for librarians, events with every committed change.

Each change writes its live event into the outbox in its own transaction (:func:`~library_api.realtime.outbox.record`)
and hands it to the in-process event bus after the commit (cache invalidation, metrics, waking the relay).
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from library_api.books.covers import CoverStore, ImageKind
from library_api.books.models import Book
from library_api.books.repository import BookFilters, BookRepository, Window, search_text
from library_api.books.schemas import BookCreate, BookOut, BookPage, BookSort, BookUpdate
from library_api.db.base import utcnow
from library_api.db.engine import begin_write
from library_api.events import DomainEvent, EventBus
from library_api.holdings.periods import peak_overlap
from library_api.problems import Conflict, NotFound
from library_api.realtime.outbox import record


def book_topics(book_id: int) -> tuple[str, ...]:
    """Where catalogue events about a book are published."""
    return ("books", f"book:{book_id}")


class BookService:
    """The catalogue's rules: unique ISBNs, copies never below what active bookings hold, covers by content."""

    def __init__(self, events: EventBus, covers: CoverStore, api_prefix: str) -> None:
        self._events = events
        self._covers = covers
        self._repository = BookRepository()
        self._api_prefix = api_prefix

    @property
    def covers(self) -> CoverStore:
        """Where cover files live."""
        return self._covers

    def present(self, book: Book, in_use: int) -> BookOut:
        """The public view of a book with its copies free now."""
        cover_url = f"{self._api_prefix}/books/{book.id}/cover" if book.cover_file else None
        return BookOut(
            id=book.id,
            isbn=book.isbn,
            title=book.title,
            authors=list(book.authors),
            tags=list(book.tags),
            year=book.year,
            description=book.description,
            copies=book.copies,
            available_now=max(book.copies - in_use, 0),
            cover_url=cover_url,
            created_at=book.created_at,
            updated_at=book.updated_at,
        )

    async def page(
        self, session: AsyncSession, filters: BookFilters, sort: BookSort, window: Window, now: datetime | None = None
    ) -> BookPage:
        """A page of the catalogue, with the copies available at ``now`` (the present by default)."""
        found = await self._repository.page(session, filters, sort, window, now or utcnow())
        return BookPage(
            items=[self.present(book, used) for book, used in found.rows],
            total=found.total,
            limit=window.limit,
            offset=window.offset,
            total_relation=found.total_relation,
            next_cursor=found.next_cursor,
        )

    async def get(self, session: AsyncSession, book_id: int, now: datetime | None = None) -> BookOut:
        """One book with its copies available at ``now`` (the present by default), or 404."""
        found = await self._repository.get_with_availability(session, book_id, now or utcnow())
        if found is None:
            raise NotFound(f"No book with id {book_id}.")
        return self.present(*found)

    async def next_availability_change(
        self, session: AsyncSession, now: datetime, book_id: int | None = None
    ) -> datetime | None:
        """When copies available of a book (or of any book) next change by the clock alone, if ever.

        Answers computed at ``now`` stay true until then (or until a write, which announces itself).
        """
        return await self._repository.next_availability_change(session, now, book_id)

    async def get_model(self, session: AsyncSession, book_id: int) -> Book:
        """The stored book row, or 404."""
        book = await session.get(Book, book_id)
        if book is None:
            raise NotFound(f"No book with id {book_id}.")
        return book

    async def create(self, session: AsyncSession, data: BookCreate) -> BookOut:
        """Add a book; an ISBN already in the catalogue is a 409."""
        await begin_write(session)
        book = Book(
            isbn=data.isbn,
            title=data.title,
            authors=data.authors,
            tags=data.tags,
            year=data.year,
            description=data.description,
            copies=data.copies,
            search_text=search_text(data.title, data.authors),
        )
        session.add(book)
        try:
            await session.flush()
            self._repository.add_index_rows(session, book)
            view = self.present(book, 0)
            event = self._event("book.created", view)
            await record(session, [event])
            await session.commit()
        except IntegrityError:
            await session.rollback()
            raise Conflict(f"A book with ISBN {data.isbn} is already in the catalogue.") from None
        await self._events.publish(event)
        return view

    async def update(self, session: AsyncSession, book_id: int, changes: BookUpdate) -> BookOut:
        """Change the fields present; copies cannot drop below the peak of active bookings from now on."""
        await begin_write(session)
        book = await self._locked(session, book_id)
        fields = changes.model_fields_set
        if "copies" in fields and changes.copies is not None and changes.copies < book.copies:
            periods = await self._repository.active_periods(session, book_id, utcnow())
            peak = peak_overlap(periods, utcnow())
            if changes.copies < peak:
                raise Conflict(f"{peak} copies are booked at once in the future; copies cannot go below that.")
        for name in ("isbn", "title", "authors", "tags", "copies"):
            value = getattr(changes, name)
            if name in fields and value is not None:
                setattr(book, name, value)
        for name in ("year", "description"):
            if name in fields:
                setattr(book, name, getattr(changes, name))
        book.search_text = search_text(book.title, book.authors)
        try:
            # The flush, not only the commit, may meet the unique ISBN: rewriting the index rows flushes first.
            await session.flush()
            if fields & {"authors", "tags", "title"}:
                await self._repository.replace_index_rows(session, book)
        except IntegrityError:
            await session.rollback()
            raise Conflict(f"A book with ISBN {changes.isbn} is already in the catalogue.") from None
        return await self._commit_update(session, book_id)

    async def delete(self, session: AsyncSession, book_id: int) -> None:
        """Remove a book; refused with 409 while any of its bookings is active."""
        await begin_write(session)
        book = await self._locked(session, book_id)
        if await self._repository.has_active_bookings(session, book_id):
            raise Conflict("The book has active bookings; return or cancel them first.")
        cover = book.cover_file
        await self._repository.delete(session, book)
        event = DomainEvent(type="book.deleted", topics=book_topics(book_id), data={"id": book_id})
        await record(session, [event])
        await session.commit()
        await self._covers.delete(cover)
        await self._events.publish(event)

    async def set_cover(self, session: AsyncSession, book_id: int, data: bytes, kind: ImageKind) -> BookOut:
        """Store a new cover image and replace the old one."""
        name = await self._covers.save(data, kind)
        try:
            await begin_write(session)
            book = await self._locked(session, book_id)
            previous = book.cover_file
            book.cover_file = name
            book.cover_content_type = kind.content_type
            view = await self._commit_update(session, book_id)
        except BaseException:
            await self._covers.delete(name)
            raise
        await self._covers.delete(previous)
        return view

    async def remove_cover(self, session: AsyncSession, book_id: int) -> None:
        """Delete a book's cover image, if it has one."""
        await begin_write(session)
        book = await self._locked(session, book_id)
        previous = book.cover_file
        book.cover_file = None
        book.cover_content_type = None
        await self._commit_update(session, book_id)
        await self._covers.delete(previous)

    def cover_path(self, book: Book) -> Path:
        """The file of a book's cover; the caller checks that there is one."""
        assert book.cover_file is not None
        return self._covers.path(book.cover_file)

    async def _locked(self, session: AsyncSession, book_id: int) -> Book:
        book = await self._repository.lock(session, book_id)
        if book is None:
            raise NotFound(f"No book with id {book_id}.")
        return book

    async def _commit_update(self, session: AsyncSession, book_id: int) -> BookOut:
        """Write ``book.updated`` with the book as the transaction leaves it, commit, then tell the bus."""
        await session.flush()
        view = await self.get(session, book_id)
        event = self._event("book.updated", view)
        await record(session, [event])
        await session.commit()
        await self._events.publish(event)
        return view

    @staticmethod
    def _event(event_type: str, view: BookOut) -> DomainEvent:
        return DomainEvent(type=event_type, topics=book_topics(view.id), data=view.model_dump(mode="json"))
