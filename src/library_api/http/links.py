"""OpenAPI links: how the answer of one operation feeds the next (a created book's id to its details).

Links tell clients, and stateful contract tests, which operations follow which: the ``id`` in the answer of
``POST /books`` is the ``book_id`` of ``GET /books/{book_id}``. Each domain router declares its links as data
(:class:`Link`, paths relative to the API prefix); :func:`add_links` writes them into the OpenAPI document once it
is built, naming each target by the ``operationId`` FastAPI gave it, so the links never drift from the routes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Link:
    """One link: the ``status`` answer of ``source`` supplies ``parameters`` (and ``request_body``) of ``target``.

    ``source`` and ``target`` are ``(method, path)`` pairs with paths relative to the API prefix; values are
    OpenAPI runtime expressions such as ``$response.body#/id``.
    """

    name: str
    source: tuple[str, str]
    status: int
    target: tuple[str, str]
    parameters: Mapping[str, str] = field(default_factory=dict)
    request_body: Mapping[str, str] | None = None


def _operation(schema: dict[str, Any], prefix: str, method: str, path: str) -> dict[str, Any]:
    try:
        operation: dict[str, Any] = schema["paths"][prefix + path][method.lower()]
    except KeyError:
        raise LookupError(f"a link names {method} {prefix}{path}, which the application does not serve") from None
    return operation


def add_links(schema: dict[str, Any], prefix: str, links: Iterable[Link]) -> dict[str, Any]:
    """Write ``links`` into ``schema`` (an OpenAPI document); a link to or from an unknown route is an error."""
    for link in links:
        source = _operation(schema, prefix, *link.source)
        target = _operation(schema, prefix, *link.target)
        definition: dict[str, Any] = {"operationId": target["operationId"]}
        if link.parameters:
            definition["parameters"] = dict(link.parameters)
        if link.request_body is not None:
            definition["requestBody"] = dict(link.request_body)
        response = source.setdefault("responses", {}).setdefault(str(link.status), {"description": "Success"})
        response.setdefault("links", {})[link.name] = definition
    return schema
