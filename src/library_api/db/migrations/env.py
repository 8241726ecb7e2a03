"""Alembic environment: runs on a connection handed over by :mod:`library_api.db.migrate`.

The ``alembic`` command line works too (for ``revision --autogenerate`` while developing): it then builds the
engine from the service's own settings.
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy.engine import Connection

from library_api.db.migrate import include_object
from library_api.db.models import metadata


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        include_object=include_object,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def _run_standalone() -> None:
    from library_api.config import load_settings
    from library_api.db.engine import create_engine

    async def main() -> None:
        engine = create_engine(load_settings())
        async with engine.begin() as connection:
            await connection.run_sync(_run)
        await engine.dispose()

    asyncio.run(main())


connection = context.config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    _run_standalone()
