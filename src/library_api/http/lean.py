"""A lean request handler for API routes whose parameters and dependencies are simple.

FastAPI solves a route's dependencies generically on every request: a nested call per dependency level, a cache
key per dependency, alias and sequence checks per parameter, a throwaway sub-response, telemetry hooks. For an
authenticated read that cost more CPU than the read itself: about 45% of a reader's booking list, in the
profile recorded in ``docs/benchmarks.md``. :class:`LeanRoute` keeps everything FastAPI derives from the
declaration (the OpenAPI document, the dependant, the response field) and replaces only the per-request
interpretation, for routes where that interpretation is plain:

* every dependency is an ``async`` callable that takes nothing, or only the request, and has no
  sub-dependencies, parameters, scopes or clean-up (``yield``): the permission gates, the context, the query
  guard;
* every parameter is a single-valued path or query parameter (no headers, cookies, bodies, lists or models);
* the endpoint is a coroutine and the answer is JSON: a response model, or a ``Response`` it builds itself.

For these routes the handler does what FastAPI does, in the same order and with FastAPI's own field objects:
dependencies in declaration order (cached per request like FastAPI's), then path and query parameters validated
by the same ``ModelField`` into the same error entries, one ``RequestValidationError`` for all of them, then the
endpoint, then the answer validated and serialised by the route's response field. Any other route keeps
FastAPI's handler, and so does every route while ``app.dependency_overrides`` holds anything (tests that
override a dependency get FastAPI's exact behaviour). ``tests/http/test_lean.py`` sends the same requests
through both handlers and compares the answers byte for byte.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, cast

import fastapi.routing
from fastapi import params
from fastapi._compat import field_annotation_is_sequence, get_missing_field_error
from fastapi.datastructures import DefaultPlaceholder
from fastapi.dependencies.models import Dependant
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError, ResponseValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, Json
from starlette.requests import Request
from starlette.responses import Response

Handler = Callable[[Request], Coroutine[Any, Any, Response]]

_EFFECTIVE_ROUTE = getattr(fastapi.routing, "_effective_route_context_var", None)
"""Where FastAPI's own ``get_route_handler`` finds the route as included (with its router's prefix and
dependencies); a private name of FastAPI 0.165. Should an upgrade drop it, every route keeps FastAPI's handler
and the test that the hot reads skip FastAPI's dependency solver fails, which is the signal to look here."""

_IMMUTABLE_DEFAULTS = (type(None), bool, int, float, str, bytes)


@dataclass(frozen=True, slots=True)
class _Dependency:
    """One dependency: what to call, how to hand it the request, and which endpoint argument it fills."""

    call: Callable[..., Awaitable[Any]]
    key: tuple[Any, str | None]
    argument: str | None
    request_argument: str | None
    cached: bool


@dataclass(frozen=True, slots=True)
class _Parameter:
    """One path or query parameter, with what FastAPI would do when it is absent."""

    field: Any
    argument: str
    alias: str
    location: tuple[str, str]
    required: bool
    default: Any
    copy_default: bool
    validate_default: bool


@dataclass(frozen=True, slots=True)
class LeanPlan:
    """Everything the lean handler needs, worked out once from a route's declaration."""

    endpoint: Callable[..., Awaitable[Any]]
    dependencies: tuple[_Dependency, ...]
    path: tuple[_Parameter, ...]
    query: tuple[_Parameter, ...]
    request_argument: str | None
    response_field: Any
    serialize_options: Mapping[str, Any]
    status_code: int
    overrides_provider: Any


def refusal(route: Any) -> str | None:
    """Why ``route`` (an ``APIRoute`` or FastAPI's view of one as included) keeps FastAPI's handler, if it does."""
    return next(_refusals(route), None)


def _refusals(route: Any) -> Iterator[str]:
    dependant: Dependant = route.dependant
    if route.body_field is not None or dependant.body_params:
        yield "it reads a body"
    if dependant.header_params or dependant.cookie_params:
        yield "it reads headers or cookies"
    if not inspect.iscoroutinefunction(dependant.call):
        yield "its endpoint is not a coroutine function"
    if dependant.response_param_name or dependant.background_tasks_param_name or dependant.websocket_param_name:
        yield "its endpoint takes a response, background tasks or a WebSocket"
    if dependant.security_scopes_param_name or dependant.own_oauth_scopes:
        yield "it uses security scopes"
    if dependant.request_param_name and dependant.http_connection_param_name:
        yield "its endpoint takes the request twice"
    if not isinstance(route.response_class, DefaultPlaceholder):
        yield "it sets a response class"
    status_code = route.status_code or 200
    if status_code < 200 or status_code in (204, 304):
        yield "its status code has no body"
    for field in (*dependant.path_params, *dependant.query_params):
        yield from _parameter_refusals(field)
    for dependency in dependant.dependencies:
        yield from _dependency_refusals(dependency)


def _parameter_refusals(field: Any) -> Iterator[str]:
    info = field.field_info
    if not isinstance(info, (params.Path, params.Query)):
        yield f"parameter '{field.name}' is neither a path nor a query parameter"
    if info.validation_alias is not None:
        yield f"parameter '{field.name}' has a validation alias"
    if any(type(item) is Json for item in info.metadata):
        yield f"parameter '{field.name}' is JSON"
    if field_annotation_is_sequence(info.annotation):
        yield f"parameter '{field.name}' takes several values"
    if inspect.isclass(info.annotation) and issubclass(info.annotation, BaseModel):
        yield f"parameter '{field.name}' is a model"


def _dependency_refusals(dependency: Dependant) -> Iterator[str]:
    name = getattr(dependency.call, "__name__", type(dependency.call).__name__)
    if dependency.dependencies or dependency.path_params or dependency.query_params:
        yield f"dependency '{name}' has parameters or dependencies of its own"
    if dependency.header_params or dependency.cookie_params or dependency.body_params:
        yield f"dependency '{name}' reads headers, cookies or a body"
    if dependency.response_param_name or dependency.background_tasks_param_name or dependency.websocket_param_name:
        yield f"dependency '{name}' takes a response, background tasks or a WebSocket"
    if dependency.security_scopes_param_name or dependency.own_oauth_scopes or dependency.parent_oauth_scopes:
        yield f"dependency '{name}' uses security scopes"
    if dependency.concurrency is not None:
        yield f"dependency '{name}' limits its concurrency"
    if dependency.request_param_name and dependency.http_connection_param_name:
        yield f"dependency '{name}' takes the request twice"
    call = dependency.call
    target = call if inspect.isfunction(call) else getattr(call, "__call__", None)  # noqa: B004
    if not inspect.iscoroutinefunction(target):
        yield f"dependency '{name}' is not a coroutine function (a generator or a plain function)"


def plan(route: Any) -> LeanPlan | None:
    """The lean handler's plan for ``route``, or ``None`` when the route keeps FastAPI's handler."""
    if refusal(route) is not None:
        return None
    dependant: Dependant = route.dependant
    dependencies = tuple(
        _Dependency(
            call=cast(Callable[..., Awaitable[Any]], dependency.call),
            key=(dependency.call, dependency.scope),
            argument=dependency.name,
            request_argument=dependency.request_param_name or dependency.http_connection_param_name,
            cached=dependency.use_cache,
        )
        for dependency in dependant.dependencies
    )
    options = {
        "include": route.response_model_include,
        "exclude": route.response_model_exclude,
        "by_alias": route.response_model_by_alias,
        "exclude_unset": route.response_model_exclude_unset,
        "exclude_defaults": route.response_model_exclude_defaults,
        "exclude_none": route.response_model_exclude_none,
    }
    return LeanPlan(
        endpoint=cast(Callable[..., Awaitable[Any]], dependant.call),
        dependencies=dependencies,
        path=tuple(_parameter(field) for field in dependant.path_params),
        query=tuple(_parameter(field) for field in dependant.query_params),
        request_argument=dependant.request_param_name or dependant.http_connection_param_name,
        response_field=route.response_field,
        serialize_options=options,
        status_code=route.status_code or 200,
        overrides_provider=route.dependency_overrides_provider,
    )


def _parameter(field: Any) -> _Parameter:
    info = field.field_info
    required = bool(info.is_required())
    default = None if required else field.default
    return _Parameter(
        field=field,
        argument=field.name,
        alias=field.alias,
        location=(info.in_.value, field.alias),
        required=required,
        default=default,
        copy_default=not isinstance(default, _IMMUTABLE_DEFAULTS),
        validate_default=bool(info.validate_default),
    )


def _bind(
    parameters: tuple[_Parameter, ...], received: Mapping[str, Any], values: dict[str, Any], errors: list[Any]
) -> None:
    """Validate each parameter as FastAPI does: absent means the default (or a missing error), present is checked."""
    for parameter in parameters:
        raw = received.get(parameter.alias)
        if raw is None:
            if parameter.required:
                errors.append(get_missing_field_error(loc=parameter.location))
                continue
            default = copy.deepcopy(parameter.default) if parameter.copy_default else parameter.default
            if not parameter.validate_default:
                values[parameter.argument] = default
                continue
            raw = default
        value, problems = parameter.field.validate(raw, values, loc=parameter.location)
        if problems:
            errors.extend(problems)
        else:
            values[parameter.argument] = value


async def _solve(lean: LeanPlan, request: Request) -> dict[str, Any]:
    """The endpoint's arguments: dependencies first, then the parameters.

    A dependency runs once per request unless it opts out of caching, keyed as FastAPI keys its cache: by the
    callable and its declared scope.
    """
    values: dict[str, Any] = {}
    solved: dict[Any, Any] = {}
    for dependency in lean.dependencies:
        if dependency.cached and dependency.key in solved:
            result = solved[dependency.key]
        elif dependency.request_argument is None:
            result = await dependency.call()
        else:
            result = await dependency.call(**{dependency.request_argument: request})
        solved.setdefault(dependency.key, result)
        if dependency.argument is not None:
            values[dependency.argument] = result
    errors: list[Any] = []
    if lean.path:
        _bind(lean.path, request.path_params, values, errors)
    if lean.query:
        _bind(lean.query, request.query_params, values, errors)
    if errors:
        raise RequestValidationError(errors, body=None)
    if lean.request_argument is not None:
        values[lean.request_argument] = request
    return values


def _answer(lean: LeanPlan, answer: Any) -> Response:
    """The response for what the endpoint returned, serialised as FastAPI serialises it."""
    if isinstance(answer, Response):
        return answer
    field = lean.response_field
    if field is None:
        return JSONResponse(jsonable_encoder(answer), status_code=lean.status_code)
    value, problems = field.validate(answer, {}, loc=("response",))
    if problems:
        raise ResponseValidationError(errors=problems, body=answer)
    content = field.serialize_json(value, **lean.serialize_options)
    return Response(content=content, media_type="application/json", status_code=lean.status_code)


def lean_handler(lean: LeanPlan, fallback: Handler) -> Handler:
    """The request handler that runs ``lean`` (and ``fallback``, FastAPI's, while dependency overrides exist)."""
    provider = lean.overrides_provider

    async def handle(request: Request) -> Response:
        if provider is not None and getattr(provider, "dependency_overrides", None):
            return await fallback(request)
        return _answer(lean, await lean.endpoint(**await _solve(lean, request)))

    return handle


class LeanRoute(APIRoute):
    """An ``APIRoute`` served by :func:`lean_handler` whenever :func:`refusal` finds no reason not to."""

    def get_route_handler(self) -> Handler:
        """FastAPI's handler for this route as included, or the lean one that stands in for it."""
        fallback = super().get_route_handler()
        if _EFFECTIVE_ROUTE is None:
            return fallback
        included = _EFFECTIVE_ROUTE.get()
        route = included if included is not None and included.original_route is self else self
        lean = plan(route)
        return fallback if lean is None else lean_handler(lean, fallback)
