"""A single-valued query parameter given twice is refused; list parameters may repeat."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.routing import APIRoute

from library_api.http.query import parameter_count, single_valued_names
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


PROBLEM_TYPE = "urn:library-api:problem:too-many-query-parameters"


def query(pairs: list[tuple[str, str]]) -> str:
    return "&".join(f"{name}={value}" for name, value in pairs)


async def test_thousands_of_parameters_are_refused_before_any_other_check(app_factory: AppFactory) -> None:
    """The attack: a 64 KiB query of one repeated name, unauthenticated; and thousands of distinct names."""
    app = await app_factory()
    repeated = "&".join(["q=a"] * 16_000)  # 64 KiB
    distinct = query([(f"p{number}", "1") for number in range(5000)])
    async with client_for(app) as http:
        answers = [await http.get(f"/api/v1/books?{raw}") for raw in (repeated, distinct)]
        escaped = await http.get("/api/v1/books?" + "&".join(["q=%FF"] * 200))  # over the limit and not UTF-8
    for answer in (*answers, escaped):
        assert answer.status_code == 414
        assert answer.headers["content-type"] == "application/problem+json"
        assert answer.json()["type"] == PROBLEM_TYPE
        assert "more than 100 parameters" in answer.json()["detail"]


async def test_a_query_at_the_limit_is_checked_as_usual(app_factory: AppFactory) -> None:
    """100 parameters (the default limit) pass the count; distinct or repeated, each gets its ordinary answer."""
    app = await app_factory()
    at_limit = {
        "distinct": query([(f"p{number}", "1") for number in range(99)] + [("q", "a")]),
        "repeated unknown": query([("x", str(number)) for number in range(100)]),
        "repeated single-valued": query([("q", str(number)) for number in range(100)]),
        "repeated list": query([("tag", "a")] * 10 + [("x", "1")] * 90),
    }
    async with client_for(app) as http:
        answers = {name: await http.get(f"/api/v1/books?{raw}") for name, raw in at_limit.items()}
        over = await http.get("/api/v1/books?" + query([("x", str(number)) for number in range(101)]))
    assert answers["distinct"].status_code == 200
    assert answers["repeated unknown"].status_code == 200
    assert answers["repeated single-valued"].status_code == 422
    assert answers["repeated single-valued"].json()["errors"][0]["field"] == "query.q"
    assert answers["repeated list"].status_code == 200
    assert over.status_code == 414


async def test_the_count_is_the_parsers_and_the_limit_is_configurable(app_factory: AppFactory) -> None:
    """Empty pieces are not parameters (as the parser skips them); MAX_QUERY_PARAMETERS sets the limit."""
    assert parameter_count(b"a=1&&b&") == 2
    assert parameter_count(b"&&&&") == 0
    app = await app_factory(max_query_parameters=20)
    async with client_for(app) as http:
        separators = await http.get("/api/v1/books?" + "&" * 500 + "q=a")
        twenty = await http.get("/api/v1/books?" + query([(f"p{number}", "1") for number in range(20)]))
        twenty_one = await http.get("/api/v1/books?" + query([(f"p{number}", "1") for number in range(21)]))
        health = await http.get("/health?" + query([("x", "1")] * 500))  # probes take no parameters: not parsed
    assert separators.status_code == 200
    assert twenty.status_code == 200
    assert twenty_one.status_code == 414
    assert "more than 20 parameters" in twenty_one.json()["detail"]
    assert health.status_code == 200


async def test_the_refusal_is_documented_on_every_api_operation(app_factory: AppFactory) -> None:
    app = await app_factory()
    paths = app.openapi()["paths"]
    operations = [
        operation for path, item in paths.items() if path.startswith("/api/v1") for operation in item.values()
    ]
    assert operations
    assert all("414" in operation["responses"] for operation in operations)
    assert all(
        "414" not in operation["responses"]
        for path, item in paths.items()
        if not path.startswith("/api/v1")
        for operation in item.values()
    )
