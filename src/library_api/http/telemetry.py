"""One access line and the HTTP metrics for every request (the bookkeeping of :mod:`library_api.http.edge`).

The route template is resolved when the request arrives (:class:`library_api.http.routes.RouteTable`), so the
in-progress gauge, the request counter and the latency histogram all carry the same ``endpoint`` label, and
requests that match no route share ``unmatched`` (a thousand unknown paths add no series). Methods outside the
standard set are counted as ``OTHER``.

The access line (logger ``library_api.access``, INFO) carries request id, method, path (never the query
string, which may hold credentials), route template, status, duration, response size, client address and the
principal that authenticated (set on the scope by authentication). Probes and ``/metrics`` are not logged
(they are polled every few seconds); their metrics are still counted.

An exception that escaped every handler is logged once with its traceback and the request id, and answered
with a bare 500 problem by the edge, so even that response carries the request id and security headers.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

from starlette.types import Scope

from library_api.config import HTTP_METHODS
from library_api.http.routes import ROUTE_TEMPLATE_KEY, RouteTable
from library_api.observability.logging import ACCESS_LOGGER
from library_api.observability.metrics import Metrics
from library_api.problems import problem_response
from library_api.security.principal import PRINCIPAL_SCOPE_KEY

access_logger = logging.getLogger(ACCESS_LOGGER)
error_logger = logging.getLogger("library_api.errors")


class Telemetry:
    """Per-request bookkeeping: the route template, the in-progress gauge, the counters and the access line."""

    def __init__(
        self, *, metrics: Metrics | None, routes: RouteTable, access_log: bool, quiet_paths: Iterable[str] = ()
    ) -> None:
        self.metrics = metrics
        self.routes = routes
        self.access_log = access_log
        self.quiet_paths = frozenset(quiet_paths)

    def begin(self, scope: Scope) -> tuple[str, str, Any]:
        """Method label, route template (also left on the scope) and the in-progress gauge, already raised."""
        method = scope["method"]
        if method not in HTTP_METHODS:
            method = "OTHER"
        template = self.routes.resolve(method, scope["path"])
        scope[ROUTE_TEMPLATE_KEY] = template
        in_progress = None
        if self.metrics is not None:
            in_progress = self.metrics.in_progress(method, template)
            in_progress.inc()
        return method, template, in_progress

    def end(
        self, scope: Scope, method: str, template: str, in_progress: Any, status: int, started: float, size: int
    ) -> None:
        """Lower the gauge, count and time the request, and write its access line."""
        elapsed = time.perf_counter() - started
        if in_progress is not None and self.metrics is not None:
            in_progress.dec()
            self.metrics.observe_request(method, template, status, elapsed)
        path = scope["path"]
        if self.access_log and path not in self.quiet_paths:
            self._log(scope, method, path, template, status, elapsed, size)

    @staticmethod
    def unhandled(method: str, path: str) -> Any:
        """Log an exception that escaped every handler (with its traceback) and return the 500 problem."""
        error_logger.exception("unhandled error on %s %s", method, path)
        return problem_response(500, "internal-error", "Internal server error", instance=path)

    @staticmethod
    def _log(scope: Scope, method: str, path: str, template: str, status: int, elapsed: float, size: int) -> None:
        if not access_logger.isEnabledFor(logging.INFO):
            return
        client = scope.get("client")
        principal = scope.get(PRINCIPAL_SCOPE_KEY)
        duration_ms = round(elapsed * 1000, 2)
        # built directly rather than through Logger.info: the same record, without the per-call argument
        # merging and caller lookup, which cost more than the line itself on every request
        record = logging.LogRecord(
            ACCESS_LOGGER, logging.INFO, "", 0, f"{method} {path} {status} {duration_ms:.2f}ms", None, None
        )
        record.__dict__.update(
            method=method,
            path=path,
            route=template,
            status=status,
            duration_ms=duration_ms,
            bytes=size,
            client=client[0] if client else None,
            principal=getattr(principal, "subject", None),
        )
        access_logger.handle(record)
