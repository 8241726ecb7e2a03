"""The application's API routes as FastAPI resolves them (prefixes applied), for tests that walk every route."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute, iter_route_contexts


@dataclass(frozen=True)
class ApiRoute:
    path: str
    methods: frozenset[str]
    dependant: Dependant


def api_routes(app: FastAPI) -> Iterator[ApiRoute]:
    for context in iter_route_contexts(app.routes):
        original = context.original_route
        if isinstance(original, APIRoute):
            yield ApiRoute(
                path=str(context.path), methods=frozenset(context.methods or ()), dependant=original.dependant
            )
