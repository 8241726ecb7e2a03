"""Query strings taken at their word: text in UTF-8, and one value per single-valued parameter.

A query string whose percent-escapes do not decode as UTF-8 (``?q=%FF``) would otherwise be read with
replacement characters and searched for as mojibake; it is a 422 instead. A parameter that a route takes once
(``q``, ``limit``) but that arrives several times is ambiguous: the framework would keep the last one, and a
proxy or cache in front might have looked at the first (HTTP parameter pollution). :func:`single_valued_query`
runs for every API route and refuses such requests. Parameters the route takes as a list (``tag``) may repeat,
which is how lists are sent.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Iterator
from typing import Any
from urllib.parse import unquote_to_bytes

from fastapi import Request
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

from library_api.http.problems import InvalidInput

_SEQUENCES = (list, tuple, set, frozenset)


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


async def single_valued_query(request: Request) -> None:
    """Refuse a query string that is not UTF-8 or repeats a single-valued parameter (the common case is cheap)."""
    raw: bytes = request.scope.get("query_string", b"")
    if b"%" not in raw and b"&" not in raw:  # no escapes and at most one parameter: nothing to refuse
        return
    if b"%" in raw and not _is_utf8(raw):
        raise InvalidInput("The query string is not valid UTF-8 once its escapes are decoded.", field="query")
    names = [name for name, _ in request.query_params.multi_items()]
    if len(names) == len(set(names)):
        return
    route = request.scope.get("route")
    if not isinstance(route, APIRoute):
        return
    repeated = sorted({name for name in names if names.count(name) > 1} & single_valued_names(route))
    if repeated:
        name = repeated[0]
        raise InvalidInput(
            f"The query parameter '{name}' takes one value but was given more than once.", field=f"query.{name}"
        )
