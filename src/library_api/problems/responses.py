"""OpenAPI documentation of error responses, so every route lists the problems it can answer with."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from library_api.problems import PROBLEM_CONTENT_TYPE, Problem

_DESCRIPTIONS = {
    400: "Malformed request",
    401: "Missing, invalid, expired or revoked credentials",
    403: "The caller lacks the permission this operation needs",
    404: "No such resource (or not the caller's)",
    409: "Conflicts with the current state",
    413: "Request body too large",
    414: "More query parameters than any operation takes (`MAX_QUERY_PARAMETERS`)",
    415: "Unsupported media type",
    422: "Invalid input; `errors` lists each field",
    429: "Too many requests; retry after `Retry-After` seconds",
    503: "A dependency is unavailable; retry after `Retry-After` seconds",
    507: "No room to store the upload (a full volume); retry after `Retry-After` seconds",
}


def problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The ``responses`` entry documenting each status as an RFC 9457 problem body."""
    return {
        status: {"model": Problem, "description": _DESCRIPTIONS.get(status, HTTPStatus(status).phrase)}
        for status in statuses
    }


def add_problem_responses(schema: dict[str, Any], prefix: str, statuses: tuple[int, ...]) -> dict[str, Any]:
    """Document ``statuses`` on every operation under ``prefix`` that does not list them yet.

    Some answers can come from any route: 429 from the rate limiter, 503 when the database is unreachable.
    Any operation that reads a body can also answer 400, when the body cannot be decoded at all (invalid UTF-8
    in JSON, a broken multipart stream) and so never reaches field validation. Any operation whose ``security``
    accepts a credential answers 401 when the credential presented is invalid, expired or revoked (a wrong
    credential is never treated as none), even where it would serve an anonymous caller.
    """
    for path, path_item in schema.get("paths", {}).items():
        if not path.startswith(prefix):
            continue
        for operation in path_item.values():
            responses = operation.setdefault("responses", {})
            extra = (400,) if "requestBody" in operation else ()
            if operation.get("security"):
                extra = (*extra, 401)
            for status in (*extra, *statuses):
                responses.setdefault(str(status), {"description": _DESCRIPTIONS[status]})
    return schema


def use_problem_media_type(schema: dict[str, Any]) -> dict[str, Any]:
    """Rewrite an OpenAPI document so that every 4xx/5xx response is ``application/problem+json``.

    FastAPI documents ``model`` responses as ``application/json`` and adds its own 422 schema; both are
    replaced by the problem schema the service really sends.
    """
    problem_ref = {"$ref": "#/components/schemas/Problem"}
    for path_item in schema.get("paths", {}).values():
        for operation in path_item.values():
            for status, response in operation.get("responses", {}).items():
                if str(status)[0] not in "45":
                    continue
                response["content"] = {PROBLEM_CONTENT_TYPE: {"schema": problem_ref}}
                if str(status) == "422":
                    response["description"] = _DESCRIPTIONS[422]
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        components.pop(unused, None)
    return schema
