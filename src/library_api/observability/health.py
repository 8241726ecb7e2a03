"""Health probes: liveness, startup, readiness, and a detailed report for people and monitors.

* ``/health`` (liveness) consults nothing: a database outage must never make an orchestrator restart the
  process, which would not help.
* ``/health/startup`` is 503 until start-up has finished: the database has answered once (retried with backoff
  and jitter while it does not) and the schema revision is known. A schema behind the code does not hold it
  back (the process has started; a failing startup probe would only restart it, in a loop, while the operator
  migrates): the body names the problem, and readiness carries it.
* ``/health/ready`` is 503 with the reasons while the service cannot serve: still starting, the database
  unreachable, the schema behind the code (``schema behind: the database is at 0003…, the code needs 0004…``;
  every probe reads the revision again, so it turns ready once ``library-api migrate`` has run), or the server
  draining for shutdown. A schema *ahead* of the code (a rollback) is served: ``checks.migrations: "ahead"``. Redis
  or a read replica being down is ``degraded`` (200): the service keeps serving from the database. So is a
  critical upload volume (full, or with less room than one ``MAX_UPLOAD_SIZE`` upload): everything but cover
  uploads still works, and those answer 507 rather than fail.
* ``/health/detailed`` reports database, migrations, replica, Redis and cache, disk and memory (with the
  ``HEALTH_*_PERCENT`` thresholds; the upload volume is critical too when it has less room than one upload)
  and the process; restricted like ``/metrics``.

The three probes are public and exempt from trusted hosts, rate limits and access logs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from library_api.config import Settings
from library_api.context import get_context
from library_api.db.engine import Database
from library_api.observability.access import monitoring
from library_api.resilience.breaker import CircuitState
from library_api.resilience.database import is_database_unavailable
from library_api.resilience.redis import GuardedRedis, RedisUnavailable
from library_api.resilience.retry import Backoff
from library_api.resilience.schema import SchemaState, SchemaWatch
from library_api.security.dependencies import public
from library_api.security.permissions import Permission
from library_api.server.shutdown import ShutdownCoordinator

logger = logging.getLogger("library_api.health")

PROBE_PATHS = ("/health", "/health/ready", "/health/startup")
"""The probes orchestrators poll; exempt from trusted hosts, rate limits and access logs."""

HEALTHY, WARNING, CRITICAL = "healthy", "warning", "critical"
_SEVERITY = {HEALTHY: 0, WARNING: 1, CRITICAL: 2}


def _level(percent: float, warning: float, critical: float) -> str:
    if percent >= critical:
        return CRITICAL
    if percent >= warning:
        return WARNING
    return HEALTHY


class HealthMonitor:
    """What the probes report, and the start-up sequence that decides when the service has started."""

    def __init__(
        self,
        settings: Settings,
        database: Database,
        redis: GuardedRedis | None,
        shutdown: ShutdownCoordinator,
        backoff: Backoff,
        ready_gauge: Any = None,
        schema: SchemaWatch | None = None,
    ) -> None:
        self.settings = settings
        self.ready_gauge = ready_gauge
        self.database = database
        self.redis = redis
        self.shutdown = shutdown
        self.backoff = backoff
        self.started = False
        self.started_at = time.time()
        self.schema = schema or SchemaWatch(database.engine)
        self._startup_task: asyncio.Task[None] | None = None

    # ----- start-up -----

    async def begin_startup(self) -> None:
        """Finish start-up now if the database answers at once, else keep trying in the background.

        The service starts listening either way: ``/health/startup`` and ``/health/ready`` say 503 until the
        database has answered, and requests that need it get a 503 problem meanwhile.
        """
        try:
            await self._ping(self.database.engine)
            await self._finish_startup()
        except Exception as exc:
            logger.warning("start-up: database not reachable yet (%s); retrying in the background", type(exc).__name__)
            self._startup_task = asyncio.create_task(self._startup(), name="library-api-startup")

    async def stop(self) -> None:
        """Stop waiting (the application is shutting down)."""
        if self._startup_task is not None and not self._startup_task.done():
            self._startup_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._startup_task

    async def _startup(self) -> None:
        attempt = 0
        while True:
            try:
                await self._ping(self.database.engine)
                break
            except Exception as exc:
                if not is_database_unavailable(exc):
                    logger.exception("start-up: the database refused the health query")
                pause = self.backoff.delay(attempt)
                attempt += 1
                logger.warning(
                    "start-up: database not reachable yet (%s); attempt %d, retrying in %.2f s",
                    type(exc).__name__,
                    attempt,
                    pause,
                )
                await asyncio.sleep(pause)
        await self._finish_startup()

    async def _finish_startup(self) -> None:
        await self.schema.check()
        self.started = True
        logger.info("start-up complete: the database answers")

    # ----- checks -----

    async def _timed(self, operation: Callable[[], Awaitable[Any]]) -> float:
        started = time.perf_counter()
        async with asyncio.timeout(self.settings.health_check_timeout):
            await operation()
        return round((time.perf_counter() - started) * 1000, 2)

    async def _ping(self, engine: AsyncEngine) -> float:
        async def select_one() -> None:
            async with engine.connect() as connection:
                await connection.execute(text("SELECT 1"))

        return await self._timed(select_one)

    async def _database(self) -> dict[str, Any]:
        try:
            latency = await self._ping(self.database.engine)
        except Exception as exc:
            return {"status": CRITICAL, "error": type(exc).__name__}
        return {"status": HEALTHY, "latency_ms": latency, "dialect": self.database.dialect}

    async def _migrations(self) -> dict[str, Any]:
        """The schema's state; read again unless it was current (then a missing table triggers the re-read)."""
        try:
            state = self.schema.state
            if state is not SchemaState.CURRENT:
                state = await self.schema.check()
        except Exception as exc:
            return {"status": CRITICAL, "error": type(exc).__name__}
        head = self.schema.head
        if state is SchemaState.CURRENT:
            return {"status": HEALTHY, "revision": head}
        if state is SchemaState.AHEAD:
            return {
                "status": WARNING,
                "state": "ahead",
                "detail": self.schema.warning,
                "revision": self.schema.revision,
                "head": head,
            }
        return {
            "status": CRITICAL,
            "state": "behind",
            "detail": self.schema.problem,
            "revision": self.schema.revision,
            "head": head,
        }

    async def _replica(self) -> dict[str, Any] | None:
        if self.database.replica is None:
            return None
        try:
            latency = await self._ping(self.database.replica)
        except Exception as exc:
            return {"status": WARNING, "error": type(exc).__name__, "detail": "catalogue reads use the primary"}
        return {"status": HEALTHY, "latency_ms": latency}

    async def _redis(self) -> dict[str, Any] | None:
        if self.redis is None:
            return None
        try:
            latency = await asyncio.wait_for(self.redis.ping(), self.settings.health_check_timeout)
        except (RedisUnavailable, TimeoutError) as exc:
            return {
                "status": WARNING,
                "circuit": self.redis.state.name.lower(),
                "error": str(exc) or type(exc).__name__,
                "detail": "serving without Redis: cache bypassed, rate limits per process",
            }
        return {
            "status": HEALTHY,
            "circuit": CircuitState.CLOSED.name.lower(),
            "latency_ms": round(latency * 1000, 2),
        }

    def _disk(self) -> dict[str, Any]:
        path = Path(self.settings.upload_dir)
        while not path.exists() and path != path.parent:
            path = path.parent
        usage = psutil.disk_usage(str(path.resolve()))
        level = _level(
            usage.percent, self.settings.health_disk_warning_percent, self.settings.health_disk_critical_percent
        )
        report: dict[str, Any] = {
            "status": level,
            "path": str(path.resolve()),
            "total_bytes": usage.total,
            "used_bytes": usage.used,
            "free_bytes": usage.free,
            "percent": usage.percent,
        }
        if usage.free < self.settings.max_upload_size:
            report["status"] = CRITICAL
            report["detail"] = "less free space than one upload of MAX_UPLOAD_SIZE: cover uploads may get 507"
        return report

    def _memory(self) -> dict[str, Any]:
        memory = psutil.virtual_memory()
        level = _level(
            memory.percent, self.settings.health_memory_warning_percent, self.settings.health_memory_critical_percent
        )
        return {
            "status": level,
            "total_bytes": memory.total,
            "available_bytes": memory.available,
            "percent": memory.percent,
        }

    # ----- reports -----

    async def readiness(self) -> tuple[int, dict[str, Any]]:
        """Status code and body of ``/health/ready``."""
        checks: dict[str, Any] = {}
        reasons: list[str] = []
        if not self.started:
            reasons.append("starting: waiting for the database")
        if self.shutdown.draining:
            checks["shutdown"] = "draining"
            reasons.append("draining: the server is shutting down")
        database = await self._database()
        checks["database"] = "ok" if database["status"] == HEALTHY else f"unavailable: {database['error']}"
        if database["status"] != HEALTHY:
            reasons.append("database unreachable")
        else:
            migrations = await self._migrations()
            checks["migrations"] = migrations.get("state", "ok" if migrations["status"] == HEALTHY else "unknown")
            if migrations["status"] == CRITICAL:
                reasons.append(migrations.get("detail") or "schema revision unreadable")
        degraded = False
        for name, report in (("replica", await self._replica()), ("redis", await self._redis())):
            if report is not None:
                checks[name] = "ok" if report["status"] == HEALTHY else "degraded"
                degraded = degraded or report["status"] != HEALTHY
        disk = self._disk()
        checks["disk"] = "critical" if disk["status"] == CRITICAL else "ok"
        degraded = degraded or disk["status"] == CRITICAL
        if self.ready_gauge is not None:
            self.ready_gauge.set(0 if reasons else 1)
        if reasons:
            return 503, {"status": "not_ready", "checks": checks, "reasons": reasons}
        return 200, {"status": "degraded" if degraded else "ready", "checks": checks}

    async def detailed(self, cache_backend: str | None) -> tuple[int, dict[str, Any]]:
        """Status code and body of ``/health/detailed``: 503 when anything is critical."""
        checks: dict[str, Any] = {
            "database": await self._database(),
            "migrations": await self._migrations(),
        }
        for name, report in (("replica", await self._replica()), ("redis", await self._redis())):
            if report is not None:
                checks[name] = report
        checks["cache"] = {
            "status": HEALTHY if cache_backend != "redis" or checks["redis"]["status"] == HEALTHY else WARNING,
            "backend": cache_backend or "off",
        }
        checks["disk"] = self._disk()
        checks["memory"] = self._memory()
        overall = max((report["status"] for report in checks.values()), key=_SEVERITY.__getitem__)
        process = psutil.Process()
        body = {
            "status": overall,
            "version": self.settings.version,
            "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
            "started": self.started,
            "draining": self.shutdown.draining,
            "process": {
                "pid": os.getpid(),
                "uptime_seconds": round(time.time() - self.started_at, 1),
                "resident_memory_bytes": process.memory_info().rss,
            },
            "checks": checks,
        }
        return (503 if overall == CRITICAL else 200), body


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
