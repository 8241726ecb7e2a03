"""``GET /metrics``: the Prometheus scrape endpoint (text format, or OpenMetrics when the scraper asks for it).

Mounted only when ``METRICS_ENABLED`` is true.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from library_api.dependencies.context import get_context
from library_api.dependencies.monitoring import monitoring
from library_api.problems.responses import problems
from library_api.security.permissions import Permission

router = APIRouter(tags=["observability"])


@router.get(
    "/metrics",
    dependencies=[monitoring(Permission.METRICS_READ)],
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus metrics"}, **problems(401, 403)},
    summary="Prometheus metrics",
)
async def metrics(request: Request) -> Response:
    """Every metric of every worker; from an allowed network, or with ``metrics:read``.

    Readiness is evaluated for the scrape, so ``health_ready`` is current even where nothing polls the probe.
    """
    ctx = get_context(request)
    await ctx.health.readiness()
    body, content_type = ctx.metrics.expose(request.headers.get("accept"))
    return Response(body, media_type=content_type)
