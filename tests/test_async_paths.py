"""Nothing on a request path runs in the thread pool: every route and dependency is a coroutine."""

from __future__ import annotations

import inspect

from fastapi.dependencies.models import Dependant

from library_api.app import create_app
from library_api.config import load_settings
from tests.support.routes import api_routes


def calls(dependant: Dependant) -> list[object]:
    found: list[object] = []
    pending = [dependant]
    while pending:
        current = pending.pop()
        if current.call is not None:
            found.append(current.call)
        pending.extend(current.dependencies)
    return found


def is_async(call: object) -> bool:
    if inspect.iscoroutinefunction(call) or inspect.isasyncgenfunction(call):
        return True
    method = type(call).__dict__.get("__call__") if not inspect.isfunction(call) else None
    return method is not None and inspect.iscoroutinefunction(method)


def test_every_route_and_dependency_is_async() -> None:
    app = create_app(load_settings(env={}, env_file=None))
    offenders = [
        f"{sorted(route.methods)} {route.path}: {getattr(call, '__qualname__', call)}"
        for route in api_routes(app)
        for call in calls(route.dependant)
        if not is_async(call)
    ]
    assert offenders == []
