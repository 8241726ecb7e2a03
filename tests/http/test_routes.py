"""The route template resolved before routing is the one FastAPI's router then chooses."""

from __future__ import annotations

import re

from fastapi.routing import APIWebSocketRoute, iter_route_contexts
from starlette.routing import WebSocketRoute
from starlette.types import Message, Receive, Scope, Send

from library_api.http.fast_dispatch import FastPathDispatch
from library_api.http.routes import ROUTE_TEMPLATE_KEY, RouteTable
from library_api.observability.metrics import UNMATCHED
from tests.conftest import AppFactory


async def test_every_route_resolves_to_the_template_the_router_chooses(app_factory: AppFactory) -> None:
    app = await app_factory()
    table = RouteTable(app.routes)
    endpoints = {context.endpoint: context.path_format for context in iter_route_contexts(app.routes)}
    checked = 0
    for context in iter_route_contexts(app.routes):
        if isinstance(context.original_route, APIWebSocketRoute | WebSocketRoute | FastPathDispatch):
            continue  # WebSocket endpoints never see an HTTP request; the fast-path dispatch has no path of its own
        template = context.path_format
        path = re.sub(r"\{[^}]+\}", "7", template)
        for method in sorted(context.methods or {"GET"}):
            scope: Scope = {
                "type": "http",
                "asgi": {"version": "3.0", "spec_version": "2.4"},
                "method": method,
                "path": path,
                "raw_path": path.encode(),
                "root_path": "",
                "scheme": "http",
                "query_string": b"",
                "headers": [(b"host", b"testserver")],
                "client": ("127.0.0.1", 1),
                "server": ("testserver", 80),
            }

            async def receive() -> Message:
                return {"type": "http.request", "body": b""}

            async def send(message: Message) -> None:
                return None

            await app(scope, receive, send)
            # FastAPI's own choice: the effective route of an included router, or the plain route's endpoint
            effective = scope.get("fastapi", {}).get("effective_route_context")
            chosen = effective.path_format if effective is not None else endpoints[scope["endpoint"]]
            assert scope[ROUTE_TEMPLATE_KEY] == chosen == template
            assert table.resolve(method, path) == template
            checked += 1
    assert checked >= 20


async def test_unknown_paths_and_methods(app_factory: AppFactory) -> None:
    app = await app_factory()
    table = RouteTable(app.routes)
    assert table.resolve("GET", "/nothing/here") == UNMATCHED
    assert table.resolve("GET", "/api/v1/books/not-a-number/extra") == UNMATCHED
    # a method the route does not allow still belongs to the route (it answers 405)
    assert table.resolve("PUT", "/api/v1/books") == "/api/v1/books"
    assert table.resolve("GET", "/api/v1/books/12/cover") == "/api/v1/books/{book_id}/cover"


async def test_remembered_answers_are_bounded() -> None:
    async def endpoint(scope: Scope, receive: Receive, send: Send) -> None:
        return None

    table = RouteTable([])
    for number in range(5000):
        assert table.resolve("GET", f"/unknown/{number}") == UNMATCHED
    assert len(table._remembered) <= 4096
