"""Whether the database's schema is the one the code needs, and what a request gets when it is not.

The code knows its Alembic head; the database records its revision in ``alembic_version``. Compared:

* **current**: the database is at the code's head. Requests are served; nothing is re-read on their path.
* **behind**: the database is at an older revision of the code's history, or at none (never migrated). The
  code would meet missing tables or columns, so API requests get a 503 ``schema-behind`` problem with
  ``Retry-After`` (never a 500) and readiness is 503 with the reason. The revision is read again at most every
  :data:`RECHECK_SECONDS` while behind (and on every readiness probe), so ``library-api migrate`` heals the
  service without a restart.
* **ahead**: the database is at a revision the code does not know: a newer release migrated it and this one is
  being rolled back to. Migrations are expand-first (a release never drops or renames what the previous one
  reads), so the older code is served, with a warning in the log, readiness and ``/health/detailed``.

A database error that says a table or column does not exist (PostgreSQL 42P01/42703, SQLite "no such
table/column") while the watch believed the schema current (a database restored from an old backup, say)
makes the watch read the revision again at once: behind, the request that met it is a 503 ``schema-behind``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from enum import StrEnum

from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.requests import Request
from starlette.responses import Response

from library_api.db import migrate
from library_api.problems import ServiceUnavailable, problem_response

logger = logging.getLogger("library_api.schema")

RECHECK_SECONDS = 5.0
"""How often, at most, requests read the revision again while the schema is behind (or not yet known)."""

SCHEMA_RETRY_AFTER = 30
"""Seconds a client is asked to wait after a ``schema-behind`` problem: a migration takes a while."""

_UNDEFINED_SQLSTATES = frozenset({"42P01", "42703"})
"""undefined_table, undefined_column."""

_SQLITE_UNDEFINED = ("no such table", "no such column")


class SchemaState(StrEnum):
    """How the database's revision compares with the code's head."""

    UNKNOWN = "unknown"
    CURRENT = "current"
    BEHIND = "behind"
    AHEAD = "ahead"


class SchemaBehind(ServiceUnavailable):
    """The database has not been migrated to what this code needs; retry after ``Retry-After`` seconds."""

    slug, title = "schema-behind", "Schema behind"

    def __init__(self, detail: str) -> None:
        super().__init__(detail, retry_after=SCHEMA_RETRY_AFTER)


def is_undefined_object(exc: BaseException) -> bool:
    """Whether ``exc`` is the database saying that a table or column the statement names does not exist."""
    if not isinstance(exc, DBAPIError):
        return False
    original = exc.orig
    sqlstate = str(getattr(original, "sqlstate", "") or getattr(original, "pgcode", "") or "")
    if sqlstate in _UNDEFINED_SQLSTATES:
        return True
    message = str(original).lower()
    return any(phrase in message for phrase in _SQLITE_UNDEFINED)


class SchemaWatch:
    """The schema's state as last read, read again when it may have changed (cheaply: one small query)."""

    def __init__(self, engine: AsyncEngine, clock: Callable[[], float] = time.monotonic) -> None:
        self._engine = engine
        self.clock = clock
        """Monotonic seconds; replaceable so that tests move time instead of waiting."""
        self._lock = asyncio.Lock()
        self.head = migrate.head_revision()
        self.state = SchemaState.UNKNOWN
        self.revision: str | None = None
        self._checked_at: float | None = None

    @property
    def problem(self) -> str | None:
        """Why the schema keeps the service from serving (behind), or ``None``."""
        if self.state is not SchemaState.BEHIND:
            return None
        return f"schema behind: the database is at {self.revision or 'no revision'}, the code needs {self.head}"

    @property
    def warning(self) -> str | None:
        """What an operator should know about a schema that is served anyway (ahead), or ``None``."""
        if self.state is not SchemaState.AHEAD:
            return None
        return (
            f"schema ahead: the database is at {self.revision}, unknown to this code (head {self.head}); "
            "served, since migrations are expand-first"
        )

    async def check(self) -> SchemaState:
        """Read the database's revision now and classify it; database errors propagate to the caller."""
        async with self._lock:
            revision = await migrate.current_revision(self._engine)
            previous = self.state
            self.revision = revision
            self._checked_at = self.clock()
            if revision == self.head:
                self.state = SchemaState.CURRENT
            elif revision is None or migrate.is_known_revision(revision):
                self.state = SchemaState.BEHIND
            else:
                self.state = SchemaState.AHEAD
        if self.state is not previous:
            self._log_change(previous)
        return self.state

    def _log_change(self, previous: SchemaState) -> None:
        if self.state is SchemaState.CURRENT:
            if previous is not SchemaState.UNKNOWN:
                logger.info("schema current again: the database is at %s", self.head)
        elif self.state is SchemaState.BEHIND:
            logger.error("%s; API requests answer 503 until `library-api migrate` has run", self.problem)
        else:
            logger.warning("%s", self.warning)

    async def refresh(self) -> SchemaState:
        """The state, read again first if it is not current and the last reading is older than the interval."""
        due = self._checked_at is None or self.clock() - self._checked_at >= RECHECK_SECONDS
        if self.state in (SchemaState.UNKNOWN, SchemaState.BEHIND) and due:
            await self.check()
        return self.state

    async def require_current(self) -> None:
        """Raise :class:`SchemaBehind` while the schema is behind; current, ahead and unknown pass.

        Unknown (the database has not answered yet) is left to the database's own errors and 503s.
        """
        if self.state is SchemaState.CURRENT:
            return
        try:
            await self.refresh()
        except Exception as exc:  # the database's own failure is the request's to meet and report
            logger.debug("schema revision not readable (%s)", type(exc).__name__)
            return
        problem = self.problem
        if problem is not None:
            raise SchemaBehind(problem + "; retry after the migration")

    async def confirms_behind(self, exc: BaseException) -> bool:
        """After ``exc`` (a missing table or column), read the revision again; whether the schema is behind."""
        if not is_undefined_object(exc):
            return False
        try:
            return await self.check() is SchemaState.BEHIND
        except Exception:
            return False


def schema_behind_response(request: Request, watch: SchemaWatch) -> Response:
    """The 503 problem for a request that met a missing table or column while the schema is behind."""
    detail = (watch.problem or "schema behind") + "; retry after the migration"
    return problem_response(
        503,
        SchemaBehind.slug,
        SchemaBehind.title,
        detail,
        instance=request.url.path,
        headers={"Retry-After": str(SCHEMA_RETRY_AFTER)},
    )
