"""Query strings taken at their word: text in UTF-8, and one value per single-valued parameter.

A query string whose percent-escapes do not decode as UTF-8 (``?q=%FF``) would otherwise be read with
replacement characters and searched for as mojibake; it is a 422 instead. A parameter that a route takes once
(``q``, ``limit``) but that arrives several times is ambiguous: the framework would keep the last one, and a
proxy or cache in front might have looked at the first (HTTP parameter pollution). :func:`single_valued_query`
runs for every API route and refuses such requests. Parameters the route takes as a list (``tag``) may repeat,
which is how lists are sent.

The guard is linear in the length of the query string and refuses, before anything is parsed, a query string
with more than ``MAX_QUERY_PARAMETERS`` parameters (414, ``too-many-query-parameters``): the API's routes take
at most about twenty, and a 64 KiB query of tens of thousands of tiny parameters would otherwise cost every
later step (parsing, the duplicate check, validation) that many entries, for any caller, before authentication.
"""

from __future__ import annotations

import types
import typing
from collections import Counter
from collections.abc import Iterator
from typing import Any, Protocol, cast
from urllib.parse import unquote_to_bytes

from fastapi import Request
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

from library_api.problems import InvalidInput, ProblemError

_SEQUENCES = (list, tuple, set, frozenset)


class _QueryLimits(Protocol):
    @property
    def max_query_parameters(self) -> int: ...


class _Configured(Protocol):
    """What this guard reads from the application's container (``app.state.context``): one setting.

    Naming only that keeps the middleware layer free of the container, which knows the whole domain.
    """

    @property
    def settings(self) -> _QueryLimits: ...


def _takes_many(annotation: Any) -> bool:
    """Whether a parameter's annotation is a sequence (possibly inside ``| None`` or ``Annotated``)."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _takes_many(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return any(_takes_many(argument) for argument in typing.get_args(annotation))
    return origin in _SEQUENCES or annotation in _SEQUENCES


def _query_fields(dependant: Dependant) -> Iterator[tuple[str, bool]]:
    for field in dependant.query_params:
        yield field.alias, _takes_many(field.field_info.annotation)
    for sub in dependant.dependencies:
        yield from _query_fields(sub)


def single_valued_names(route: APIRoute) -> frozenset[str]:
    """The query parameters ``route`` takes exactly one value of."""
    return frozenset(name for name, many in _query_fields(route.dependant) if not many)


def _is_utf8(query_string: bytes) -> bool:
    try:
        unquote_to_bytes(query_string.replace(b"+", b" ")).decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


class TooManyQueryParameters(ProblemError):
    """The query string holds more parameters than any route takes (``MAX_QUERY_PARAMETERS``)."""

    status, slug, title = 414, "too-many-query-parameters", "Too many query parameters"


def parameter_count(query_string: bytes) -> int:
    """How many parameters a query string holds, counted as the parser splits them (empty pieces skipped)."""
    return sum(1 for piece in query_string.split(b"&") if piece)


async def single_valued_query(request: Request) -> None:
    """Refuse a query string with too many parameters, not UTF-8, or repeating a single-valued parameter.

    Runs first on every API route. The common case (no escapes, at most one parameter) is decided from the raw
    bytes without parsing anything, and so is the parameter count unless the query has at least as many ``&``
    separators as the limit allows parameters.
    """
    raw: bytes = request.scope.get("query_string", b"")
    if b"%" not in raw and b"&" not in raw:  # no escapes and at most one parameter: nothing to refuse
        return
    limit = cast(_Configured, request.app.state.context).settings.max_query_parameters
    if raw.count(b"&") >= limit and parameter_count(raw) > limit:
        raise TooManyQueryParameters(
            f"The query string holds more than {limit} parameters; no operation takes that many."
        )
    if b"%" in raw and not _is_utf8(raw):
        raise InvalidInput("The query string is not valid UTF-8 once its escapes are decoded.", field="query")
    names = [name for name, _ in request.query_params.multi_items()]
    if len(names) == len(set(names)):
        return
    route = request.scope.get("route")
    if not isinstance(route, APIRoute):
        return
    counts = Counter(names)
    repeated = sorted({name for name, count in counts.items() if count > 1} & single_valued_names(route))
    if repeated:
        name = repeated[0]
        raise InvalidInput(
            f"The query parameter '{name}' takes one value but was given more than once.", field=f"query.{name}"
        )
