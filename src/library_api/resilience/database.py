"""Telling a database that is unreachable from one that refused a statement, and what each means to a client.

An unreachable database (connection refused or reset, the server shutting down or starting up, a connection
that died under a query) is *transient*: reads retry it with backoff and, when it persists, the client gets a
503 problem with ``Retry-After`` instead of a 500. Everything else (a constraint, a syntax error) is not
retried and stays what it is.

A database that does not answer in time is the fourth case, and a transient one too: the server cancelled a
statement after ``DATABASE_STATEMENT_TIMEOUT_MS`` (SQLSTATE 57014, also what a frozen server does to every
queued statement once it runs again), or the driver gave up waiting (its connect and command timeouts, set from
the statement timeout, see :func:`library_api.db.engine.driver_timeouts`). The client gets a 503
``database-timeout`` problem with ``Retry-After``. Whether a write that timed out was committed is unknown to
the service too: creating routes accept an ``Idempotency-Key`` so that the retry cannot create twice.

A saturated pool is the third case: every connection is busy and a request has waited ``DATABASE_POOL_TIMEOUT``
seconds for one. SQLAlchemy raises its own ``TimeoutError`` then; the client gets a 503 problem with a short
``Retry-After`` (the service is healthy, only busy), never a 500 and never an endless wait.
"""

from __future__ import annotations

import inspect
import logging
import socket

from fastapi import FastAPI, Request
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.responses import Response

from library_api.problems import problem_response
from library_api.resilience.schema import SchemaWatch, schema_behind_response

logger = logging.getLogger("library_api.resilience")

UNAVAILABLE_RETRY_AFTER = 5
"""Seconds a client is asked to wait after a 503 caused by an unreachable database."""

BUSY_RETRY_AFTER = 1
"""Seconds a client is asked to wait after a 503 caused by a saturated connection pool."""

_UNAVAILABLE_SQLSTATES = frozenset({"57P01", "57P02", "57P03", "53300"})
"""admin_shutdown, crash_shutdown, cannot_connect_now, too_many_connections."""

_NETWORK_ERRORS = (ConnectionError, TimeoutError, socket.gaierror)

TIMEOUT_RETRY_AFTER = 5
"""Seconds a client is asked to wait after a 503 caused by a statement or driver timeout."""

_TIMEOUT_SQLSTATES = frozenset({"57014", "55P03"})
"""query_canceled (statement_timeout), lock_not_available (lock_timeout)."""

_TIMEOUT_ERROR_NAMES = frozenset({"QueryCanceledError", "LockNotAvailableError"})
"""asyncpg's exceptions for the same two SQLSTATEs, when a wrapper hides the code."""


def is_database_timeout(exc: BaseException) -> bool:
    """Whether ``exc`` means the database did not answer in time (a server or a driver timeout)."""
    if isinstance(exc, TimeoutError):
        return True
    if isinstance(exc, DBAPIError):
        original = exc.orig
        sqlstate = str(getattr(original, "sqlstate", "") or getattr(original, "pgcode", "") or "")
        if sqlstate in _TIMEOUT_SQLSTATES:
            return True
        cause = original.__cause__ if original is not None else None
        return isinstance(cause, TimeoutError) or type(cause).__name__ in _TIMEOUT_ERROR_NAMES
    return False


def is_database_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` means the database could not be reached (rather than that it refused a statement)."""
    if isinstance(exc, _NETWORK_ERRORS):
        return True
    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated:
            return True
        original = exc.orig
        sqlstate = str(getattr(original, "sqlstate", "") or getattr(original, "pgcode", "") or "")
        if sqlstate.startswith("08") or sqlstate in _UNAVAILABLE_SQLSTATES:
            return True
        cause = original.__cause__ if original is not None else None
        return isinstance(cause, _NETWORK_ERRORS) or type(cause).__name__ in {
            "ConnectionDoesNotExistError",
            "CannotConnectNowError",
            "ConnectionFailureError",
        }
    return False


def unavailable_response(request: Request) -> Response:
    """The 503 problem a request gets when the database it needs cannot be reached."""
    return problem_response(
        503,
        "database-unavailable",
        "Database unavailable",
        "The database cannot be reached right now; retry shortly.",
        instance=request.url.path,
        headers={"Retry-After": str(UNAVAILABLE_RETRY_AFTER)},
    )


def timeout_response(request: Request) -> Response:
    """The 503 problem a request gets when the database did not answer within the statement timeout."""
    return problem_response(
        503,
        "database-timeout",
        "Database timeout",
        "The database did not answer in time; retry shortly (with the same Idempotency-Key for a write).",
        instance=request.url.path,
        headers={"Retry-After": str(TIMEOUT_RETRY_AFTER)},
    )


def busy_response(request: Request) -> Response:
    """The 503 problem a request gets when no pooled connection freed up within the pool timeout."""
    return problem_response(
        503,
        "database-busy",
        "Service busy",
        "Every database connection is in use; retry shortly.",
        instance=request.url.path,
        headers={"Retry-After": str(BUSY_RETRY_AFTER)},
    )


def install_database_unavailable_handler(app: FastAPI, schema: SchemaWatch | None = None) -> None:
    """Answer requests that fail on an unreachable, slow or saturated database with 503 + ``Retry-After``.

    A missing table or column makes ``schema`` read the revision again: behind, the answer is a 503
    ``schema-behind``. Other database errors stay 500.
    """
    fallback = app.exception_handlers.get(Exception)

    async def on_pool_timeout(request: Request, exc: Exception) -> Response:
        logger.warning("database pool exhausted on %s %s: %s", request.method, request.url.path, exc)
        return busy_response(request)

    async def on_database_error(request: Request, exc: Exception) -> Response:
        if is_database_timeout(exc):
            logger.warning("database timeout on %s %s: %s", request.method, request.url.path, type(exc).__name__)
            return timeout_response(request)
        if is_database_unavailable(exc):
            logger.warning("database unavailable on %s %s: %s", request.method, request.url.path, type(exc).__name__)
            return unavailable_response(request)
        if schema is not None and await schema.confirms_behind(exc):
            logger.warning("schema behind on %s %s: %s", request.method, request.url.path, schema.problem)
            return schema_behind_response(request, schema)
        assert fallback is not None
        response = fallback(request, exc)
        if inspect.isawaitable(response):
            response = await response
        assert isinstance(response, Response)
        return response

    for error_type in (DBAPIError, *_NETWORK_ERRORS):
        app.add_exception_handler(error_type, on_database_error)
    app.add_exception_handler(PoolTimeout, on_pool_timeout)
