"""The catalogue's sort orders, each an index order that a keyset cursor can resume.

Every order is a sort key and ``id`` as the tie-breaker, in the same direction, so that "the rows after this
one" is one row comparison, ``(key, id) > (k, i)`` (or ``<`` descending), which an index on ``(key, id)``
answers as a range read. The ``year`` orders put unknown years last in both directions through a never-null key
(:data:`~library_api.books.models.YEAR_FIRST_KEY`, :data:`~library_api.books.models.YEAR_LAST_KEY`), each with
its own expression index (revision 0006).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, UnaryExpression, tuple_
from sqlalchemy.orm import QueryableAttribute

from library_api.books.models import YEAR_FIRST_KEY, YEAR_LAST_KEY, Book, BookAuthor
from library_api.books.paging import Key, decode_cursor, encode_cursor
from library_api.books.schemas import BookSort

YEAR_UNKNOWN_FIRST = 32767
"""What :data:`YEAR_FIRST_KEY` reads for a book of unknown year."""
YEAR_UNKNOWN_LAST = -32768
"""What :data:`YEAR_LAST_KEY` reads for a book of unknown year."""


@dataclass(frozen=True, slots=True)
class Ordering:
    """One sort order: its key expression (none for ``id``), its direction and how a row's key is read."""

    sort: BookSort
    key: ColumnElement[Any] | QueryableAttribute[Any] | None
    descending: bool
    key_type: type
    value: Callable[[Book], Any]
    """The row's sort key (unused by the ``id`` orders, whose key is the id itself)."""
    tie: Any = Book.id
    """The tie-breaking column: the book's id, or the same id as another table carries it."""

    def order_by(self) -> tuple[UnaryExpression[Any], ...]:
        """The ``ORDER BY`` terms, tie-breaker included."""
        columns: list[Any] = [self.tie] if self.key is None else [self.key, self.tie]
        return tuple(column.desc() if self.descending else column.asc() for column in columns)

    def cursor_of(self, book: Book) -> str:
        """The cursor resuming after ``book``."""
        key = (book.id,) if self.key is None else (self.value(book), book.id)
        return encode_cursor(self.sort.value, key)

    def decode(self, cursor: str) -> Key:
        """The key a cursor of this order carries (400 when it is not one)."""
        types = (int,) if self.key is None else (self.key_type, int)
        return decode_cursor(cursor, self.sort.value, types)

    def after(self, key: Key) -> ColumnElement[bool]:
        """The condition selecting the rows that come after ``key`` in this order."""
        if self.key is None:
            by_id: ColumnElement[bool] = self.tie < key[0] if self.descending else self.tie > key[0]
            return by_id
        row, bound = tuple_(self.key, self.tie), tuple_(*key)
        condition: ColumnElement[bool] = row < bound if self.descending else row > bound
        return condition


def _year_first(book: Book) -> int:
    return YEAR_UNKNOWN_FIRST if book.year is None else book.year


def _year_last(book: Book) -> int:
    return YEAR_UNKNOWN_LAST if book.year is None else book.year


def _title(book: Book) -> str:
    return book.title


def _created(book: Book) -> str:
    return book.created_at.isoformat()


ORDERINGS: dict[BookSort, Ordering] = {
    BookSort.TITLE: Ordering(BookSort.TITLE, Book.title, False, str, _title),
    BookSort.TITLE_DESC: Ordering(BookSort.TITLE_DESC, Book.title, True, str, _title),
    BookSort.YEAR: Ordering(BookSort.YEAR, YEAR_FIRST_KEY, False, int, _year_first),
    BookSort.YEAR_DESC: Ordering(BookSort.YEAR_DESC, YEAR_LAST_KEY, True, int, _year_last),
    BookSort.CREATED: Ordering(BookSort.CREATED, Book.created_at, False, datetime, _created),
    BookSort.CREATED_DESC: Ordering(BookSort.CREATED_DESC, Book.created_at, True, datetime, _created),
    BookSort.ID: Ordering(BookSort.ID, None, False, int, _title),
    BookSort.ID_DESC: Ordering(BookSort.ID_DESC, None, True, int, _title),
}
"""Every sort the list offers, by its query value."""

AUTHOR_ORDERINGS: dict[BookSort, Ordering] = {
    BookSort.TITLE: Ordering(BookSort.TITLE, BookAuthor.title, False, str, _title, BookAuthor.book_id),
    BookSort.TITLE_DESC: Ordering(BookSort.TITLE_DESC, BookAuthor.title, True, str, _title, BookAuthor.book_id),
}
"""The title orders of an author's books, read from ``ix_book_authors_name_title`` (same keys, same cursors)."""
