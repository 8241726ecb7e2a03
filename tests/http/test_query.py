"""A single-valued query parameter given twice is refused; list parameters may repeat."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.routing import APIRoute

from library_api.http.query import single_valued_names
from tests.conftest import AppFactory
from tests.support.http import client_for


async def test_repeating_a_single_valued_parameter_is_a_422(app_factory: AppFactory) -> None:
    app = await app_factory()
    async with client_for(app) as http:
        repeated = await http.get("/api/v1/books", params=[("q", "a"), ("q", "b")])
        listed = await http.get("/api/v1/books", params=[("tag", "a"), ("tag", "b")])
        unknown = await http.get("/api/v1/books", params=[("x", "1"), ("x", "2")])
        health = await http.get("/health", params=[("x", "1"), ("x", "2")])
    assert repeated.status_code == 422
    assert repeated.headers["content-type"] == "application/problem+json"
    assert repeated.json()["errors"][0]["field"] == "query.q"
    assert listed.status_code == 200
    assert unknown.status_code == 200  # unknown parameters are ignored, as they are when given once
    assert health.status_code == 200


def test_sequences_are_recognised_inside_optional_and_annotated() -> None:
    router = APIRouter()

    @router.get("/probe")
    async def probe(
        one: int = 0,
        maybe: str | None = None,
        many: Annotated[list[str] | None, Query()] = None,
        pair: Annotated[tuple[int, ...], Query()] = (),
    ) -> None:
        return None

    route = router.routes[0]
    assert isinstance(route, APIRoute)
    assert single_valued_names(route) == {"one", "maybe"}
