"""The sample catalogue: loading it from the shipped data file and inserting what is missing.

Seeding is idempotent (books whose ISBN is already catalogued are skipped) and runs on a plain connection, so
it can share the start-up transaction that migrates the embedded database.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError
from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from library_api.books.models import Book, BookAuthor, BookTag, author_rows
from library_api.books.repository import search_text
from library_api.books.schemas import BookCreate

_BOOKS = TypeAdapter(list[BookCreate])


class SeedError(Exception):
    """The catalogue file cannot be read or holds an invalid book."""


def load_catalogue(path: Path | None = None) -> list[BookCreate]:
    """Books from ``path``, or from the sample catalogue shipped with the package; validated like API input."""
    try:
        if path is None:
            text = resources.files("library_api.books").joinpath("data/sample_catalogue.json").read_text("utf-8")
        else:
            text = path.read_text(encoding="utf-8")
        raw: Any = json.loads(text)
        return _BOOKS.validate_python(raw)
    except (OSError, ValueError) as exc:
        if isinstance(exc, ValidationError):
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"])
            raise SeedError(f"book {where}: {first['msg']} ({exc.error_count()} problem(s) in all)") from None
        raise SeedError(f"cannot read the catalogue: {exc}") from None


async def catalogue_is_empty(connection: AsyncConnection) -> bool:
    """Whether no book is catalogued yet."""
    return (await connection.execute(select(func.count()).select_from(Book))).scalar_one() == 0


async def seed_catalogue(connection: AsyncConnection, books: list[BookCreate]) -> int:
    """Insert the books whose ISBN is not catalogued yet; return how many were added."""
    existing = set((await connection.execute(select(Book.isbn))).scalars())
    fresh: dict[str, BookCreate] = {}
    for book in books:
        if book.isbn not in existing:
            fresh.setdefault(book.isbn, book)
    if not fresh:
        return 0
    await insert_books(connection, list(fresh.values()))
    return len(fresh)


async def insert_books(connection: AsyncConnection, books: list[BookCreate]) -> None:
    """Insert ``books`` (ISBNs not catalogued yet) with their author and tag rows, in bulk on ``connection``.

    The bulk path of the seed and of ``library-api import``: no per-book ORM objects, no events.
    """
    rows = [
        {
            "isbn": book.isbn,
            "title": book.title,
            "authors": book.authors,
            "tags": book.tags,
            "year": book.year,
            "description": book.description,
            "copies": book.copies,
            "search_text": search_text(book.title, book.authors),
        }
        for book in books
    ]
    await connection.execute(insert(Book), rows)
    found = await connection.execute(select(Book.isbn, Book.id).where(Book.isbn.in_([book.isbn for book in books])))
    ids: dict[str, int] = {row[0]: row[1] for row in found}
    authors = [row for book in books for row in author_rows(ids[book.isbn], book.title, book.authors)]
    tags = [{"book_id": ids[book.isbn], "tag": tag} for book in books for tag in book.tags]
    await connection.execute(insert(BookAuthor), authors)
    if tags:
        await connection.execute(insert(BookTag), tags)
