"""``library-api import``: CSV and JSON Lines, every row validated, rejected lines named, re-runs add nothing."""

from __future__ import annotations

import asyncio
import csv
import json
import os
from pathlib import Path

import pytest
from sqlalchemy import func, select

from library_api.books.importer import ImportFileError, detect_format, import_books, read_rows
from library_api.books.models import Book, BookAuthor, BookTag
from library_api.config import Settings
from library_api.db.engine import create_engine
from tests.support.cli import invoke as run_command
from tests.support.databases import DatabaseTemplate

GOOD_ISBNS = ["9780132350884", "0-13-235088-2", "9780201633610", "9780262033848", "978-1-491-95029-6"]
"""Valid ISBNs (the second is the first in ISBN-10 notation, so it is the same book)."""


@pytest.fixture
def database_url(db_template: DatabaseTemplate, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    for key in list(os.environ):
        if key in {"DATABASE_URL", "CONFIG_FILE", "LIBRARY_API_OVERRIDES"}:
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    url = asyncio.run(db_template.clone(tmp_path))
    yield url
    asyncio.run(db_template.drop_clone(url))


def invoke(arguments: list[str], env: dict[str, str]) -> tuple[int, str, str]:
    finished = run_command(arguments, env)
    return finished.returncode, finished.stdout, finished.stderr


def counts(url: str) -> tuple[int, int, int]:
    async def read() -> tuple[int, int, int]:
        engine = create_engine(Settings(database_url=url))
        try:
            async with engine.connect() as connection:
                values = [
                    (await connection.execute(select(func.count()).select_from(table))).scalar_one()
                    for table in (Book, BookAuthor, BookTag)
                ]
        finally:
            await engine.dispose()
        return values[0], values[1], values[2]

    return asyncio.run(read())


def test_a_csv_import_reports_bad_rows_by_line_and_a_rerun_adds_nothing(database_url: str, tmp_path: Path) -> None:
    path = tmp_path / "books.csv"
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["isbn", "title", "authors", "tags", "year", "copies", "ignored"])
        writer.writerow([GOOD_ISBNS[0], "Clean Code", "Robert C. Martin", "craft; code", "2008", "2", "x"])
        writer.writerow([GOOD_ISBNS[1], "Clean Code again", "Robert C. Martin", "", "", "", ""])  # same book
        writer.writerow(["9780132350885", "Bad check digit", "Someone", "", "", "", ""])
        writer.writerow([GOOD_ISBNS[2], "", "Gang of Four", "", "", "", ""])  # no title
        writer.writerow([GOOD_ISBNS[3], "CLRS", "Cormen; Leiserson; Rivest; Stein", "algorithms", "2009", "", ""])
        handle.write(f"{GOOD_ISBNS[4]},Too many,fields,,,,,,extra\n")
    code, out, err = invoke(["import", str(path)], {"DATABASE_URL": database_url})
    assert code == 1, err
    assert out.strip() == "imported 2 books, 1 already catalogued, 3 rejected"
    rejected = [line for line in err.splitlines() if line.startswith("line ")]
    assert [line.split(":")[0] for line in rejected] == ["line 4", "line 5", "line 7"]
    assert "isbn" in rejected[0] and "title" in rejected[1] and "more fields" in rejected[2]
    assert counts(database_url) == (2, 5, 3)

    code, out, _ = invoke(["import", str(path)], {"DATABASE_URL": database_url})
    assert out.strip() == "imported 0 books, 3 already catalogued, 3 rejected"
    assert counts(database_url) == (2, 5, 3)


def test_a_json_lines_import_in_small_batches_resumes_where_it_stopped(database_url: str, tmp_path: Path) -> None:
    path = tmp_path / "books.jsonl"
    lines = [
        json.dumps({"isbn": GOOD_ISBNS[0], "title": "Clean Code", "authors": ["Robert C. Martin"]}),
        "",
        "{not json",
        json.dumps(["a list"]),
        json.dumps({"isbn": GOOD_ISBNS[2], "title": "Design Patterns", "authors": ["Gamma"], "tags": ["oo"]}),
        json.dumps({"isbn": GOOD_ISBNS[3], "title": "CLRS", "authors": ["Cormen"], "copies": 3}),
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    partial = tmp_path / "partial.jsonl"
    partial.write_text(lines[0] + "\n", encoding="utf-8")  # an import that stopped after its first batch
    assert invoke(["import", str(partial)], {"DATABASE_URL": database_url})[0] == 0

    async def run() -> tuple[int, int, list[int], list[int]]:
        engine = create_engine(Settings(database_url=database_url))
        seen: list[int] = []
        try:
            report = await import_books(engine, read_rows(path, "jsonl"), seen.append, batch_size=1)
        finally:
            await engine.dispose()
        return report.imported, report.already, [r.line for r in report.rejected], seen

    imported, already, rejected, seen = asyncio.run(run())
    assert (imported, already, rejected) == (2, 1, [3, 4])
    assert seen == [1, 3, 4, 5, 6]
    assert counts(database_url) == (3, 3, 1)


def test_files_that_cannot_be_imported_are_refused_whole(database_url: str, tmp_path: Path) -> None:
    env = {"DATABASE_URL": database_url}
    headless = tmp_path / "headless.csv"
    headless.write_text("title,year\nx,1\n", encoding="utf-8")
    code, _, err = invoke(["import", str(headless)], env)
    assert code == 1 and "lacks the column(s) authors, isbn" in err
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(b'{"title": "caf\xe9"}\n')
    code, _, err = invoke(["import", str(latin)], env)
    assert code == 1 and "not UTF-8" in err
    code, _, err = invoke(["import", str(tmp_path / "missing.csv")], env)
    assert code == 1 and err.startswith("error:")
    code, _, err = invoke(["import", str(headless), "--format", "xml"], env)
    assert code == 2 and "unknown format" in err
    with pytest.raises(ImportFileError):
        detect_format(tmp_path / "books.txt", None)
    assert detect_format(tmp_path / "books.txt", "csv") == "csv"
    assert detect_format(tmp_path / "books.NDJSON", None) == "jsonl"
    with pytest.raises(ImportFileError, match="cannot read"):
        list(read_rows(tmp_path / "missing.jsonl", "jsonl"))
