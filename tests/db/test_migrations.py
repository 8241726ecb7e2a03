"""Migrations: up, down and up again on both databases, with no drift from the models."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect
from sqlalchemy.engine import Connection

from library_api.config import Settings
from library_api.db import migrate
from library_api.db.engine import create_engine
from library_api.db.migrate import include_object
from library_api.tables import metadata
from tests.support.databases import DatabaseTemplate


def drift(connection: Connection) -> list[object]:
    context = MigrationContext.configure(connection, opts={"compare_type": True, "include_object": include_object})
    return list(compare_metadata(context, metadata))


SKIPPED_EXPRESSION_INDEX = "ignore:Skipped unsupported reflection of expression-based index"
"""SQLAlchemy's reflection warns of each index on an expression (the year sort keys) and leaves it out."""


@pytest.mark.filterwarnings(SKIPPED_EXPRESSION_INDEX)
@pytest.mark.filterwarnings("ignore:autogenerate skipping metadata-specified expression-based index")
async def test_round_trip_without_drift(db_template: DatabaseTemplate, tmp_path: Path) -> None:
    url = await db_template.clone(tmp_path)
    engine = create_engine(Settings(database_url=url))
    try:
        assert await migrate.current_revision(engine) == migrate.head_revision()
        async with engine.connect() as connection:
            assert await connection.run_sync(drift) == []
        await migrate.downgrade(engine, "base")
        assert await migrate.current_revision(engine) is None
        async with engine.connect() as connection:
            tables = await connection.run_sync(lambda sync: inspect(sync).get_table_names())
        assert set(tables) <= {"alembic_version"}
        await migrate.upgrade(engine)
        await migrate.upgrade(engine)  # idempotent
        assert await migrate.current_revision(engine) == migrate.head_revision()
    finally:
        await engine.dispose()
        await db_template.drop_clone(url)


@pytest.mark.filterwarnings(SKIPPED_EXPRESSION_INDEX)
async def test_indexes_behind_the_queries_exist(db_template: DatabaseTemplate, tmp_path: Path) -> None:
    url = await db_template.clone(tmp_path)
    engine = create_engine(Settings(database_url=url))
    try:
        async with engine.connect() as connection:

            def index_names(sync: Connection) -> set[str]:
                inspector = inspect(sync)
                return {
                    index["name"]
                    for table in inspector.get_table_names()
                    for index in inspector.get_indexes(table)
                    if index["name"]
                }

            names = await connection.run_sync(index_names)
        expected = {
            "ix_bookings_book_status_start",
            "ix_bookings_user_id_id",
            "ix_book_authors_name_key",
            "ix_book_tags_tag",
            "ix_books_title_id",
            "ix_bookings_status_id",
            "ix_bookings_book_id_id",
            "ix_refresh_tokens_family_id",
        }
        assert expected <= names
        if db_template.backend == "postgresql":
            assert "ix_books_search_text_trgm" in names
            async with engine.connect() as connection:
                rows = await connection.exec_driver_sql("SELECT indexname FROM pg_indexes WHERE tablename = 'books'")
                assert {"ix_books_year_first_id", "ix_books_year_last_id"} <= {row[0] for row in rows}
    finally:
        await engine.dispose()
        await db_template.drop_clone(url)
