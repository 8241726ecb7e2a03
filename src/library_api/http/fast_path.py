"""A fast request handler for the few hot reads, built on FastAPI's documented route extension point.

FastAPI solves a route's dependencies generically on every request (a cache key and a nested call per
dependency, a copied default and an alias lookup per parameter, a throwaway sub-response, telemetry hooks). On
an authenticated read that cost about as much CPU as the read itself (see ``docs/benchmarks.md``). FastAPI
documents subclassing :class:`~fastapi.routing.APIRoute` and overriding ``get_route_handler`` ("Custom Request
and APIRoute class") to change how a route handles requests; :class:`FastPathRoute` does that for the endpoints
marked with :func:`fast_path`, and for those only. Everything else keeps FastAPI's handler untouched.

A marked route is still declared once, as any FastAPI route: its signature names its parameters and
dependencies, its return annotation (or ``response_model``) its answer, and the OpenAPI document comes from that
declaration as always. The fast handler reads the same declaration with the standard library's
:func:`inspect.signature` and :func:`typing.get_type_hints`, and the route's public attributes, once per
application; it uses nothing private of FastAPI or Starlette. Per request it does what FastAPI does, in
FastAPI's order:

1. the dependencies: those of the router inclusion and the route (``dependencies=[...]``), then those of the
   signature, each called with the request, each at most once per request unless ``use_cache=False``;
2. the path, query and header parameters, each validated by a pydantic ``TypeAdapter`` of its declared
   ``Annotated`` type, every problem collected into one :class:`~fastapi.exceptions.RequestValidationError`
   carrying the endpoint's context (file, line, function, method and path), as FastAPI's carries it;
3. the endpoint, then its answer: a ``Response`` it built is sent as it is, anything else is validated and
   serialised to JSON by a ``TypeAdapter`` of the response model, with the status and headers the endpoint set
   on its ``Response`` parameter.

It fails closed: a marked route whose declaration holds anything outside that list (a body, cookies, a
sequence or model parameter, a parameter alias, a dependency that is not an ``async`` callable of nothing or of
the request, security scopes, a custom response class or response-model options, a status without a body, a
route included more than once) keeps FastAPI's handler, and :func:`refusal` says why. So does every request
while ``app.dependency_overrides`` holds anything, so that tests which override a dependency get FastAPI's exact
behaviour. FastAPI's telemetry hooks do not run on the fast path; the service turns them off
(``create_app``). ``tests/http/test_fast_path.py`` sends the same requests through both handlers and requires
the same status, headers and bytes.
"""

from __future__ import annotations

import inspect
import types
import typing
import warnings
import weakref
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import params
from fastapi.exceptions import RequestValidationError, ResponseValidationError
from fastapi.routing import APIRoute, RouteContext, iter_route_contexts
from pydantic import BaseModel, TypeAdapter, ValidationError
from pydantic_core import PydanticUndefined
from starlette.requests import HTTPConnection, Request
from starlette.responses import Response

Handler = Callable[[Request], Coroutine[Any, Any, Response]]
Endpoint = Callable[..., Awaitable[Any]]

FAST_PATH_ATTRIBUTE = "__library_fast_path__"
_IMMUTABLE = (type(None), bool, int, float, str, bytes)
_SEQUENCES = (list, tuple, set, frozenset, dict)
_UNPLANNED: Any = object()
_LOCATIONS = {params.Path: "path", params.Query: "query", params.Header: "header"}


class Refused(Exception):
    """A route's declaration holds something the fast path does not do; the message says what."""


def fast_path(endpoint: Endpoint) -> Endpoint:
    """Mark ``endpoint`` (already declared on a router with ``route_class=FastPathRoute``) for the fast path.

    Stack it above the router's decorator: ``@fast_path`` then ``@router.get(...)``.
    """
    setattr(endpoint, FAST_PATH_ATTRIBUTE, True)
    return endpoint


@dataclass(frozen=True, slots=True)
class _Dependency:
    """One dependency to run: what to call, whether it takes the request, and how its result is remembered."""

    call: Callable[..., Awaitable[Any]]
    takes_request: bool
    key: tuple[Any, Any] | None
    argument: str | None


@dataclass(frozen=True, slots=True)
class _Parameter:
    """One path, query or header parameter: where it is read, how it is checked, what stands in when absent."""

    argument: str
    location: str
    key: str
    adapter: TypeAdapter[Any]
    required: bool
    default: Any


@dataclass(frozen=True, slots=True)
class Plan:
    """Everything the fast handler needs for one route as included, worked out once from its declaration."""

    endpoint: Endpoint
    dependencies: tuple[_Dependency, ...]
    parameters: tuple[_Parameter, ...]
    request_argument: str | None
    response_argument: str | None
    response: TypeAdapter[Any]
    status_code: int | None
    context: Mapping[str, Any]


def _hints(function: Any) -> dict[str, Any]:
    target = function if inspect.isfunction(function) or inspect.ismethod(function) else type(function).__call__
    return typing.get_type_hints(target, include_extras=True)


def _is_coroutine(function: Any) -> bool:
    target = function if inspect.isfunction(function) or inspect.ismethod(function) else type(function).__call__
    return inspect.iscoroutinefunction(target)


def _marker(annotation: Any) -> tuple[Any, Any]:
    """The annotated type without FastAPI's marker, and the marker (``None`` when there is none)."""
    if typing.get_origin(annotation) is not Annotated:
        return annotation, None
    base, *metadata = typing.get_args(annotation)
    markers = [item for item in metadata if isinstance(item, (params.Depends, params.Param, params.Body))]
    if len(markers) > 1:
        raise Refused("a parameter carries more than one FastAPI marker")
    rest = [item for item in metadata if item not in markers]
    kept = Annotated[(base, *rest)] if rest else base
    return kept, markers[0] if markers else None


def _dependency(depends: params.Depends, argument: str | None) -> _Dependency:
    call = depends.dependency
    name = getattr(call, "__name__", type(call).__name__)
    if call is None:
        raise Refused("a dependency names no callable")
    if isinstance(depends, params.Security) and depends.scopes:
        raise Refused(f"dependency '{name}' uses security scopes")
    if not _is_coroutine(call):
        raise Refused(f"dependency '{name}' is not an async function (a generator or a plain function)")
    signature = inspect.signature(call)
    hints = _hints(call)
    takes_request = False
    for parameter in signature.parameters.values():
        if hints.get(parameter.name) in (Request, HTTPConnection) and not takes_request:
            takes_request = True
            continue
        raise Refused(f"dependency '{name}' takes '{parameter.name}', not only the request")
    key = (call, depends.scope) if depends.use_cache else None
    return _Dependency(call=call, takes_request=takes_request, key=key, argument=argument)


def _takes_many(annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _takes_many(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return any(_takes_many(argument) for argument in typing.get_args(annotation))
    candidate = origin or annotation
    return (inspect.isclass(candidate) and issubclass(candidate, (*_SEQUENCES, BaseModel))) or candidate is typing.Any


def _parameter(parameter: inspect.Parameter, annotation: Any, marker: Any, in_path: bool) -> _Parameter:
    name = parameter.name
    if marker is None:
        marker = params.Path() if in_path else params.Query()
    kind = next((location for cls, location in _LOCATIONS.items() if isinstance(marker, cls)), None)
    if kind is None:
        raise Refused(f"parameter '{name}' is neither a path, a query nor a header parameter")
    if marker.validation_alias not in (None, marker.alias) or marker.default is not PydanticUndefined:
        raise Refused(f"parameter '{name}' has a validation alias or a default inside its marker")
    if _takes_many(annotation):
        raise Refused(f"parameter '{name}' takes several values or a model")
    key = marker.alias or name
    if kind == "header" and marker.alias is None and getattr(marker, "convert_underscores", True):
        key = name.replace("_", "-")
    required = parameter.default is inspect.Parameter.empty
    if not required and not isinstance(parameter.default, _IMMUTABLE):
        raise Refused(f"parameter '{name}' has a mutable default")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydantic notes that a marker's alias means nothing outside a model
        adapter: TypeAdapter[Any] = TypeAdapter(Annotated[annotation, marker])
    return _Parameter(name, kind, key, adapter, required, None if required else parameter.default)


def _included(route: APIRoute, routes: list[Any]) -> RouteContext:
    found = [context for context in iter_route_contexts(routes) if context.original_route is route]
    if len(found) != 1:
        raise Refused(f"the route is included {len(found)} times")
    return found[0]


def _check_answer(route: APIRoute) -> None:
    """Refuse a route whose answer FastAPI would make otherwise than as plain JSON of its response model."""
    status_code = route.status_code
    if status_code is not None and not (200 <= status_code < 300 and status_code != 204):
        raise Refused("its status code has no body or is not a success")
    if isinstance(route.response_class, type):
        raise Refused("it sets a response class")
    if route.response_model is None:
        raise Refused("it declares no response model")
    options = (
        route.response_model_include,
        route.response_model_exclude,
        not route.response_model_by_alias,
        route.response_model_exclude_unset,
        route.response_model_exclude_defaults,
        route.response_model_exclude_none,
    )
    if any(options):
        raise Refused("it sets response-model options")


@dataclass
class _Signature:
    """What the endpoint's signature asks for, sorted into the fast path's four kinds."""

    dependencies: list[_Dependency]
    parameters: list[_Parameter]
    request_argument: str | None = None
    response_argument: str | None = None


def _read_signature(endpoint: Endpoint, path_names: set[str]) -> _Signature:
    hints = typing.get_type_hints(endpoint, include_extras=True)
    found = _Signature([], [])
    for parameter in inspect.signature(endpoint).parameters.values():
        annotation, marker = _marker(hints.get(parameter.name, Any))
        if isinstance(marker, params.Depends):
            found.dependencies.append(_dependency(marker, parameter.name))
        elif marker is None and annotation in (Request, HTTPConnection) and found.request_argument is None:
            found.request_argument = parameter.name
        elif marker is None and annotation is Response and found.response_argument is None:
            found.response_argument = parameter.name
        elif marker is None or isinstance(marker, params.Param):
            found.parameters.append(_parameter(parameter, annotation, marker, parameter.name in path_names))
        else:
            raise Refused(f"parameter '{parameter.name}' is a body, form or file")
    return found


def plan(route: APIRoute, routes: list[Any]) -> Plan:
    """The fast handler's plan for ``route`` as the application with ``routes`` includes it.

    Raises :class:`Refused` when the declaration holds anything the fast path does not do.
    """
    if not getattr(route.endpoint, FAST_PATH_ATTRIBUTE, False):
        raise Refused("the endpoint is not marked for the fast path")
    context = _included(route, routes)
    endpoint = route.endpoint
    if not inspect.iscoroutinefunction(endpoint):
        raise Refused("the endpoint is not an async function")
    _check_answer(route)
    effective = getattr(context, "dependencies", None)
    if not isinstance(effective, list) or not all(isinstance(item, params.Depends) for item in effective):
        raise Refused("its dependencies as included cannot be read")
    signature = _read_signature(endpoint, set(route.param_convertors))
    order = {"path": 0, "query": 1, "header": 2}
    return Plan(
        endpoint=endpoint,
        dependencies=(*(_dependency(depends, None) for depends in effective), *signature.dependencies),
        parameters=tuple(sorted(signature.parameters, key=lambda item: order[item.location])),
        request_argument=signature.request_argument,
        response_argument=signature.response_argument,
        response=TypeAdapter(route.response_model),
        status_code=route.status_code,
        context=_endpoint_context(endpoint, context.path_format or route.path_format),
    )


def _endpoint_context(endpoint: Any, path: str) -> dict[str, Any]:
    """What FastAPI attaches to a validation error: where the endpoint is written, and its path."""
    found: dict[str, Any] = {}
    try:
        found["file"] = inspect.getsourcefile(endpoint)
        found["line"] = inspect.getsourcelines(endpoint)[1]
    except (OSError, TypeError):  # pragma: no cover - the endpoints are module functions with source files
        pass
    found["function"] = endpoint.__name__
    found["path"] = path
    return found


def refusal(route: APIRoute, routes: list[Any]) -> str | None:
    """Why ``route`` keeps FastAPI's handler in the application with ``routes``, or ``None`` if it does not."""
    try:
        plan(route, routes)
    except Refused as reason:
        return str(reason)
    return None


def _received(request: Request, location: str) -> Mapping[str, Any]:
    if location == "path":
        return request.path_params
    return request.query_params if location == "query" else request.headers


def _error_context(found: Mapping[str, Any], request: Request) -> Any:
    root = request.scope.get("root_path", "").rstrip("/")
    return {**found, "path": f"{request.method} {root}{found['path']}"}


async def _solve(fast: Plan, request: Request) -> dict[str, Any]:
    """Run the dependencies in order, each once per request unless it opts out of caching."""
    values: dict[str, Any] = {}
    solved: dict[Any, Any] = {}
    for dependency in fast.dependencies:
        if dependency.key is not None and dependency.key in solved:
            result = solved[dependency.key]
        else:
            result = await (dependency.call(request) if dependency.takes_request else dependency.call())
            if dependency.key is not None:
                solved[dependency.key] = result
        if dependency.argument is not None:
            values[dependency.argument] = result
    return values


def _bind(fast: Plan, request: Request, values: dict[str, Any]) -> None:
    """Validate the path, query and header parameters into ``values``; one error for every problem found."""
    errors: list[Any] = []
    for parameter in fast.parameters:
        raw = _received(request, parameter.location).get(parameter.key)
        if raw is None:
            if parameter.required:
                loc = (parameter.location, parameter.key)
                errors.append({"type": "missing", "loc": loc, "msg": "Field required", "input": None})
            else:
                values[parameter.argument] = parameter.default
            continue
        try:
            values[parameter.argument] = parameter.adapter.validate_python(raw, from_attributes=True)
        except ValidationError as problem:
            loc = (parameter.location, parameter.key)
            errors.extend({**error, "loc": loc + error["loc"]} for error in problem.errors(include_url=False))
    if errors:
        raise RequestValidationError(errors, body=None, endpoint_ctx=_error_context(fast.context, request))


async def _arguments(fast: Plan, request: Request, response: Response | None) -> dict[str, Any]:
    values = await _solve(fast, request)
    if fast.parameters:
        _bind(fast, request, values)
    if fast.request_argument is not None:
        values[fast.request_argument] = request
    if fast.response_argument is not None:
        values[fast.response_argument] = response
    return values


def _sub_response() -> Response:
    """The ``Response`` an endpoint may set headers and a status on, as FastAPI hands it over: no status yet."""
    response = Response()
    del response.headers["content-length"]
    response.status_code = None  # type: ignore[assignment]
    return response


async def answer(fast: Plan, request: Request) -> Response:
    """Run the route's endpoint for ``request`` as FastAPI would, and the response it makes."""
    sub = _sub_response() if fast.response_argument is not None else None
    result = await fast.endpoint(**await _arguments(fast, request, sub))
    if isinstance(result, Response):
        return result
    try:
        value = fast.response.validate_python(result, from_attributes=True)
    except ValidationError as problem:
        errors = [{**error, "loc": ("response", *error["loc"])} for error in problem.errors(include_url=False)]
        raise ResponseValidationError(errors, body=result, endpoint_ctx=_error_context(fast.context, request)) from None
    content = fast.response.dump_json(value, by_alias=True)
    status = sub.status_code if sub is not None and sub.status_code else fast.status_code or 200
    response = Response(content=content, media_type="application/json", status_code=status)
    if sub is not None:
        response.headers.raw.extend(sub.headers.raw)
    return response


class FastPathRoute(APIRoute):
    """An ``APIRoute`` that answers with :func:`answer` when its endpoint is marked and :func:`plan` accepts it."""

    def get_route_handler(self) -> Handler:
        """FastAPI's handler, or one that stands in for it on the marked routes (planned at the first request)."""
        standard = super().get_route_handler()
        if not getattr(self.endpoint, FAST_PATH_ATTRIBUTE, False):
            return standard
        plans: weakref.WeakKeyDictionary[Any, Plan | None] = weakref.WeakKeyDictionary()

        async def handle(request: Request) -> Response:
            app = request.app
            if app.dependency_overrides:
                return await standard(request)
            fast = plans.get(app, _UNPLANNED)
            if fast is _UNPLANNED:
                fast = plans[app] = plan_or_none(self, app.routes)
            return await (standard(request) if fast is None else answer(fast, request))

        return handle


def plan_or_none(route: APIRoute, routes: list[Any]) -> Plan | None:
    """:func:`plan`, or ``None`` where it refuses."""
    try:
        return plan(route, routes)
    except Refused:
        return None
