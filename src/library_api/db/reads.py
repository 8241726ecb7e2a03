"""The hottest reads, run on PostgreSQL by the driver itself rather than through SQLAlchemy's statement machinery.

A reader's ``GET /bookings`` and ``GET /bookings/{id}`` run one small ``SELECT`` each. Through an ORM session
that statement costs about 250 µs of CPU in the service process (session, compiled-cache lookup, execution
context, result processing, greenlet switches), several times what asyncpg needs to run the same prepared
statement on the same pooled connection. :class:`HotRead` keeps one SQLAlchemy Core statement as the single
definition of such a read and compiles it once, at import, into the PostgreSQL text with positional
parameters; a request then binds its values and asyncpg runs the statement (prepared once per connection, from
asyncpg's own statement cache).

What does not change:

* the connection comes from SQLAlchemy's pool (:meth:`library_api.db.engine.Database.pooled_connection`), so
  pool size, overflow, ``DATABASE_POOL_TIMEOUT`` and its 503 ``database-busy`` answer apply as before;
* a driver error is never surfaced as such: the statement runs once more through SQLAlchemy, which translates
  the error, invalidates a dead connection and so gives the usual 503 ``database-unavailable`` or the real
  error (a read is safe to repeat);
* on SQLite (the embedded default) the Core statement runs through SQLAlchemy as usual.

The driver path does not pass through SQLAlchemy's ``before_cursor_execute`` event. Two consequences are
handled: the statement-duration metric is fed through the observer the metrics put on each checked-out
connection (:data:`STATEMENT_OBSERVER`), and the statement-count tests listen to asyncpg's own query log
(``Connection.add_query_logger``), which sees these reads.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sqlalchemy.dialects.postgresql import asyncpg as asyncpg_dialect
from sqlalchemy.sql import Select

from library_api.db.engine import Database

STATEMENT_OBSERVER = "library.statement_observer"
"""Key, in a pooled connection's ``info``, of a ``(statement, seconds)`` callback timing driver-run statements."""

_POSTGRESQL = asyncpg_dialect.dialect()  # type: ignore[no-untyped-call]


class HotRead:
    """One read-only ``SELECT``, defined in SQLAlchemy Core and run by asyncpg directly on PostgreSQL."""

    def __init__(self, statement: Select[*tuple[Any, ...]]) -> None:
        self.statement = statement
        compiled = statement.compile(dialect=_POSTGRESQL)
        self.postgresql_text = compiled.string
        self.parameter_names: tuple[str, ...] = tuple(compiled.positiontup or ())
        self._literals = {name: value for name, value in compiled.params.items() if value is not None}

    async def fetch(self, database: Database, parameters: Mapping[str, Any]) -> Sequence[Mapping[Any, Any]]:
        """The rows of the statement with ``parameters`` bound, each readable by column label."""
        if database.dialect == "postgresql":
            values = {**self._literals, **parameters} if self._literals else parameters
            arguments = [values[name] for name in self.parameter_names]
            async with database.pooled_connection() as pooled:
                driver = pooled.driver_connection
                assert driver is not None
                started = time.perf_counter()
                with contextlib.suppress(Exception):  # any driver failure is retried below, where SQLAlchemy judges it
                    records: Sequence[Mapping[Any, Any]] = await driver.fetch(self.postgresql_text, *arguments)
                    observe: Callable[[str, float], None] | None = pooled.info.get(STATEMENT_OBSERVER)
                    if observe is not None:
                        observe(self.postgresql_text, time.perf_counter() - started)
                    return records
        async with database.read_connection() as connection:
            result = await connection.execute(self.statement, dict(parameters))
            return result.mappings().all()
