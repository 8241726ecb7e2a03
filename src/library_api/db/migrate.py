"""Run Alembic migrations from the service itself (``library-api migrate`` and the embedded auto-migration).

Migrations run on a connection of the service's own engine, so SQLite gets the same pragmas as at run time.
On PostgreSQL an advisory lock serialises concurrent ``migrate`` runs (several pods starting at once).
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from library_api.db.engine import SQLITE_BEGIN_OPTION

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
_ADVISORY_LOCK_KEY = 7_262_021_604


EXPRESSION_INDEXES = frozenset({"ix_books_year_first_id", "ix_books_year_last_id"})
"""Indexes on expressions, which SQLAlchemy's reflection skips (so a model comparison would always see them missing)."""
FULL_TEXT_INDEXES = frozenset({"ix_books_search_vector"})
"""The GIN index of ``books.search_vector`` (PostgreSQL only, revision 0008)."""
FULL_TEXT_COLUMNS = frozenset({"search_vector"})
"""The generated ``tsvector`` column of ``books`` (PostgreSQL only; queried by name, not mapped)."""


def include_object(obj: object, name: str | None, type_: str, reflected: bool, compare_to: object) -> bool:
    """Leave out of model comparisons what reflection cannot compare.

    That is what migrations create for one dialect only (PostgreSQL trigram and full-text indexes, the generated
    ``search_vector`` column; SQLite's FTS5 table and the shadow tables FTS5 keeps beside it) and indexes on
    expressions.
    """
    if name is None:
        return True
    if type_ == "index":
        return not (name.endswith("_trgm") or name in EXPRESSION_INDEXES or name in FULL_TEXT_INDEXES)
    if type_ == "column":
        return name not in FULL_TEXT_COLUMNS
    if type_ == "table":
        return not name.startswith("books_fts")
    return True


def alembic_config() -> Config:
    """An Alembic configuration pointing at the packaged migration scripts."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


@functools.cache
def _scripts() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config())


def head_revision() -> str:
    """The newest revision the code knows."""
    head = _scripts().get_current_head()
    assert head is not None
    return head


@functools.cache
def is_known_revision(revision: str) -> bool:
    """Whether ``revision`` is one of the code's own (else a newer release wrote it)."""
    return any(script.revision == revision for script in _scripts().walk_revisions())


def upgrade_on(connection: Connection, revision: str = "head") -> None:
    """Run the upgrade on a connection whose transaction the caller owns."""
    config = alembic_config()
    config.attributes["connection"] = connection
    command.upgrade(config, revision)


def _downgrade(connection: Connection, revision: str) -> None:
    config = alembic_config()
    config.attributes["connection"] = connection
    command.downgrade(config, revision)


def _current(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


@asynccontextmanager
async def exclusive_transaction(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A transaction that no other migrating process can run beside.

    SQLite: ``BEGIN IMMEDIATE`` (the database write lock). PostgreSQL: a transaction-scoped advisory lock. Two
    workers starting together therefore migrate (and seed) one after the other; the second finds nothing to do.
    """
    async with engine.connect() as plain:
        connection = await plain.execution_options(**{SQLITE_BEGIN_OPTION: "IMMEDIATE"})
        async with connection.begin():
            if connection.dialect.name == "postgresql":
                await connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _ADVISORY_LOCK_KEY})
            yield connection


async def upgrade(engine: AsyncEngine, revision: str = "head") -> None:
    """Bring the schema up to ``revision`` in one exclusive transaction."""
    async with exclusive_transaction(engine) as connection:
        await connection.run_sync(upgrade_on, revision)


async def downgrade(engine: AsyncEngine, revision: str) -> None:
    """Take the schema back to ``revision`` (``base`` empties it)."""
    async with engine.begin() as connection:
        await connection.run_sync(_downgrade, revision)


async def current_revision(engine: AsyncEngine) -> str | None:
    """The revision the database is at, or ``None`` when it was never migrated."""
    async with engine.connect() as connection:
        return await connection.run_sync(_current)
