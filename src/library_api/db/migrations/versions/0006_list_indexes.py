"""Indexes for pages whose cost does not depend on the table: every sort with its ``id`` tie-breaker.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07

Each catalogue sort (title, year with unknown years last, creation time; either direction) gets a composite
index ending in ``id``, so that a page, and its keyset cursor, is an index range read of ``limit`` rows. The
booking list (newest first) gets ``(status, id)`` and ``(book_id, id)`` for its filters, and ``(status,
end_at)`` for the next instant at which availability changes. ``book_authors`` carries the book's title,
indexed as ``(name_key, title, book_id)``, so that an author's books in title order are one index range read.
The single-column title and creation-time indexes are replaced by their composite forms (which serve every
query the old ones did).

Expand-only with respect to the previous release: it never reads the dropped single-column indexes by name,
and the new ``book_authors.title`` has a default (rows the previous release writes during a rolling deploy
carry an empty title, so such a book sorts first among its author's until it is next changed).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create the composite and sort-key indexes, then drop the single-column ones they replace."""
    op.create_index("ix_books_title_id", "books", ["title", "id"])
    op.create_index("ix_books_created_at_id", "books", ["created_at", "id"])
    op.create_index("ix_books_year_first_id", "books", [sa.text("coalesce(year, 32767)"), "id"])
    op.create_index("ix_books_year_last_id", "books", [sa.text("coalesce(year, -32768)"), "id"])
    op.drop_index("ix_books_title", table_name="books")
    op.drop_index("ix_books_created_at", table_name="books")
    op.create_index("ix_bookings_status_end", "bookings", ["status", "end_at"])
    op.create_index("ix_bookings_status_id", "bookings", ["status", "id"])
    op.create_index("ix_bookings_book_id_id", "bookings", ["book_id", "id"])
    with op.batch_alter_table("book_authors") as batch:
        batch.add_column(sa.Column("title", sa.String(500), nullable=False, server_default=""))
    op.execute("UPDATE book_authors SET title = (SELECT books.title FROM books WHERE books.id = book_authors.book_id)")
    op.create_index("ix_book_authors_name_title", "book_authors", ["name_key", "title", "book_id"])


def downgrade() -> None:
    """Restore the indexes of revision 0005."""
    op.drop_index("ix_book_authors_name_title", table_name="book_authors")
    with op.batch_alter_table("book_authors") as batch:
        batch.drop_column("title")
    for name in ("ix_bookings_book_id_id", "ix_bookings_status_id", "ix_bookings_status_end"):
        op.drop_index(name, table_name="bookings")
    op.create_index("ix_books_created_at", "books", ["created_at"])
    op.create_index("ix_books_title", "books", ["title"])
    for name in ("ix_books_year_last_id", "ix_books_year_first_id", "ix_books_created_at_id", "ix_books_title_id"):
        op.drop_index(name, table_name="books")
