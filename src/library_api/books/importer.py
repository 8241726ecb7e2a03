"""Bulk import of books from CSV or JSON Lines: validated like API input, committed in batches, safe to re-run.

Each row is checked exactly as ``POST /books`` checks its body (ISBN check digit, lengths, tags, copies); a row
that fails is reported with its line number and the reason, and the rest go on. Rows are inserted in batches,
each batch its own transaction: an interrupted import keeps the batches it committed, and running it again
skips every ISBN already catalogued (in either notation, since ISBNs are stored as ISBN-13), so re-running or
resuming never duplicates a book. An ISBN repeated within the file is imported once (its first row).

CSV files have a header row naming the columns ``isbn``, ``title``, ``authors``, ``tags``, ``year``,
``description``, ``copies``; ``authors`` and ``tags`` hold several values separated by ``;``. JSON Lines files
hold one object per line with the fields of ``POST /books``; blank lines are skipped.

Books imported this way publish no events: a cached list page may be served until ``CACHE_DEFAULT_TIMEOUT``.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from library_api.books.models import Book
from library_api.books.schemas import BookCreate
from library_api.books.seed import insert_books

Format = Literal["csv", "jsonl"]
"""The file formats an import reads."""

BATCH_SIZE = 1000
"""Books per transaction: large enough for speed, small enough that an interruption loses little."""

_LIST_SEPARATOR = ";"
_CSV_COLUMNS = ("isbn", "title", "authors", "tags", "year", "description", "copies")


class ImportFileError(Exception):
    """The file cannot be read at all (missing, unknown format, a CSV without the needed header)."""


@dataclass(frozen=True, slots=True)
class Rejected:
    """A row that was not imported: its line in the file and why."""

    line: int
    reason: str


@dataclass(slots=True)
class ImportReport:
    """What an import did: books added, books already catalogued, and the rows rejected."""

    imported: int = 0
    already: int = 0
    rejected: list[Rejected] = field(default_factory=list)


def detect_format(path: Path, given: Format | None) -> Format:
    """The format named, or the one the file's suffix says (``.csv``; ``.jsonl``, ``.ndjson``)."""
    if given is not None:
        return given
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix in {".jsonl", ".ndjson"}:
        return "jsonl"
    raise ImportFileError(f"cannot tell the format of {path.name}: use a .csv or .jsonl name, or --format")


def count_lines(path: Path) -> int:
    """The number of lines in the file (the length of the progress bar)."""
    with path.open("rb") as handle:
        return sum(1 for _ in handle)


def read_rows(path: Path, kind: Format) -> Iterator[tuple[int, dict[str, Any] | str]]:
    """Each data row as ``(line number, fields)``, or ``(line number, reason)`` when it cannot be parsed."""
    try:
        handle = path.open(encoding="utf-8", newline="")
    except OSError as exc:
        raise ImportFileError(f"cannot read {path}: {exc.strerror}") from None
    with handle:
        try:
            yield from _csv_rows(handle) if kind == "csv" else _json_rows(handle)
        except UnicodeDecodeError:
            raise ImportFileError(f"{path.name} is not UTF-8 text") from None


def _csv_rows(handle: Iterable[str]) -> Iterator[tuple[int, dict[str, Any] | str]]:
    reader = csv.DictReader(handle)
    missing = {"isbn", "title", "authors"} - set(reader.fieldnames or ())
    if missing:
        raise ImportFileError(f"the CSV header lacks the column(s) {', '.join(sorted(missing))}")
    for row in reader:
        line = reader.line_num
        if None in row:
            yield line, "more fields than the header names"
            continue
        values: dict[str, Any] = {k: v for k, v in row.items() if k in _CSV_COLUMNS and v not in (None, "")}
        for name in ("authors", "tags"):
            if name in values:
                values[name] = [part.strip() for part in values[name].split(_LIST_SEPARATOR) if part.strip()]
        yield line, values


def _json_rows(handle: Iterable[str]) -> Iterator[tuple[int, dict[str, Any] | str]]:
    for line, text in enumerate(handle, start=1):
        if not text.strip():
            continue
        try:
            value = json.loads(text)
        except ValueError as exc:
            yield line, f"not JSON: {exc}"
            continue
        yield line, value if isinstance(value, dict) else "not a JSON object"


def validate(fields: dict[str, Any]) -> BookCreate | str:
    """The book a row describes, or the first reason it is refused (with the number of problems)."""
    try:
        return BookCreate.model_validate(fields)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "row"
        more = f" ({exc.error_count()} problems)" if exc.error_count() > 1 else ""
        return f"{where}: {first['msg']}{more}"


async def import_books(
    engine: AsyncEngine,
    rows: Iterable[tuple[int, dict[str, Any] | str]],
    progress: Callable[[int], None] | None = None,
    batch_size: int = BATCH_SIZE,
) -> ImportReport:
    """Validate and insert every row, a batch per transaction; ``progress`` hears each row's line number."""
    report = ImportReport()
    batch: dict[str, BookCreate] = {}
    for line, parsed in rows:
        book = validate(parsed) if isinstance(parsed, dict) else parsed
        if isinstance(book, str):
            report.rejected.append(Rejected(line, book))
        elif book.isbn in batch:
            report.already += 1
        else:
            batch[book.isbn] = book
        if len(batch) >= batch_size:
            await _insert(engine, batch, report)
            batch = {}
        if progress is not None:
            progress(line)
    if batch:
        await _insert(engine, batch, report)
    return report


async def _insert(engine: AsyncEngine, batch: dict[str, BookCreate], report: ImportReport) -> None:
    """Insert the books of ``batch`` not catalogued yet; once more if a concurrent writer added one meanwhile."""
    try:
        await _insert_once(engine, batch, report)
    except IntegrityError:  # another writer catalogued one of these ISBNs between the check and the insert
        await _insert_once(engine, batch, report)


async def _insert_once(engine: AsyncEngine, batch: dict[str, BookCreate], report: ImportReport) -> None:
    """Insert the new books of ``batch`` with their author and tag rows, in one transaction."""
    async with engine.begin() as connection:
        found = await connection.execute(select(Book.isbn).where(Book.isbn.in_(list(batch))))
        existing = set(found.scalars())
        fresh = [book for isbn, book in batch.items() if isbn not in existing]
        if not fresh:
            report.already += len(batch)
            return
        await insert_books(connection, fresh)
    report.already += len(batch) - len(fresh)
    report.imported += len(fresh)
