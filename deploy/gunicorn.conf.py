"""Gunicorn configuration of the Library API image (``gunicorn --config deploy/gunicorn.conf.py``).

Gunicorn manages the processes; each worker runs the ASGI application on an event loop. The values come from
two places:

* the service's own settings (:func:`library_api.config.load_settings`, the same layers and validation as
  ``library-api serve``): ``HOST``, ``PORT``, ``SHUTDOWN_TIMEOUT``, ``LOG_LEVEL``, ``LOG_FORMAT``. A bad setting
  stops the master before any port is opened, one ``error:`` line per problem, exit status 2;
* Gunicorn's process-level keys, which are not settings of the application (the names of the seed's production
  ``.env``): ``WEB_CONCURRENCY``, ``WORKERS_PER_CORE``, ``TIMEOUT``, ``GRACEFUL_TIMEOUT``, ``KEEPALIVE``,
  ``MAX_REQUESTS``, ``MAX_REQUESTS_JITTER``, ``LIMIT_REQUEST_LINE``, ``LIMIT_REQUEST_FIELDS``,
  ``LIMIT_REQUEST_FIELD_SIZE``, ``GUNICORN_WORKER_CLASS``.

Why the numbers are what they are:

* **workers**: ``WEB_CONCURRENCY`` when set (an explicit operator choice, honoured as given); otherwise
  ``WORKERS_PER_CORE`` (default 1) times the cores this container may really use (CPU affinity and the cgroup
  CPU quota, not the host's core count), and never fewer than 2, so one busy worker never stalls the service.
* **graceful_timeout**: Gunicorn's arbiter kills a worker that has not exited this many seconds after the stop
  signal, whatever it is doing. A worker first drains its WebSocket clients for up to ``SHUTDOWN_TIMEOUT``
  seconds (default 1,800), then finishes in-flight requests and closes its resources, so the default is
  ``SHUTDOWN_TIMEOUT + 30``; an explicit ``GRACEFUL_TIMEOUT`` that would cut a drain short is refused.
* **keepalive**: longer than the proxy's idle upstream timeout (nginx and ingress-nginx: 60 s), so the proxy
  always closes an idle connection first and never reuses one the worker is closing (a 502).
* **timeout**: the heartbeat limit; an event loop blocked this long is a dead worker and is replaced.
* **max_requests** with jitter: workers are recycled now and then, staggered, to bound slow leaks. A recycled
  worker drains like a stopping one, so WebSocket clients are asked to reconnect: keep it high, or 0 to turn
  recycling off, for WebSocket-heavy use.
* **limits** on the request line and header fields apply to Gunicorn's own HTTP parser; in front of Uvicorn
  workers nginx enforces the same ceilings (``large_client_header_buffers``).
* **Prometheus multiprocess mode**: the master empties ``PROMETHEUS_MULTIPROC_DIR`` at start (a restarted
  container may find files of processes that no longer exist) and marks each worker dead when it exits, so
  live gauges never count a dead worker.
"""

from __future__ import annotations

import importlib
import inspect
import math
import os
import pkgutil
import sys
from pathlib import Path
from typing import Any, NoReturn

from gunicorn.workers.base import Worker
from prometheus_client import multiprocess

import library_api.server as server_package
from library_api.config import ConfigError, Settings, load_settings

GRACEFUL_MARGIN_SECONDS = 30
"""Time after the WebSocket drain for in-flight requests and the lifespan shutdown (database, broker, cache)."""

MIN_GRACEFUL_MARGIN_SECONDS = 5
"""An explicit ``GRACEFUL_TIMEOUT`` must exceed ``SHUTDOWN_TIMEOUT`` by at least this much."""

FALLBACK_WORKER_CLASS = "uvicorn.workers.UvicornWorker"
"""Used only when ``library_api.server`` provides no Gunicorn worker (then nothing drains WebSockets first)."""

APPLICATION = "library_api.server.asgi:create_app_from_environment()"
"""Each worker builds its own application from the environment (nothing is shared across ``fork``)."""


def _fail(problems: list[str]) -> NoReturn:
    for line in problems:
        sys.stderr.write(f"error: {line}\n")
    raise SystemExit(2)


def _integer(name: str, default: int, *, minimum: int = 0) -> int:
    """The whole number in environment variable ``name``, ``default`` when unset; a bad value stops start-up."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        _fail([f"{name}: must be a whole number (got {raw!r})"])
    if value < minimum:
        _fail([f"{name}: must be at least {minimum} (got {value})"])
    return value


def _number(name: str, default: float) -> float:
    """The positive number in environment variable ``name``, ``default`` when unset."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        _fail([f"{name}: must be a number (got {raw!r})"])
    if not value > 0:
        _fail([f"{name}: must be greater than 0 (got {raw})"])
    return value


def available_cores(cgroup_root: Path = Path("/sys/fs/cgroup")) -> int:
    """The cores this process may use: CPU affinity, further limited by a cgroup v2 or v1 CPU quota."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = _cgroup_quota(cgroup_root)
    if quota is not None:
        cores = min(cores, max(1, math.ceil(quota)))
    return max(1, cores)


def _cgroup_quota(root: Path) -> float | None:
    """CPUs allowed by the cgroup quota (``cpu.max`` or ``cpu.cfs_quota_us``), or None when unlimited."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return None if quota_us <= 0 or period_us <= 0 else quota_us / period_us


def worker_count() -> int:
    """``WEB_CONCURRENCY`` as given, else ``WORKERS_PER_CORE`` x usable cores, and at least 2."""
    explicit = _integer("WEB_CONCURRENCY", 0, minimum=1)
    if explicit:
        return explicit
    per_core = _number("WORKERS_PER_CORE", 1.0)
    return max(2, int(per_core * available_cores()))


def graceful_timeout_for(settings: Settings) -> int:
    """Seconds Gunicorn grants a stopping worker: longer than the drain, or start-up is refused."""
    drain = math.ceil(settings.shutdown_timeout)
    explicit = _integer("GRACEFUL_TIMEOUT", 0, minimum=1)
    if not explicit:
        return drain + GRACEFUL_MARGIN_SECONDS
    if explicit < drain + MIN_GRACEFUL_MARGIN_SECONDS:
        _fail(
            [
                f"GRACEFUL_TIMEOUT: must exceed SHUTDOWN_TIMEOUT ({drain} s) by at least "
                f"{MIN_GRACEFUL_MARGIN_SECONDS} s, or Gunicorn kills workers that are still draining "
                f"(got {explicit}; leave it unset for {drain + GRACEFUL_MARGIN_SECONDS})"
            ]
        )
    return explicit


def library_worker_class() -> str | None:
    """The Gunicorn worker class the package provides in ``library_api.server``, found by what it is.

    The service's worker hands the stop signal to the application's shutdown coordinator before the server's own
    shutdown, so WebSocket clients are drained rather than cut off. When several classes qualify, the one the
    others derive from is chosen.
    """
    found: list[type[Any]] = []
    for module_info in pkgutil.iter_modules(server_package.__path__, f"{server_package.__name__}."):
        module = importlib.import_module(module_info.name)
        for _, candidate in inspect.getmembers(module, inspect.isclass):
            if issubclass(candidate, Worker) and candidate.__module__ == module.__name__:
                found.append(candidate)
    roots = [cls for cls in found if not any(other is not cls and issubclass(cls, other) for other in found)]
    if not roots:
        return None
    chosen = sorted(roots, key=lambda cls: (cls.__module__, cls.__qualname__))[0]
    return f"{chosen.__module__}.{chosen.__qualname__}"


def logging_config(settings: Settings) -> dict[str, Any]:
    """Every log line (Gunicorn's, the workers', the application's) in the service's format on stderr."""
    formatter = (
        "library_api.observability.logging.JsonFormatter"
        if settings.effective_log_format == "json"
        else "library_api.observability.logging.ConsoleFormatter"
    )
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"library": {"()": formatter}},
        "handlers": {
            "stderr": {"class": "logging.StreamHandler", "formatter": "library", "stream": "ext://sys.stderr"}
        },
        "root": {"level": settings.log_level, "handlers": ["stderr"]},
        "loggers": {
            "gunicorn.error": {"level": settings.log_level, "handlers": ["stderr"], "propagate": False},
            # The application writes one access line per request itself; Gunicorn's would duplicate it.
            "gunicorn.access": {"level": "WARNING", "handlers": [], "propagate": False},
        },
    }


def _settings() -> Settings:
    try:
        return load_settings()
    except ConfigError as exc:
        _fail(exc.problems)


def _multiprocess_dir() -> Path | None:
    value = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "").strip()
    return Path(value) if value else None


def on_starting(server: Any) -> None:
    """Empty the Prometheus multiprocess directory before any worker writes to it (files of dead processes)."""
    directory = _multiprocess_dir()
    if directory is None:
        return
    directory.mkdir(parents=True, exist_ok=True)
    stale = [path for path in directory.glob("*.db") if path.is_file()]
    for path in stale:
        path.unlink()
    server.log.info("prometheus multiprocess directory %s ready (%d stale file(s) removed)", directory, len(stale))


def when_ready(server: Any) -> None:
    """Say which worker class serves, and warn when it is the fallback that does not drain WebSockets."""
    chosen = server.cfg.worker_class_str
    if chosen == FALLBACK_WORKER_CLASS:
        server.log.warning(
            "worker class %s: library_api.server provides no Gunicorn worker, so WebSocket clients are not "
            "drained before a worker stops",
            chosen,
        )
    server.log.info("serving with %d %s worker(s), graceful timeout %d s", server.cfg.workers, chosen, graceful_timeout)


def child_exit(server: Any, worker: Any) -> None:
    """Forget an exited worker's live gauges, so in-progress and connection gauges never count the dead."""
    if _multiprocess_dir() is None:
        return
    multiprocess.mark_process_dead(worker.pid)


_service = _settings()

wsgi_app = APPLICATION
bind = [f"[{_service.host}]:{_service.port}" if ":" in _service.host else f"{_service.host}:{_service.port}"]
workers = worker_count()
worker_class = os.environ.get("GUNICORN_WORKER_CLASS", "").strip() or library_worker_class() or FALLBACK_WORKER_CLASS
preload_app = False
proc_name = "library-api"

graceful_timeout = graceful_timeout_for(_service)
timeout = _integer("TIMEOUT", 60, minimum=1)
keepalive = _integer("KEEPALIVE", _integer("HTTP_TIMEOUT_KEEP_ALIVE", 75, minimum=1), minimum=1)
max_requests = _integer("MAX_REQUESTS", 10_000)
max_requests_jitter = _integer("MAX_REQUESTS_JITTER", max_requests // 10)

limit_request_line = _integer("LIMIT_REQUEST_LINE", 8190, minimum=1)
limit_request_fields = _integer("LIMIT_REQUEST_FIELDS", 100, minimum=1)
limit_request_field_size = _integer("LIMIT_REQUEST_FIELD_SIZE", 8190, minimum=1)

# Heartbeat files on tmpfs when there is one: a full or slow disk must not look like a hung worker.
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None  # noqa: S108
# No control socket: it would be written under $HOME, which is read-only in the container.
control_socket_disable = True

loglevel = _service.log_level.lower()
errorlog = "-"
accesslog = None
logconfig_dict = logging_config(_service)
