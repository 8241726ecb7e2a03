"""The fast-path dispatch takes exactly the requests FastAPI would route to a fast-path route, and no others."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute

from library_api.dependencies.context import AppContext
from library_api.http import fast_dispatch
from library_api.http.fast_dispatch import FastPathDispatch, fast_routes, install_fast_path
from tests.http.test_fast_path import _probe_router
from tests.support.factories import create_book
from tests.support.http import client_for


@pytest.fixture
def routed(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths of the requests FastAPI's router handed to an ``APIRoute``."""
    seen: list[str] = []
    original = APIRoute.handle

    async def handle(self: APIRoute, scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["path"])
        await original(self, scope, receive, send)

    monkeypatch.setattr(APIRoute, "handle", handle)
    return seen


def _app() -> FastAPI:
    app = FastAPI()

    @app.get("/probe/created/shadow")
    async def shadow() -> str:
        return "the earlier route"

    app.include_router(_probe_router(), prefix="/probe")
    install_fast_path(app.router.routes)
    return app


async def test_fast_routes_skip_fastapis_router_and_answer_the_same(routed: list[str]) -> None:
    app = _app()
    assert isinstance(app.router.routes[0], FastPathDispatch)
    assert "GET /probe/created/{name}" in set(fast_routes(app.routes))
    async with client_for(app) as http:
        fast = await http.get("/probe/created/a?size=2")
        assert routed == []
        app.dependency_overrides[_app] = _app  # FastAPI routes every request while an override is in place
        reference = await http.get("/probe/created/a?size=2")
        assert routed == ["/probe/created/a"]
    assert (fast.status_code, fast.content, fast.headers["content-length"]) == (
        reference.status_code,
        reference.content,
        reference.headers["content-length"],
    )
    assert fast.status_code == 201


async def test_a_route_ahead_of_a_fast_route_keeps_its_requests(routed: list[str]) -> None:
    async with client_for(_app()) as http:
        assert (await http.get("/probe/created/shadow")).json() == "the earlier route"
        assert (await http.head("/probe/created/a")).status_code == 405  # no route takes HEAD: FastAPI's answer
        assert (await http.get("/probe/unmarked?q=3")).json() == 3
    assert routed == ["/probe/created/shadow", "/probe/created/a", "/probe/unmarked"]


async def test_under_a_root_path_fastapi_routes(routed: list[str]) -> None:
    outer = FastAPI()
    outer.mount("/mounted", _app())  # the mounted application sees a root path
    async with client_for(outer) as http:
        assert (await http.get("/mounted/probe/created/a")).status_code == 201
    assert routed == ["/mounted/probe/created/a"]


async def test_the_remembered_routes_are_bounded(monkeypatch: pytest.MonkeyPatch, routed: list[str]) -> None:
    monkeypatch.setattr(fast_dispatch, "_MAX_REMEMBERED", 2)
    app = _app()
    dispatch = app.router.routes[0]
    assert isinstance(dispatch, FastPathDispatch)
    async with client_for(app) as http:
        for name in ("a", "b", "c", "a"):
            assert (await http.get(f"/probe/created/{name}")).json() == {"name": name, "size": 0}
    assert routed == []
    assert len(dispatch._remembered) <= 2


async def test_behind_the_middleware_the_resolved_template_finds_the_route(
    app: FastAPI, ctx: AppContext, routed: list[str]
) -> None:
    book = await create_book(ctx)
    async with client_for(app) as http:
        assert (await http.get("/api/v1/auth/principal")).status_code == 200
        assert (await http.get(f"/api/v1/books/{book.id}")).json()["id"] == book.id
        assert (await http.get("/api/v1/books/0")).status_code == 422
        assert routed == []
        assert (await http.get("/api/v1/books?limit=1")).status_code == 200
        assert (await http.head(f"/api/v1/books/{book.id}")).status_code == 405
    assert routed == ["/api/v1/books", f"/api/v1/books/{book.id}"]
