"""Alembic environment: runs on a connection handed over by :mod:`library_api.db.migrate`.

The ``alembic`` command line works too (for ``revision --autogenerate`` while developing): it then builds the
engine from the service's own settings.

An upgrade runs the scripts and needs no models. A comparison (``--autogenerate``) needs every table: their
registry, :mod:`library_api.tables`, sits above the domains, and this environment (part of ``db``, below them)
reads it by the name the configuration gives (``target_metadata = module:attribute`` in ``alembic.ini``, or a
``MetaData`` in the configuration's attributes). Without one, Alembic refuses to autogenerate rather than
compare against nothing.
"""

from __future__ import annotations

import asyncio
import importlib

from alembic import context
from sqlalchemy import MetaData
from sqlalchemy.engine import Connection

from library_api.db.migrate import include_object


def _target_metadata() -> MetaData | None:
    """The tables to compare against: given in the attributes, named in the configuration, or none."""
    given = context.config.attributes.get("target_metadata")
    if isinstance(given, MetaData):
        return given
    name = context.config.get_main_option("target_metadata")
    if not name:
        return None
    module, _, attribute = name.partition(":")
    found = getattr(importlib.import_module(module), attribute)
    if not isinstance(found, MetaData):
        raise TypeError(f"target_metadata {name!r} is not a SQLAlchemy MetaData")
    return found


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=_target_metadata(),
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
