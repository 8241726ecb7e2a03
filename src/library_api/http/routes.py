"""Which route template a request is for, known before the router runs.

Metrics label requests by route template (``/api/v1/books/{book_id}``) and rate limits are configured per
template, and both need the answer when the request arrives, before routing. :class:`RouteTable` matches the
path against the application's routes (FastAPI's public :func:`fastapi.routing.iter_route_contexts`, which sees
through included routers) the way the router does: the first route matching path and method wins, else the
first matching the path alone (it will answer 405). Answers are remembered per method and path in a bounded
table, so a busy route costs one dictionary lookup; a request that matches nothing gets ``unmatched``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from fastapi.routing import iter_route_contexts
from starlette.routing import BaseRoute, compile_path

from library_api.observability.metrics import UNMATCHED

ROUTE_TEMPLATE_KEY = "library.route_template"
"""Scope key under which the first middleware that resolves the template leaves it for the others."""

_MAX_REMEMBERED = 4096


@dataclass(frozen=True, slots=True)
class _Entry:
    template: str
    pattern: re.Pattern[str]
    methods: frozenset[str] | None


class RouteTable:
    """Resolves method and path to the route template, built lazily from the routes on first use."""

    def __init__(self, routes: Sequence[BaseRoute]) -> None:
        self._routes = routes
        self._entries: tuple[_Entry, ...] | None = None
        self._remembered: dict[tuple[str, str], str] = {}

    def _build(self) -> tuple[_Entry, ...]:
        entries = []
        for context in iter_route_contexts(self._routes):
            template = context.path_format or context.path
            if not template:
                continue
            pattern = getattr(context, "path_regex", None)
            if pattern is None:
                pattern = compile_path(template)[0]
            methods = context.methods
            entries.append(_Entry(template, pattern, frozenset(methods) if methods else None))
        return tuple(entries)

    def resolve(self, method: str, path: str) -> str:
        """The template of the route that will serve ``method path``, or ``unmatched``."""
        key = (method, path)
        template = self._remembered.get(key)
        if template is not None:
            return template
        if self._entries is None:
            self._entries = self._build()
        template = UNMATCHED
        path_only: str | None = None
        for entry in self._entries:
            if entry.pattern.match(path) is None:
                continue
            if entry.methods is None or method in entry.methods:
                template = entry.template
                break
            if path_only is None:
                path_only = entry.template
        else:
            if path_only is not None:
                template = path_only
        if len(self._remembered) >= _MAX_REMEMBERED:
            self._remembered.clear()
        self._remembered[key] = template
        return template
