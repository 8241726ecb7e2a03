"""The plans of every list query on a medium catalogue: nothing that reads the whole table per page.

A private PostgreSQL database gets the real migrations and 30,000 books with two bookings each (written by
``generate_series``, see ``benchmarks/scale_data.py``), then ``ANALYZE``. Each list query runs through the real
repository or service while the SQL it sends is captured; each captured statement is then explained with its
own parameters (``EXPLAIN (ANALYZE, FORMAT JSON)``). No time is measured: the plans are read for their shape
and for how many rows each scan of ``books`` or ``bookings`` produced, so a regression (a window count over all
matches, a per-book probe of the whole table, a sort that has lost its index) fails here on any machine.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
import pytest_asyncio
from benchmarks.scale_data import populate
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from library_api.bookings.service import _OWN_PAGE, BookingFilters, BookingService
from library_api.books.repository import BookFilters, BookRepository, Window
from library_api.books.schemas import BookSort
from library_api.db import migrate
from library_api.db.engine import Database, create_engine
from library_api.events import EventBus
from library_api.holdings.models import BookingStatus
from library_api.security.principal import CredentialKind, Principal
from tests.conftest import fast_settings
from tests.support.services import require_postgres

# One xdist worker runs this module, so its module-scoped servers start once (docs/testing.md).
pytestmark = [pytest.mark.postgres, pytest.mark.slow, pytest.mark.xdist_group("list-plans")]

BOOKS = 50_000
TABLES = {"books", "bookings"}
READ_LIMIT = BOOKS // 3
"""The most rows any one scan of ``books`` or ``bookings`` may produce for one page.

A page reads ``limit + 1`` rows and its count at most ``cap + 1`` (1,001) matches; a filter that one book in
twelve passes walks some 12,000 rows to find them, wherever the table ends. A read of the whole table produces
all 50,000 (books) or 100,000 (bookings)."""

CATALOGUE = {
    "first page": BookFilters(),
    "tag": BookFilters(tags=("fiction",)),
    "two tags": BookFilters(tags=("history", "science")),
    "author": BookFilters(author="Greta Adler"),
    "available": BookFilters(available=True),
    "not available": BookFilters(available=False),
    "years": BookFilters(year_from=1990, year_to=1999),
    "search": BookFilters(q="history"),
    "search partial word": BookFilters(q="histo"),
    "search and tag": BookFilters(q="river", tags=("poetry",)),
}


@pytest_asyncio.fixture(scope="module")
async def medium() -> AsyncIterator[AsyncEngine]:
    """A migrated, populated and analysed database of its own, dropped afterwards."""
    require_postgres()
    name = f"library_plans_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect("postgresql://postgres@127.0.0.1:5432/postgres")
    await admin.execute(f'CREATE DATABASE "{name}"')
    engine = create_engine(fast_settings(database_url=f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"))
    try:
        await migrate.upgrade(engine)
        connection = await asyncpg.connect(f"postgresql://postgres@127.0.0.1:5432/{name}")
        try:
            await populate(connection, BOOKS)
        finally:
            await connection.close()
        yield engine
    finally:
        await engine.dispose()
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


class Captured:
    """The statements (with their parameters) an engine sends while capturing."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.statements: list[tuple[str, Any]] = []

    def _record(self, _conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        self.statements.append((statement, parameters))

    def __enter__(self) -> Captured:
        event.listen(self.engine.sync_engine, "before_cursor_execute", self._record)
        return self

    def __exit__(self, *_: object) -> None:
        event.remove(self.engine.sync_engine, "before_cursor_execute", self._record)


def nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every node of a JSON plan."""
    yield plan
    for child in plan.get("Plans", []):
        yield from nodes(child)


def problems_in(plan: dict[str, Any]) -> list[str]:
    """What in ``plan`` makes a page's cost grow with the table."""
    found = []
    for node in nodes(plan):
        kind = node["Node Type"]
        relation = node.get("Relation Name")
        if kind == "WindowAgg":
            found.append("a window over all matches")
        if str(node.get("Subplan Name", "")).startswith("SubPlan"):
            found.append(f"a correlated subplan ({node['Subplan Name']})")
        if relation in TABLES:
            produced = node["Actual Rows"] * node["Actual Loops"] + node.get("Rows Removed by Filter", 0)
            if produced > READ_LIMIT:
                found.append(f"{kind} of {relation} producing {produced} rows")
    return found


async def explain(engine: AsyncEngine, statements: list[tuple[str, Any]]) -> list[tuple[str, list[str]]]:
    """Each captured statement with the problems of its executed plan."""
    answers = []
    async with engine.connect() as connection:
        for statement, parameters in statements:
            result = await connection.exec_driver_sql("EXPLAIN (ANALYZE, FORMAT JSON) " + statement, parameters)
            plan = result.scalar_one()[0]["Plan"]
            answers.append((statement, problems_in(plan)))
    return answers


def database_of(engine: AsyncEngine) -> Database:
    """A :class:`Database` over ``engine`` (the service reads through it)."""
    return Database(engine=engine, sessionmaker=async_sessionmaker(engine, expire_on_commit=False), owned=False)


@pytest.mark.parametrize("sort", list(BookSort))
@pytest.mark.parametrize("label", list(CATALOGUE))
async def test_catalogue_pages_read_a_bounded_part_of_the_table(
    medium: AsyncEngine, label: str, sort: BookSort
) -> None:
    repository = BookRepository()
    now = datetime.now(UTC)
    sessions = async_sessionmaker(medium, expire_on_commit=False)
    async with sessions() as session:
        first = await repository.page(session, CATALOGUE[label], sort, Window(limit=20), now)
        assert first.rows and first.next_cursor is not None
        with Captured(medium) as captured:
            later = Window(limit=20, cursor=first.next_cursor)
            await repository.page(session, CATALOGUE[label], sort, later, now)
            await repository.page(session, CATALOGUE[label], sort, Window(limit=20, offset=40), now)
    for statement, found in await explain(medium, captured.statements):
        assert found == [], statement


@pytest.mark.parametrize(
    "filters",
    [
        BookFilters(q="river night"),
        BookFilters(q='"history river" -fiction'),
        BookFilters(q="river light -night"),
        BookFilters(q="garden or orchard", available=True),
        BookFilters(q="histroy"),
        BookFilters(q="gardn rivr"),
    ],
    ids=repr,
)
async def test_ranked_search_pages_read_a_bounded_part_of_the_table(medium: AsyncEngine, filters: BookFilters) -> None:
    """Rarer queries and typos in the default order of ``q``: matches read from the GIN indexes, stopping at the cap.

    (An explicit sort with such a query walks that sort's index, which the planner chooses from its estimate of
    the matches; for a phrase it counts the words, not their adjacency, and may walk far: docs/benchmarks.md.)
    """
    repository = BookRepository()
    now = datetime.now(UTC)
    sessions = async_sessionmaker(medium, expire_on_commit=False)
    async with sessions() as session:
        first = await repository.page(session, filters, BookSort.RELEVANCE, Window(limit=20), now)
        assert first.rows and first.next_cursor is not None
        with Captured(medium) as captured:
            await repository.page(session, filters, BookSort.RELEVANCE, Window(limit=20, cursor=first.next_cursor), now)
    for statement, found in await explain(medium, captured.statements):
        assert found == [], statement


@pytest.mark.parametrize(
    "filters",
    [
        BookingFilters(),
        BookingFilters(status=BookingStatus.ACTIVE),
        BookingFilters(status=BookingStatus.CANCELLED),
        BookingFilters(book_id=7),
        BookingFilters(user_id=3),
        BookingFilters(book_id=7, status=BookingStatus.ACTIVE),
        BookingFilters(user_id=3, status=BookingStatus.CANCELLED),
    ],
    ids=repr,
)
async def test_booking_pages_read_a_bounded_part_of_the_table(medium: AsyncEngine, filters: BookingFilters) -> None:
    service = BookingService(EventBus(), max_length=timedelta(days=30), start_grace=timedelta(minutes=5))
    librarian = Principal(
        subject="plans",
        credential=CredentialKind.ACCESS_TOKEN,
        roles=frozenset({"librarian"}),
        permissions=frozenset({"*"}),
    )
    database = database_of(medium)
    first = await service.page(database, librarian, filters, Window(limit=20))
    with Captured(medium) as captured:
        if first.next_cursor is not None:
            await service.page(database, librarian, filters, Window(limit=20, cursor=first.next_cursor))
        await service.page(database, librarian, filters, Window(limit=20, offset=40))
    assert captured.statements
    for statement, found in await explain(medium, captured.statements):
        assert found == [], statement


async def test_the_availability_horizon_reads_two_index_heads(medium: AsyncEngine) -> None:
    sessions = async_sessionmaker(medium, expire_on_commit=False)
    async with sessions() as session:
        with Captured(medium) as captured:
            assert await BookRepository().next_availability_change(session, datetime.now(UTC)) is not None
    for statement, found in await explain(medium, captured.statements):
        assert found == [], statement


async def test_a_readers_own_page_reads_a_bounded_part_of_the_table(medium: AsyncEngine) -> None:
    own = _OWN_PAGE
    values = {"user_id": 3, "before": 2**31 - 1, "count_limit": 1001, "limit": 21, "offset": 0}
    arguments = tuple(values[name] for name in own.parameter_names)
    answers = await explain(medium, [(own.postgresql_text, arguments)])
    assert answers == [(own.postgresql_text, [])]
