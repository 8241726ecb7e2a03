"""The fast path answers exactly what FastAPI's handler answers, and only where it may stand in.

Every comparison sends the same request twice to the same application: once as it is (the fast handler serves
the marked routes) and once with an unrelated dependency override in place, which sends every request to
FastAPI's own handler. Status, headers (but the date and the fresh request id) and body must match byte for byte.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Annotated, Any

import fastapi.routing
import httpx
import pytest
from fastapi import APIRouter, Body, Cookie, Depends, FastAPI, Header, Path, Query, Request, Response, Security
from fastapi.exceptions import RequestValidationError, ResponseValidationError
from fastapi.responses import HTMLResponse
from fastapi.security import OAuth2PasswordBearer
from pydantic import BaseModel
from starlette.requests import HTTPConnection

from library_api.bookings.schemas import BookingCreate
from library_api.db.base import utcnow
from library_api.dependencies.context import AppContext
from library_api.http.fast_dispatch import fast_routes
from library_api.http.fast_path import FastPathRoute, fast_path, refusal
from library_api.http.query import single_valued_query
from library_api.security.permissions import Role
from tests.support.factories import create_book, user_headers
from tests.support.http import client_for


def _unused() -> None:
    """Only ever named in ``dependency_overrides``: its presence sends every request to FastAPI's handler."""


async def _both(app: FastAPI, http: httpx.AsyncClient, url: str, headers: dict[str, str]) -> None:
    """Send ``url`` through the fast handler and through FastAPI's, and require identical answers."""
    fast = await http.get(url, headers=headers)
    app.dependency_overrides[_unused] = _unused
    try:
        reference = await http.get(url, headers=headers)
    finally:
        app.dependency_overrides.pop(_unused)
    assert (fast.status_code, fast.content) == (reference.status_code, reference.content), url
    assert _comparable(fast.headers) == _comparable(reference.headers), url


def _comparable(headers: httpx.Headers) -> list[tuple[str, str]]:
    return sorted((name, value) for name, value in headers.multi_items() if name not in ("date", "x-request-id"))


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
    """A reader with two bookings, another reader with one, a librarian, and a book."""
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
        "book": book.id,
    }


async def test_the_hot_reads_skip_fastapis_dependency_solver(
    app: FastAPI, reader_data: dict[str, Any], solver_calls: list[str]
) -> None:
    paths = (
        "/api/v1/auth/me",
        "/api/v1/auth/principal",
        f"/api/v1/bookings/{reader_data['own']}",
        "/api/v1/bookings?limit=20",
        f"/api/v1/books/{reader_data['book']}",
    )
    async with client_for(app) as http:
        for path in paths:
            assert (await http.get(path, headers=reader_data["reader"])).status_code == 200, path
        assert solver_calls == []
        assert (await http.get("/api/v1/users", headers=reader_data["reader"])).status_code == 403
    assert solver_calls == ["/api/v1/users"]  # an unmarked route keeps FastAPI's handler


async def test_the_fast_routes_answer_as_fastapi_does(app: FastAPI, reader_data: dict[str, Any]) -> None:
    assert sorted(fast_routes(app.routes)) == [
        "GET /api/v1/auth/me",
        "GET /api/v1/auth/principal",
        "GET /api/v1/bookings",
        "GET /api/v1/bookings/{booking_id}",
        "GET /api/v1/books/{book_id}",
    ]
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
        "limit=1",
        "limit=0",
        "limit=abc",
        "limit=",
        "limit=101",
        "offset=-1",
        "limit=5&offset=1",
        "offset=50",
        "offset=20000",
        f"user_id={reader_data['user_id']}",
        "user_id=99999999999",
        "book_id=0",
        "status=active",
        "status=bogus",
        "cursor=",
        "cursor=bogus",
        "limit=1&limit=2",
        "q=%FF",
        "unknown=1",
        "limit=abc&offset=-1&status=nope",
    ]
    ids = [str(reader_data["own"]), str(reader_data["others"]), "0", "-5", "abc", "1.5", "2147483648", "999999"]
    urls = [f"/api/v1/bookings?{query}" for query in queries]
    urls += [f"/api/v1/bookings/{booking_id}" for booking_id in ids]
    urls += [f"/api/v1/books/{book_id}" for book_id in [str(reader_data["book"]), *ids[2:]]]
    urls += ["/api/v1/auth/me", "/api/v1/auth/me?x=1", "/api/v1/auth/principal", "/api/v1/auth/principal?a=1&a=2"]
    async with client_for(app) as http:
        for url in urls:
            for headers in credentials:
                await _both(app, http, url, headers)
        page = await http.get("/api/v1/bookings?limit=1", headers=reader_data["reader"])
        assert "link" in page.headers  # the Response parameter's header reaches the answer
        await _both(app, http, f"/api/v1/bookings?limit=1&cursor={page.json()['next_cursor']}", reader_data["reader"])
        book = f"/api/v1/books/{reader_data['book']}"
        etag = (await http.get(book)).headers["etag"]
        for condition in (etag, f"W/{etag}", '"other"', "*", ""):
            await _both(app, http, book, {"If-None-Match": condition})


async def test_an_override_reaches_a_fast_route(app: FastAPI, reader_data: dict[str, Any]) -> None:
    """With an override in place the fast route defers to FastAPI, which applies it."""

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


class Gatekeeper:
    """A dependency that is an object, as the service's permission gates are."""

    async def __call__(self, connection: HTTPConnection) -> str:
        return connection.url.path


def _probe_router() -> APIRouter:
    router = APIRouter(route_class=FastPathRoute)

    @fast_path
    @router.get("/required/{name}")
    async def required(name: str, q: str, n: Annotated[int, Query(ge=1)] = 1) -> Item:
        return Item(name=f"{name}:{q}", size=n)

    @fast_path
    @router.get("/headers")
    async def headers(
        x_probe: Annotated[int | None, Header(le=5)] = None,
        named: Annotated[str | None, Header(alias="X-Named", max_length=3)] = None,
        kept: Annotated[str | None, Header(convert_underscores=False)] = None,
    ) -> dict[str, Any]:
        return {"probe": x_probe, "named": named, "kept": kept}

    @fast_path
    @router.get("/cached", dependencies=[Depends(counted_dependency)])
    async def cached(
        first: Annotated[str, Depends(counted_dependency)],
        second: Annotated[str, Depends(counted_dependency)],
        third: Annotated[str, Depends(uncached_dependency, use_cache=False)],
        fourth: Annotated[str, Depends(uncached_dependency, use_cache=False)],
        gate: Annotated[str, Depends(Gatekeeper())],
    ) -> dict[str, Any]:
        return {"values": [first, second, third, fourth, gate], "calls": dict(calls)}

    @fast_path
    @router.get("/own-response", response_model=Item)
    async def own_response(request: Request) -> Response:
        return Response(content=request.url.path, media_type="text/plain", headers={"X-Own": "yes"})

    @fast_path
    @router.get("/sub-response")
    async def sub_response(response: Response, status: int = 0) -> Item:
        response.headers["X-Sub"] = "set"
        if status:
            response.status_code = status
        return Item(name="sub", size=status)

    @fast_path
    @router.get("/wrong", response_model=Item)
    async def wrong() -> Any:
        return {"name": "no size"}

    @fast_path
    @router.get("/created/{name}", status_code=201)
    async def created(name: str, size: int | None = None) -> Item:
        return Item(name=name, size=size or 0)

    @router.get("/unmarked")
    async def unmarked(q: int = 0) -> int:
        return q

    return router


def _probe_app() -> FastAPI:
    app = FastAPI()
    app.include_router(_probe_router(), prefix="/probe", dependencies=[Depends(counted_dependency)])

    @app.exception_handler(ResponseValidationError)
    async def invalid_response(_request: Request, exc: ResponseValidationError) -> Response:
        body = {"errors": [[error["type"], list(error["loc"])] for error in exc.errors()], "at": exc.endpoint_ctx}
        return Response(json.dumps(body), status_code=500)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_request: Request, exc: RequestValidationError) -> Response:
        body = {"errors": exc.errors(), "at": exc.endpoint_ctx}
        return Response(json.dumps(body, default=str), status_code=422)

    return app


@pytest.mark.parametrize(
    ("url", "headers"),
    [
        ("/probe/required/a?q=x", {}),
        ("/probe/required/a", {}),
        ("/probe/required/a?q=x&n=0", {}),
        ("/probe/required/a?n=abc", {}),
        ("/probe/headers", {}),
        ("/probe/headers", {"X-Probe": "3", "X-Named": "abc", "kept": "k"}),
        ("/probe/headers", {"X-Probe": "9", "X-Named": "abcd"}),
        ("/probe/headers", {"X-Probe": "x"}),
        ("/probe/cached", {}),
        ("/probe/own-response", {}),
        ("/probe/sub-response", {}),
        ("/probe/sub-response?status=202", {}),
        ("/probe/wrong", {}),
        ("/probe/created/a", {}),
        ("/probe/created/a?size=3", {}),
        ("/probe/created/a?size=big", {}),
    ],
)
async def test_the_mechanics_match_fastapi(url: str, headers: dict[str, str]) -> None:
    """Answers, dependency calls and the context of validation errors are FastAPI's."""
    app = _probe_app()
    calls.clear()
    async with client_for(app) as http:
        fast = await http.get(url, headers=headers)
        fast_calls = dict(calls)
        calls.clear()
        app.dependency_overrides[_unused] = _unused
        reference = await http.get(url, headers=headers)
        assert (fast.status_code, fast.content) == (reference.status_code, reference.content)
        assert _comparable(fast.headers) == _comparable(reference.headers)
        assert fast_calls == calls


async def test_validation_errors_carry_the_endpoint_context() -> None:
    async with client_for(_probe_app()) as http:
        answer = await http.get("/probe/required/a?n=abc")
    where = answer.json()["at"]
    assert where["function"] == "required"
    assert where["path"] == "GET /probe/required/{name}"
    assert where["file"] == __file__
    assert isinstance(where["line"], int)


async def test_the_probe_routes_are_served_fast(solver_calls: list[str]) -> None:
    app = _probe_app()
    assert "GET /probe/unmarked" not in set(fast_routes(app.routes))
    async with client_for(app) as http:
        for url in ("/probe/required/a?q=x", "/probe/headers", "/probe/cached", "/probe/own-response"):
            assert (await http.get(url)).status_code == 200
        assert (await http.get("/probe/unmarked?q=2")).json() == 2
    assert solver_calls == ["/probe/unmarked"]


async def test_a_router_included_twice_keeps_fastapis_handler(solver_calls: list[str]) -> None:
    app = FastAPI()
    router = _probe_router()
    app.include_router(router, prefix="/one")
    app.include_router(router, prefix="/two")
    assert list(fast_routes(app.routes)) == []
    async with client_for(app) as http:
        assert (await http.get("/one/created/a")).status_code == 201
    assert solver_calls == ["/one/created/a"]


scheme = OAuth2PasswordBearer(tokenUrl="/token", scopes={"read": "read"})


async def with_parameter(q: str) -> str:
    return q


async def yielding() -> AsyncIterator[str]:
    yield "value"


def plain() -> str:
    return "value"


async def both(request: Request, connection: HTTPConnection) -> bool:
    return request.scope is connection.scope


def _refused_app() -> tuple[FastAPI, dict[str, str]]:
    router = APIRouter(route_class=FastPathRoute)
    expected: dict[str, str] = {}

    def refused(path: str, reason: str) -> str:
        expected[path] = reason
        return path

    @fast_path
    @router.post(refused("/body", "parameter 'value' is a body, form or file"))
    async def body(value: Annotated[int, Body()]) -> int:
        return value

    @fast_path
    @router.get(refused("/cookie", "parameter 'c' is neither a path, a query nor a header parameter"))
    async def cookie(c: Annotated[str | None, Cookie()] = None) -> str:
        return str(c)

    @fast_path
    @router.get(refused("/sync", "the endpoint is not an async function"))
    def sync() -> int:
        return 1

    @fast_path
    @router.get(refused("/html", "it sets a response class"), response_class=HTMLResponse)
    async def html() -> str:
        return "<p>hi</p>"

    @fast_path
    @router.get(refused("/untyped", "it declares no response model"))
    async def untyped():  # type: ignore[no-untyped-def]
        return 1

    @fast_path
    @router.get(refused("/excluding", "it sets response-model options"), response_model_exclude_none=True)
    async def excluding() -> Item:
        return Item(name="x", size=1)

    @fast_path
    @router.delete(refused("/gone", "its status code has no body"), status_code=204)
    async def gone() -> None:
        return None

    @fast_path
    @router.get(refused("/many", "parameter 'tag' takes several values or a model"))
    async def many(tag: Annotated[list[str] | None, Query()] = None) -> int:
        return len(tag or [])

    @fast_path
    @router.get(refused("/model", "parameter 'filters' takes several values or a model"))
    async def model(filters: Annotated[Item, Query()]) -> Item:
        return filters

    @fast_path
    @router.get(refused("/alias", "parameter 'value' has a validation alias"))
    async def alias(value: Annotated[int, Query(validation_alias="v")] = 0) -> int:
        return value

    @fast_path
    @router.get(refused("/mutable", "parameter 'when' has a mutable default"))
    async def mutable(when: datetime = datetime(2020, 1, 1)) -> str:
        return when.isoformat()

    @fast_path
    @router.get(refused("/marked-twice", "a parameter carries more than one FastAPI marker"))
    async def marked_twice(value: Annotated[int, Query(), Path()] = 0) -> int:
        return value

    @fast_path
    @router.get(refused("/dependency-parameters", "dependency 'with_parameter' takes 'q'"))
    async def dependency_parameters(q: Annotated[str, Depends(with_parameter)]) -> str:
        return q

    @fast_path
    @router.get(refused("/scoped", "dependency 'OAuth2PasswordBearer' uses security scopes"))
    async def scoped(token: Annotated[str | None, Security(scheme, scopes=["read"])]) -> str:
        return str(token)

    @fast_path
    @router.get(refused("/generator", "dependency 'yielding' is not an async function"))
    async def generator(value: Annotated[str, Depends(yielding)]) -> str:
        return value

    @fast_path
    @router.get(refused("/plain", "dependency 'plain' is not an async function"))
    async def plain_dependency(value: Annotated[str, Depends(plain)]) -> str:
        return value

    @fast_path
    @router.get(refused("/dependency-twice", "dependency 'both' takes 'connection'"))
    async def dependency_twice(same: Annotated[bool, Depends(both)]) -> bool:
        return same

    @router.get(refused("/unmarked", "the endpoint is not marked for the fast path"))
    async def unmarked() -> int:
        return 1

    app = FastAPI()
    app.include_router(router)
    return app, expected


def test_each_refusal_names_its_reason() -> None:
    app, expected = _refused_app()
    routes = {
        context.path_format: context.original_route for context in fastapi.routing.iter_route_contexts(app.routes)
    }
    for path, reason in expected.items():
        route = routes[path]
        assert isinstance(route, FastPathRoute)
        found = refusal(route, app.routes)
        assert found is not None, path
        assert found.startswith(reason), (path, found)


async def test_refused_routes_keep_working(solver_calls: list[str]) -> None:
    app, _ = _refused_app()
    async with client_for(app) as http:
        assert (await http.get("/sync")).json() == 1
        assert (await http.get("/plain")).json() == "value"
        assert (await http.get("/many?tag=a&tag=b")).json() == 2
        assert (await http.get("/html")).text == "<p>hi</p>"
        assert (await http.get("/dependency-twice")).json() is True
    assert solver_calls == ["/sync", "/plain", "/many", "/html", "/dependency-twice"]
