"""Requests for the fast-path routes, sent to their handler ahead of FastAPI's router.

FastAPI finds a request's route by asking every route of every included router in turn, each through a few
layers of bookkeeping; for a read that is answered from a cache this was the largest single cost in the
process, larger than the handler (about a quarter of the CPU of ``GET /api/v1/books/{id}``, measured in
process: ``docs/benchmarks.md``). :class:`FastPathDispatch` is one Starlette route placed first in the
application's routes. For a request it finds the route FastAPI would choose: the first route, in the
application's order, that matches path and method in full. Behind the service's edge middleware, which has
already resolved the route template that way (:mod:`library_api.http.routes`), that is one lookup by method and
template; without it, each route's own public ``matches`` is asked, and the answer remembered per method and
path in a bounded table. When that route is served by the fast path (:mod:`library_api.http.fast_path` plans
it), the dispatcher matches the request itself and runs the same fast handler, with the same path parameters,
``endpoint`` and ``route`` in the scope; for every other request it does not match, and FastAPI's router
carries on as if it were not there. So it changes which code finds the route, never which route answers.

It stands aside (FastAPI routes as usual) while ``app.dependency_overrides`` holds anything, under a
``root_path``, and for any route that sets a body-size limit. The table of routes is read at the first request,
when the factory has built the application.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from fastapi.routing import RouteContext, iter_route_contexts
from starlette.requests import Request
from starlette.routing import BaseRoute, Match
from starlette.types import Receive, Scope, Send

from library_api.http.fast_path import FastPathRoute, Plan, answer, plan_or_none, refusal
from library_api.http.routes import ROUTE_TEMPLATE_KEY

_MAX_REMEMBERED = 4096
_UNRESOLVED: Any = object()
_Target = tuple[RouteContext, Plan]


class FastPathDispatch(BaseRoute):
    """The first route of the application: takes the requests whose route is on the fast path, and only those."""

    def __init__(self, routes: Sequence[BaseRoute]) -> None:
        self._routes = routes
        self._contexts: tuple[tuple[RouteContext, Plan | None], ...] | None = None
        self._by_template: dict[tuple[str, str], _Target | None] | None = None
        self._remembered: dict[tuple[str, str], _Target | None] = {}

    def _table(self) -> tuple[tuple[RouteContext, Plan | None], ...]:
        if self._contexts is None:
            routes = list(self._routes)
            table = []
            for context in iter_route_contexts(routes):
                route = context.original_route
                if route is self:
                    continue
                fast = None
                if isinstance(route, FastPathRoute) and getattr(context, "max_body_size", None) is None:
                    fast = plan_or_none(route, routes)
                table.append((context, fast))
            self._contexts = tuple(table)
        return self._contexts

    def _templates(self) -> dict[tuple[str, str], _Target | None]:
        """The route FastAPI picks for a method and route template: the first in order (fast or not)."""
        if self._by_template is None:
            found: dict[tuple[str, str], _Target | None] = {}
            for context, fast in self._table():
                template = context.path_format
                for method in context.methods or ():
                    if template and (method, template) not in found:
                        found[(method, template)] = None if fast is None else (context, fast)
            self._by_template = found
        return self._by_template

    def _target(self, scope: Scope) -> _Target | None:
        template = scope.get(ROUTE_TEMPLATE_KEY)
        if template is not None:  # resolved by the edge middleware as the router will resolve it
            return self._templates().get((scope["method"], template))
        key = (scope["method"], scope["path"])
        found = self._remembered.get(key, _UNRESOLVED)
        if found is _UNRESOLVED:
            found = None
            for context, fast in self._table():
                if context.matches(scope)[0] is Match.FULL:
                    found = None if fast is None else (context, fast)
                    break
            if len(self._remembered) >= _MAX_REMEMBERED:
                self._remembered.clear()
            self._remembered[key] = found
        return found  # type: ignore[no-any-return]

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        """A full match, with the route's own child scope, when FastAPI would pick a fast-path route."""
        if scope["type"] != "http" or scope.get("root_path") or scope["app"].dependency_overrides:
            return Match.NONE, {}
        target = self._target(scope)
        if target is None:
            return Match.NONE, {}
        context, fast = target
        match, child_scope = context.matches(scope)
        if match is not Match.FULL:  # pragma: no cover - the remembered answer is for this very method and path
            return Match.NONE, {}
        child_scope["route"] = context.original_route
        child_scope[_PLAN_KEY] = fast
        return Match.FULL, child_scope

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer with the fast handler of the route :meth:`matches` found."""
        fast: Plan = scope[_PLAN_KEY]
        response = await answer(fast, Request(scope, receive, send))
        await response(scope, receive, send)


_PLAN_KEY = "library.fast_path_plan"
"""Scope key under which :meth:`FastPathDispatch.matches` hands its plan to :meth:`FastPathDispatch.handle`."""


def install_fast_path(routes: list[BaseRoute]) -> FastPathDispatch:
    """Put a :class:`FastPathDispatch` first in ``routes`` (an application's ``app.router.routes``)."""
    dispatch = FastPathDispatch(routes)
    routes.insert(0, dispatch)
    return dispatch


def fast_routes(routes: Sequence[BaseRoute]) -> Iterator[str]:
    """``METHOD path`` of every route the application with ``routes`` serves on the fast path."""
    for context in iter_route_contexts(list(routes)):
        route = context.original_route
        if isinstance(route, FastPathRoute) and refusal(route, list(routes)) is None:
            yield f"{sorted(route.methods or ())[0]} {context.path_format}"
