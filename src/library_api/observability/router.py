"""The health probe routes (``/health``, ``/health/startup``, ``/health/ready``, ``/health/detailed``).

Each route asks the application's :class:`~library_api.observability.health.HealthMonitor`, which decides what
the answers mean (see that module); the three probes are public, the detailed report is restricted like
``/metrics``.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from library_api.dependencies.context import get_context
from library_api.dependencies.monitoring import monitoring
from library_api.dependencies.permissions import public
from library_api.security.permissions import Permission

router = APIRouter(prefix="/health", tags=["health"])


@router.get("", dependencies=[public()], summary="Liveness")
async def liveness(request: Request) -> dict[str, Any]:
    """The process is up and serving; no dependency is consulted, so a database outage never restarts it.

    The body names the service, its version, the server's time and this worker's open WebSocket connections
    (what a load balancer or an operator glancing at one worker wants); each is read from memory, so the
    probe stays as cheap as a constant answer.
    """
    ctx = get_context(request)
    return {
        "status": "ok",
        "service": ctx.settings.project_name,
        "version": ctx.settings.version,
        "time": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "worker": os.getpid(),
        "connections": ctx.hub.active(),
    }


@router.get(
    "/startup",
    dependencies=[public()],
    summary="Startup",
    responses={503: {"description": "Still starting: the database has not answered yet"}},
)
async def startup(request: Request) -> JSONResponse:
    """200 once start-up has finished (the database has answered); 503 before.

    A schema behind the code is named here (``warnings``) but keeps the 200: readiness carries it.
    """
    health = get_context(request).health
    if health.started:
        problem = health.schema.problem
        return JSONResponse({"status": "started", **({"warnings": [problem]} if problem else {})})
    return JSONResponse({"status": "starting", "reasons": ["waiting for the database"]}, status_code=503)


@router.get(
    "/ready",
    dependencies=[public()],
    summary="Readiness",
    responses={503: {"description": "Not ready; `reasons` says why"}},
)
async def readiness(request: Request) -> JSONResponse:
    """Ready (or degraded) when the database answers at the right schema and the server is not draining."""
    status, body = await get_context(request).health.readiness()
    return JSONResponse(body, status_code=status)


@router.get(
    "/detailed",
    dependencies=[monitoring(Permission.HEALTH_READ)],
    summary="Detailed health",
    responses={
        401: {"description": "Not from an allowed network, and no credential"},
        503: {"description": "Critical"},
    },
)
async def detailed(request: Request) -> JSONResponse:
    """Every dependency and resource with its status; from an allowed network, or with ``health:read``."""
    ctx = get_context(request)
    status, body = await ctx.health.detailed(ctx.settings.effective_cache_type)
    return JSONResponse(body, status_code=status)
