"""The ``books`` table and its author and tag index tables.

Authors and tags are kept twice on purpose: as JSON lists on the book (what a response shows, in order, with
no join) and as rows in ``book_authors`` / ``book_tags`` keyed by their lower-cased form (what the filters
query through an index). The service writes both in the same transaction.
"""

from __future__ import annotations

from sqlalchemy import JSON, CheckConstraint, ForeignKey, Index, Integer, String, Text, func, literal_column
from sqlalchemy.orm import Mapped, mapped_column

from library_api.db.base import Base, TimestampMixin


class Book(TimestampMixin, Base):
    """A title in the catalogue with a number of physical copies that can be booked."""

    __tablename__ = "books"
    __table_args__ = (
        CheckConstraint("copies >= 1", name="copies_positive"),
        Index("ix_books_title_id", "title", "id"),
        Index("ix_books_year", "year"),
        Index("ix_books_created_at_id", "created_at", "id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    isbn: Mapped[str] = mapped_column(String(13), unique=True)
    title: Mapped[str] = mapped_column(String(500))
    authors: Mapped[list[str]] = mapped_column(JSON, default=list)
    tags: Mapped[list[str]] = mapped_column(JSON, default=list)
    year: Mapped[int | None] = mapped_column(default=None)
    description: Mapped[str | None] = mapped_column(Text, default=None)
    copies: Mapped[int] = mapped_column(default=1)
    search_text: Mapped[str] = mapped_column(Text, default="")
    cover_file: Mapped[str | None] = mapped_column(String(64), default=None)
    cover_content_type: Mapped[str | None] = mapped_column(String(32), default=None)


YEAR_FIRST_KEY = func.coalesce(Book.year, literal_column("32767", Integer))
"""The ``year`` sort key, ascending with unknown years last (years lie within -3000..2100).

A sort on a nullable column cannot be resumed by one row comparison; a key that is never null can, and an index
on exactly this expression (with ``id``) serves both the order and the cursor. The sentinel is written into the
SQL text, not bound, so that the planner recognises the indexed expression.
"""

YEAR_LAST_KEY = func.coalesce(Book.year, literal_column("-32768", Integer))
"""The ``-year`` sort key, read descending with unknown years last."""

Index("ix_books_year_first_id", YEAR_FIRST_KEY, Book.id)
Index("ix_books_year_last_id", YEAR_LAST_KEY, Book.id)


class BookAuthor(Base):
    """One author of a book, lower-cased in ``name_key`` for the author filter, with the book's title.

    The title is the default sort: carried here, ``(name_key, title, book_id)`` makes an author's books in title
    order one index range read, however many books there are by other authors.
    """

    __tablename__ = "book_authors"
    __table_args__ = (
        Index("ix_book_authors_name_key", "name_key", "book_id"),
        Index("ix_book_authors_name_title", "name_key", "title", "book_id"),
    )

    book_id: Mapped[int] = mapped_column(ForeignKey("books.id", ondelete="CASCADE"), primary_key=True)
    position: Mapped[int] = mapped_column(primary_key=True)
    name_key: Mapped[str] = mapped_column(String(300))
    title: Mapped[str] = mapped_column(String(500), server_default="")


def author_rows(book_id: int, title: str, authors: list[str]) -> list[dict[str, object]]:
    """The ``book_authors`` rows of a book: one per distinct lower-cased name, so that a join never repeats a book."""
    rows: list[dict[str, object]] = []
    seen: set[str] = set()
    for position, name in enumerate(authors):
        key = name.lower()
        if key not in seen:
            seen.add(key)
            rows.append({"book_id": book_id, "position": position, "name_key": key, "title": title})
    return rows


class BookTag(Base):
    """One tag of a book (lower-cased), indexed for the tag filter."""

    __tablename__ = "book_tags"
    __table_args__ = (Index("ix_book_tags_tag", "tag", "book_id"),)

    book_id: Mapped[int] = mapped_column(ForeignKey("books.id", ondelete="CASCADE"), primary_key=True)
    tag: Mapped[str] = mapped_column(String(64), primary_key=True)
