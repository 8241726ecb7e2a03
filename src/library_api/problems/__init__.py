"""RFC 9457 problem details: the only shape an error takes on the wire.

Domain code raises a :class:`ProblemError` subclass; the handlers installed by :func:`install_problem_handlers`
turn it, FastAPI's validation errors, Starlette's HTTP errors and any unexpected exception into an
``application/problem+json`` body with a stable ``type``. Unexpected exceptions are logged with their traceback
on the server and reach the client as a bare 500 problem: never a stack trace.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Mapping, Sequence
from http import HTTPStatus
from typing import Any, ClassVar

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import iter_route_contexts
from pydantic import BaseModel, Field
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.routing import compile_path

PROBLEM_CONTENT_TYPE = "application/problem+json"
PROBLEM_TYPE_PREFIX = "urn:library-api:problem:"

logger = logging.getLogger("library_api.errors")


class FieldProblem(BaseModel):
    """One invalid input: where it is (``body.isbn``, ``query.limit``) and what is wrong with it."""

    field: str
    message: str
    type: str


class Problem(BaseModel):
    """The body of every error response (RFC 9457), documented once in the OpenAPI schema."""

    type: str = Field(examples=[f"{PROBLEM_TYPE_PREFIX}not-found"])
    title: str
    status: int
    detail: str | None = None
    instance: str | None = None
    errors: list[FieldProblem] | None = None


class ProblemError(Exception):
    """A failure that maps onto an HTTP status and a stable problem type.

    Subclasses fix ``status``, ``slug`` and ``title``; each raise gives the human ``detail`` and, when the
    client needs them, extra members or headers (``Retry-After``, ``WWW-Authenticate``).
    """

    status: ClassVar[int] = 500
    slug: ClassVar[str] = "internal-error"
    title: ClassVar[str] = "Internal server error"

    def __init__(
        self,
        detail: str | None = None,
        *,
        headers: Mapping[str, str] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(detail or self.title)
        self.detail = detail
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})


class BadRequest(ProblemError):
    """The request is malformed in a way no schema describes."""

    status, slug, title = 400, "bad-request", "Bad request"


class Unauthorized(ProblemError):
    """No valid credential was presented; the client should authenticate (again)."""

    status, slug, title = 401, "unauthorized", "Authentication required"

    def __init__(self, detail: str | None = None, *, error: str | None = None) -> None:
        challenge = "Bearer" if error is None else f'Bearer error="{error}"'
        super().__init__(detail, headers={"WWW-Authenticate": challenge})


class Forbidden(ProblemError):
    """The caller is known but lacks the permission the route declares."""

    status, slug, title = 403, "forbidden", "Forbidden"


class NotFound(ProblemError):
    """The resource does not exist, or exists but is not the caller's to see."""

    status, slug, title = 404, "not-found", "Not found"


class Conflict(ProblemError):
    """The request contradicts the current state (a duplicate, a full book, a booking already closed)."""

    status, slug, title = 409, "conflict", "Conflict"


class ContentTooLarge(ProblemError):
    """The request body exceeds the configured limit."""

    status, slug, title = 413, "content-too-large", "Content too large"


class UnsupportedMediaType(ProblemError):
    """The payload's real content type is not one the route accepts."""

    status, slug, title = 415, "unsupported-media-type", "Unsupported media type"


class InvalidInput(ProblemError):
    """Input that passed the schema but breaks a domain rule (a booking in the past, a bad ISBN)."""

    status, slug, title = 422, "validation-error", "Invalid input"

    def __init__(self, detail: str, *, field: str | None = None) -> None:
        errors = [{"field": field, "message": detail, "type": "value_error"}] if field else None
        super().__init__(detail, extra={"errors": errors} if errors else None)


class TooManyRequests(ProblemError):
    """The caller spent a rate limit; ``Retry-After`` says when to try again."""

    status, slug, title = 429, "too-many-requests", "Too many requests"

    def __init__(self, detail: str, *, retry_after: int, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(detail, headers={"Retry-After": str(retry_after), **(headers or {})})


class ServiceUnavailable(ProblemError):
    """A dependency cannot serve right now; the client may retry after ``Retry-After`` seconds."""

    status, slug, title = 503, "service-unavailable", "Service unavailable"

    def __init__(self, detail: str | None = None, *, retry_after: int = 1) -> None:
        super().__init__(detail, headers={"Retry-After": str(retry_after)})


class InsufficientStorage(ProblemError):
    """The service has no room to store what the request sent (a full volume or a spent quota).

    Nothing of the request was kept; the client may retry after ``Retry-After`` seconds, once an operator has
    freed space (readiness and ``/health/detailed`` report the volume).
    """

    status, slug, title = 507, "insufficient-storage", "Insufficient storage"

    def __init__(self, detail: str | None = None, *, retry_after: int = 60) -> None:
        super().__init__(detail, headers={"Retry-After": str(retry_after)})


def problem_response(
    status: int,
    slug: str,
    title: str,
    detail: str | None = None,
    *,
    instance: str | None = None,
    headers: Mapping[str, str] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Response:
    """Serialise one problem into an ``application/problem+json`` response."""
    body: dict[str, Any] = {"type": PROBLEM_TYPE_PREFIX + slug, "title": title, "status": status}
    if detail is not None:
        body["detail"] = detail
    if instance is not None:
        body["instance"] = instance
    if extra:
        body.update(extra)
    return Response(orjson.dumps(body), status_code=status, headers=headers, media_type=PROBLEM_CONTENT_TYPE)


def _field_path(location: Sequence[Any]) -> str:
    return ".".join(str(part) for part in location)


_SLUGS = {413: ("content-too-large", "Content too large"), 422: ("validation-error", "Invalid input")}


def _generic_slug(status: int) -> str:
    if status in _SLUGS:
        return _SLUGS[status][0]
    try:
        return HTTPStatus(status).phrase.lower().replace(" ", "-").replace("'", "")
    except ValueError:
        return "error"


async def _on_problem(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ProblemError)
    return problem_response(
        exc.status,
        exc.slug,
        exc.title,
        exc.detail,
        instance=request.url.path,
        headers=exc.headers,
        extra=exc.extra,
    )


async def _on_validation(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = [
        {"field": _field_path(error.get("loc", ())), "message": str(error.get("msg", "")), "type": error.get("type")}
        for error in exc.errors()
    ]
    count = len(errors)
    detail = f"{count} invalid field{'s' if count != 1 else ''}: " + ", ".join(e["field"] for e in errors)
    return problem_response(
        422, "validation-error", "Invalid input", detail, instance=request.url.path, extra={"errors": errors}
    )


@functools.lru_cache(maxsize=512)
def _path_pattern(path: str) -> re.Pattern[str]:
    return compile_path(path)[0]


def allowed_methods(app: FastAPI, path: str) -> list[str]:
    """Every method any route serves at ``path``; Starlette's own 405 lists only the first matching route's."""
    methods: set[str] = set()
    for context in iter_route_contexts(app.routes):
        if context.path and context.methods and _path_pattern(context.path).match(path):
            methods |= set(context.methods)
    return sorted(methods)


async def _on_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        headers["Allow"] = ", ".join(allowed_methods(request.app, request.url.path))
    if exc.status_code in _SLUGS:
        phrase = _SLUGS[exc.status_code][1]
    else:
        phrase = HTTPStatus(exc.status_code).phrase if exc.status_code in HTTPStatus._value2member_map_ else "Error"
    detail = exc.detail if isinstance(exc.detail, str) and exc.detail != phrase else None
    return problem_response(
        exc.status_code,
        _generic_slug(exc.status_code),
        phrase,
        detail,
        instance=request.url.path,
        headers=headers,
    )


async def _on_pool_timeout(request: Request, exc: Exception) -> Response:
    logger.warning("database pool exhausted: no connection within the configured timeout")
    return problem_response(
        503,
        "database-busy",
        "Service busy",
        "No database connection became free in time; retry shortly.",
        instance=request.url.path,
        headers={"Retry-After": "1"},
    )


async def _on_unexpected(request: Request, exc: Exception) -> Response:
    logger.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return problem_response(500, "internal-error", "Internal server error", instance=request.url.path)


def install_problem_handlers(app: FastAPI) -> None:
    """Route every error of ``app`` through the problem serialiser."""
    app.add_exception_handler(ProblemError, _on_problem)
    app.add_exception_handler(RequestValidationError, _on_validation)
    app.add_exception_handler(StarletteHTTPException, _on_http_exception)
    app.add_exception_handler(PoolTimeoutError, _on_pool_timeout)
    app.add_exception_handler(Exception, _on_unexpected)
