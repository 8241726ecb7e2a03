"""The edge of the stack: one pure ASGI layer doing the first three steps of every request, in order.

1. **Request origin** (:mod:`library_api.http.request_origin`): the real client address and scheme, from
   trusted proxies only, and the request id, bound to :data:`~library_api.observability.logging.request_id_var`
   for every log line of the request and returned as ``X-Request-ID``. A forwarded client certificate that
   fails verification is answered here with a 401 problem, whatever the route: a credential that is present
   but wrong is never downgraded to an anonymous caller.
2. **Security headers** (:mod:`library_api.http.security_headers`): added to every response that passes here,
   whichever layer inside produced it (a 400, 413, 429, or the 500 below).
3. **Telemetry** (:mod:`library_api.http.telemetry`): the route template, the HTTP metrics and the access
   line; an exception that escaped every handler is logged once and answered here with a 500 problem.

The three are one layer because they bracket the same request and add to the same response-start message: as
three middlewares they cost three coroutine frames and three wrappers on every message, for nothing. WebSocket
scopes get step 1 (the address and the id); lifespan scopes pass through.
"""

from __future__ import annotations

import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from library_api.http.request_origin import REQUEST_ID_HEADER, RequestOrigin, forwarded_certificate_error
from library_api.http.security_headers import SecurityHeaders
from library_api.http.telemetry import Telemetry
from library_api.observability.logging import request_id_var
from library_api.problems import problem_response


class EdgeMiddleware:
    """Request origin, then security headers, then telemetry, around everything inside."""

    def __init__(self, app: ASGIApp, *, origin: RequestOrigin, headers: SecurityHeaders, telemetry: Telemetry) -> None:
        self.app = app
        self.origin = origin
        self.headers = headers
        self.telemetry = telemetry

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one request or connection with its origin, headers and bookkeeping."""
        scope_type = scope["type"]
        if scope_type != "http":
            if scope_type != "websocket":
                await self.app(scope, receive, send)
                return
            token = request_id_var.set(self.origin.enter(scope))
            try:
                await self.app(scope, receive, send)
            finally:
                request_id_var.reset(token)
            return

        request_id = self.origin.enter(scope)
        token = request_id_var.set(request_id)
        extra = (*self.headers.for_scope(scope), (REQUEST_ID_HEADER, request_id.encode()))
        merge = self.headers.merge
        started = time.perf_counter()
        method, template, in_progress = self.telemetry.begin(scope)
        status = 500
        size = 0
        response_started = False

        async def edge_send(message: Message) -> None:
            nonlocal status, size, response_started
            if message["type"] == "http.response.start":
                status = message["status"]
                response_started = True
                message["headers"] = merge(message.get("headers", ()), extra)
            elif message["type"] == "http.response.body":
                size += len(message.get("body", b""))
            await send(message)

        try:
            refused = forwarded_certificate_error(scope)
            if refused is None:
                await self.app(scope, receive, edge_send)
            else:
                await _unauthorized(refused, scope["path"])(scope, receive, edge_send)
        except Exception:
            status = 500
            response = self.telemetry.unhandled(method, scope["path"])
            if not response_started:
                await response(scope, receive, edge_send)
        finally:
            self.telemetry.end(scope, method, template, in_progress, status, started, size)
            request_id_var.reset(token)


def _unauthorized(detail: str, path: str) -> Any:
    """The 401 problem for a refused forwarded certificate (the same type every other refusal has)."""
    return problem_response(
        401,
        "unauthorized",
        "Authentication required",
        detail,
        instance=path,
        headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
    )
