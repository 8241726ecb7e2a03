"""The lean route handler answers exactly what FastAPI's handler answers, and only where it may stand in.

Every comparison sends the same request twice to the same application: once as it is (lean handlers serve the
eligible routes) and once with an unrelated dependency override in place, which makes every route fall back to
FastAPI's own handler. Status, headers (but the date and the fresh request id) and body must match byte for byte.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from datetime import datetime, timedelta
from typing import Annotated, Any

import fastapi.routing
import httpx
import pytest
from fastapi import APIRouter, Body, Cookie, Depends, FastAPI, Header, Query, Request, Response, Security
from fastapi.responses import HTMLResponse
from fastapi.routing import APIRoute
from fastapi.security import OAuth2PasswordBearer
from pydantic import BaseModel, Json
from starlette.requests import HTTPConnection

from library_api.bookings.schemas import BookingCreate
from library_api.db.base import utcnow
from library_api.dependencies.context import AppContext
from library_api.http.lean import LeanRoute, refusal
from library_api.http.query import single_valued_query
from library_api.security.permissions import Role
from tests.support.factories import create_book, user_headers
from tests.support.http import client_for


def _unused() -> None:
    """Only ever named in ``dependency_overrides``: its presence sends every request to FastAPI's handler."""


async def _both(app: FastAPI, http: httpx.AsyncClient, url: str, headers: dict[str, str]) -> None:
    """Send ``url`` through the lean handler and through FastAPI's, and require identical answers."""
    lean = await http.get(url, headers=headers)
    app.dependency_overrides[_unused] = _unused
    try:
        reference = await http.get(url, headers=headers)
    finally:
        app.dependency_overrides.pop(_unused)
    assert (lean.status_code, lean.content) == (reference.status_code, reference.content), url
    assert _comparable(lean.headers) == _comparable(reference.headers), url


def _comparable(headers: httpx.Headers) -> list[tuple[str, str]]:
    return sorted((name, value) for name, value in headers.multi_items() if name not in ("date", "x-request-id"))


def _included_routes(routes: list[Any]) -> Iterator[APIRoute]:
    """Every ``APIRoute`` of an application, looking inside included routers."""
    for route in routes:
        router = getattr(route, "original_router", None)
        if router is not None:
            yield from _included_routes(router.routes)
        elif isinstance(route, APIRoute):
            yield route


@pytest.fixture
def solver_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths of the requests FastAPI's own handler solved dependencies for."""
    calls: list[str] = []
    original = fastapi.routing.solve_dependencies

    async def counted(**kwargs: Any) -> Any:
        calls.append(kwargs["request"].url.path)
        return await original(**kwargs)

    monkeypatch.setattr(fastapi.routing, "solve_dependencies", counted)
    return calls


@pytest.fixture
async def reader_data(ctx: AppContext) -> dict[str, Any]:
    """A reader with two bookings, another reader with one, and a librarian."""
    reader, reader_headers = await user_headers(ctx)
    _, other_headers = await user_headers(ctx)
    _, librarian_headers = await user_headers(ctx, Role.LIBRARIAN)
    book = await create_book(ctx, copies=5)
    start = utcnow() + timedelta(days=1)
    ids = []
    async with ctx.database.sessionmaker() as session:
        for who in (reader_headers, reader_headers, other_headers):
            principal = await ctx.authenticator.from_bearer(who["Authorization"].split()[1])
            body = BookingCreate(book_id=book.id, start=start, end=start + timedelta(days=1))
            ids.append((await ctx.bookings.create(session, principal, body)).id)
    return {
        "reader": reader_headers,
        "librarian": librarian_headers,
        "own": ids[0],
        "others": ids[2],
        "user_id": reader.id,
    }


async def test_the_hot_reads_skip_fastapis_dependency_solver(
    app: FastAPI, reader_data: dict[str, Any], solver_calls: list[str]
) -> None:
    async with client_for(app) as http:
        for path in ("/api/v1/auth/me", f"/api/v1/bookings/{reader_data['own']}"):
            assert (await http.get(path, headers=reader_data["reader"])).status_code == 200
        assert solver_calls == []
        assert (await http.get("/api/v1/users", headers=reader_data["reader"])).status_code == 403
    assert solver_calls == ["/api/v1/users"]  # a route with a session dependency keeps FastAPI's handler


async def test_the_lean_routes_answer_as_fastapi_does(app: FastAPI, reader_data: dict[str, Any]) -> None:
    lean = sorted(
        f"{sorted(route.methods)[0]} {route.path}"
        for route in _included_routes(app.routes)
        if isinstance(route, LeanRoute) and refusal(route) is None
    )
    # the booking list sets a Link header (keyset pages), so it takes the Response and keeps FastAPI's handler
    assert lean == ["GET /auth/me", "GET /auth/principal", "GET /bookings/{booking_id}"]
    credentials: list[dict[str, str]] = [
        {},
        reader_data["reader"],
        reader_data["librarian"],
        {"Authorization": "Bearer not-a-token"},
        {"Authorization": "Basic dXNlcjpwYXNz"},
    ]
    queries = [
        "",
        "limit=20",
        "limit=0",
        "limit=abc",
        "limit=",
        "limit=101",
        "offset=-1",
        "limit=5&offset=1",
        "offset=50",
        f"user_id={reader_data['user_id']}",
        "user_id=99999999999",
        "book_id=0",
        "status=active",
        "status=bogus",
        "limit=1&limit=2",
        "q=%FF",
        "unknown=1",
        "limit=abc&offset=-1&status=nope",
    ]
    ids = [str(reader_data["own"]), str(reader_data["others"]), "0", "-5", "abc", "1.5", "2147483648", "999999"]
    urls = [f"/api/v1/bookings?{query}" for query in queries]
    urls += [f"/api/v1/bookings/{booking_id}" for booking_id in ids]
    urls += ["/api/v1/auth/me", "/api/v1/auth/me?x=1", "/api/v1/auth/principal", "/api/v1/auth/principal?a=1&a=2"]
    async with client_for(app) as http:
        for url in urls:
            for headers in credentials:
                await _both(app, http, url, headers)


async def test_an_override_reaches_a_lean_route(app: FastAPI, reader_data: dict[str, Any]) -> None:
    """With an override in place the lean route defers to FastAPI, which applies it."""

    async def refuse() -> None:
        raise fastapi.HTTPException(status_code=418, detail="overridden")

    app.dependency_overrides[single_valued_query] = refuse
    try:
        async with client_for(app) as http:
            answer = await http.get("/api/v1/bookings", headers=reader_data["reader"])
    finally:
        app.dependency_overrides.clear()
    assert answer.status_code == 418


# ----- the mechanics, on a small application of their own -----


class Item(BaseModel):
    """A response model for the probes."""

    name: str
    size: int


calls: dict[str, int] = {}


async def counted_dependency() -> str:
    calls["counted"] = calls.get("counted", 0) + 1
    return "counted"


async def uncached_dependency(request: Request) -> str:
    calls["uncached"] = calls.get("uncached", 0) + 1
    return request.url.path


def _probe_app() -> FastAPI:
    router = APIRouter(route_class=LeanRoute)

    @router.get("/required")
    async def required(q: str, n: Annotated[int, Query(ge=1)] = 1) -> Item:
        return Item(name=q, size=n)

    @router.get("/defaults")
    async def defaults(
        when: datetime = datetime(2020, 1, 1),  # a default FastAPI copies per request
        checked: Annotated[int, Query(validate_default=True)] = "7",  # type: ignore[assignment]
    ) -> dict[str, Any]:
        return {"when": when.isoformat(), "checked": checked}

    @router.get("/cached")
    async def cached(
        first: Annotated[str, Depends(counted_dependency)],
        second: Annotated[str, Depends(counted_dependency)],
        third: Annotated[str, Depends(uncached_dependency, use_cache=False)],
        fourth: Annotated[str, Depends(uncached_dependency, use_cache=False)],
    ) -> dict[str, Any]:
        return {"values": [first, second, third, fourth], "calls": dict(calls)}

    @router.get("/own-response")
    async def own_response(request: Request) -> Response:
        return Response(content=request.url.path, media_type="text/plain", headers={"X-Own": "yes"})

    @router.get("/wrong", response_model=Item)
    async def wrong() -> Any:
        return {"name": "no size"}

    @router.get("/created/{name}", status_code=201, response_model_exclude_none=True)
    async def created(name: str, size: int | None = None) -> dict[str, Any]:
        return {"name": name, "size": size}

    app = FastAPI()
    app.include_router(router, dependencies=[Depends(counted_dependency)])

    @app.exception_handler(fastapi.exceptions.ResponseValidationError)
    async def invalid_response(_request: Request, exc: fastapi.exceptions.ResponseValidationError) -> Response:
        return Response(json.dumps(len(exc.errors())), status_code=500)

    return app


@pytest.mark.parametrize(
    "url",
    [
        "/required?q=x",
        "/required",
        "/required?q=x&n=0",
        "/required?n=abc",
        "/defaults",
        "/defaults?when=2021-02-03T04:05:06&checked=9",
        "/defaults?checked=x",
        "/cached",
        "/own-response",
        "/wrong",
        "/created/a",
        "/created/a?size=3",
        "/created/a?size=big",
    ],
)
async def test_the_mechanics_match_fastapi(url: str) -> None:
    app = _probe_app()
    calls.clear()
    async with client_for(app) as http:
        lean = await http.get(url)
        lean_calls = dict(calls)
        calls.clear()
        app.dependency_overrides[_unused] = _unused
        reference = await http.get(url)
        assert (lean.status_code, lean.content) == (reference.status_code, reference.content)
        assert _comparable(lean.headers) == _comparable(reference.headers)
        assert lean_calls == calls


async def test_the_probe_routes_are_all_lean(solver_calls: list[str]) -> None:
    app = _probe_app()
    async with client_for(app) as http:
        for url in ("/required?q=x", "/defaults", "/cached", "/own-response", "/created/a"):
            assert (await http.get(url)).status_code in (200, 201)
    assert solver_calls == []


scheme = OAuth2PasswordBearer(tokenUrl="/token", scopes={"read": "read"})


async def with_parameter(q: str) -> str:
    return q


async def with_header(x_probe: Annotated[str | None, Header()] = None) -> str | None:
    return x_probe


async def with_response(response: Response) -> None:
    response.headers["X-Probe"] = "1"


async def with_scopes(token: Annotated[str | None, Security(scheme, scopes=["read"])]) -> str | None:
    return token


async def yielding() -> AsyncIterator[str]:
    yield "value"


def plain() -> str:
    return "value"


async def both(request: Request, connection: HTTPConnection) -> bool:
    return request.scope is connection.scope


def _refused_app() -> tuple[FastAPI, dict[str, str]]:
    router = APIRouter(route_class=LeanRoute)
    expected: dict[str, str] = {}

    def refused(path: str, reason: str) -> str:
        expected[path] = reason
        return path

    @router.post(refused("/body", "it reads a body"))
    async def body(value: Annotated[int, Body()]) -> int:
        return value

    @router.get(refused("/header", "it reads headers or cookies"))
    async def header(x_probe: Annotated[str | None, Header()] = None, c: Annotated[str | None, Cookie()] = None) -> str:
        return str(x_probe)

    @router.get(refused("/sync", "its endpoint is not a coroutine function"))
    def sync() -> int:
        return 1

    @router.get(refused("/response", "its endpoint takes a response, background tasks or a WebSocket"))
    async def takes_response(response: Response) -> int:
        return 1

    @router.get(refused("/html", "it sets a response class"), response_class=HTMLResponse)
    async def html() -> str:
        return "<p>hi</p>"

    @router.delete(refused("/gone", "its status code has no body"), status_code=204)
    async def gone() -> None:
        return None

    @router.get(refused("/many", "parameter 'tag' takes several values"))
    async def many(tag: Annotated[list[str] | None, Query()] = None) -> int:
        return len(tag or [])

    @router.get(refused("/model", "parameter 'filters' is a model"))
    async def model(filters: Annotated[Item, Query()]) -> Item:
        return filters

    @router.get(refused("/json", "parameter 'data' is JSON"))
    async def as_json(data: Annotated[Json[list[int]], Query()]) -> int:
        return len(data)

    @router.get(refused("/alias", "parameter 'value' has a validation alias"))
    async def alias(value: Annotated[int, Query(validation_alias="v")] = 0) -> int:
        return value

    @router.get(refused("/dependency-parameters", "dependency 'with_parameter' has parameters or dependencies"))
    async def dependency_parameters(q: Annotated[str, Depends(with_parameter)]) -> str:
        return q

    @router.get(refused("/dependency-header", "dependency 'with_header' reads headers, cookies or a body"))
    async def dependency_header(value: Annotated[str | None, Depends(with_header)]) -> str:
        return str(value)

    @router.get(refused("/dependency-response", "dependency 'with_response' takes a response"))
    async def dependency_response(_: Annotated[None, Depends(with_response)]) -> int:
        return 1

    @router.get(refused("/dependency-scopes", "dependency 'with_scopes' has parameters or dependencies"))
    async def dependency_scopes(token: Annotated[str | None, Depends(with_scopes)]) -> str:
        return str(token)

    @router.get(refused("/scoped", "dependency 'OAuth2PasswordBearer' uses security scopes"))
    async def scoped(token: Annotated[str | None, Security(scheme, scopes=["read"])]) -> str:
        return str(token)

    @router.get(refused("/generator", "dependency 'yielding' is not a coroutine function"))
    async def generator(value: Annotated[str, Depends(yielding)]) -> str:
        return value

    @router.get(refused("/plain", "dependency 'plain' is not a coroutine function"))
    async def plain_dependency(value: Annotated[str, Depends(plain)]) -> str:
        return value

    @router.get(refused("/twice", "its endpoint takes the request twice"))
    async def twice(request: Request, connection: HTTPConnection) -> bool:
        return request.scope is connection.scope

    @router.get(refused("/dependency-twice", "dependency 'both' takes the request twice"))
    async def dependency_twice(same: Annotated[bool, Depends(both)]) -> bool:
        return same

    app = FastAPI()
    app.include_router(router)
    return app, expected


def test_each_refusal_names_its_reason() -> None:
    app, expected = _refused_app()
    reasons = {route.path: refusal(route) for route in _included_routes(app.routes)}
    for path, reason in expected.items():
        found = reasons[path]
        assert found is not None, path
        assert found.startswith(reason), (path, found)


async def test_refused_routes_keep_working(solver_calls: list[str]) -> None:
    app, _ = _refused_app()
    async with client_for(app) as http:
        assert (await http.get("/sync")).json() == 1
        assert (await http.get("/plain")).json() == "value"
        assert (await http.get("/many?tag=a&tag=b")).json() == 2
        assert (await http.get("/html")).text == "<p>hi</p>"
        assert (await http.get("/twice")).json() is True
        assert (await http.get("/dependency-twice")).json() is True
    assert solver_calls == ["/sync", "/plain", "/many", "/html", "/twice", "/dependency-twice"]
