"""Gunicorn configuration of the Library API image (``gunicorn --config deploy/gunicorn.conf.py``).

Gunicorn manages the processes; each worker runs the ASGI application on an event loop. The values come from
two places:

* the service's own settings (:func:`library_api.config.load_settings`, the same layers and validation as
  ``library-api serve``): ``HOST``, ``PORT``, ``SHUTDOWN_TIMEOUT``, ``LOG_LEVEL``, ``LOG_FORMAT``. A bad setting
  stops the master before any port is opened, one ``error:`` line per problem, exit status 2;
* Gunicorn's process-level keys (``WEB_CONCURRENCY``, ``WORKERS_PER_CORE``, ``TIMEOUT``, ``GRACEFUL_TIMEOUT``,
  ``KEEPALIVE``, ``MAX_REQUESTS``, ``MAX_REQUESTS_JITTER``, ``LIMIT_REQUEST_*``), read and checked by
  :mod:`library_api.server.gunicorn_settings`, the same code ``library-api serve --server gunicorn`` uses (the
  reasons for every number are there), and ``GUNICORN_WORKER_CLASS``.

The worker count is handed down to the workers as the service's ``WORKERS`` setting, so each worker knows how
many processes share the service (an in-process cache is then off without Redis, and the checks that depend on
it apply); the settings are validated with that count before any port is opened.

**Prometheus multiprocess mode**: the master empties ``PROMETHEUS_MULTIPROC_DIR`` at start (a restarted
container may find files of processes that no longer exist) and marks each worker dead when it exits, so live
gauges never count a dead worker.
"""

from __future__ import annotations

import importlib
import inspect
import os
import pkgutil
import sys
from pathlib import Path
from typing import Any, NoReturn

from gunicorn.workers.base import Worker
from prometheus_client import multiprocess

import library_api.server as server_package
from library_api.config import ConfigError, Settings, load_settings
from library_api.server.gunicorn_settings import hand_down_workers, process_options, with_workers

FALLBACK_WORKER_CLASS = "uvicorn.workers.UvicornWorker"
"""Used only when ``library_api.server`` provides no Gunicorn worker (then nothing drains WebSockets first)."""

APPLICATION = "library_api.server.asgi:create_app_from_environment()"
"""Each worker builds its own application from the environment (nothing is shared across ``fork``)."""


def _fail(problems: list[str]) -> NoReturn:
    for line in problems:
        sys.stderr.write(f"error: {line}\n")
    raise SystemExit(2)


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


def _settings() -> tuple[Settings, dict[str, Any]]:
    """The service's settings and Gunicorn's process settings, checked together with the real worker count."""
    try:
        service = load_settings()
        processes = process_options(service)
        service = with_workers(service, processes["workers"])
    except ConfigError as exc:
        _fail(exc.problems)
    hand_down_workers(processes["workers"])
    return service, processes


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


_service, _processes = _settings()

wsgi_app = APPLICATION
bind = [f"[{_service.host}]:{_service.port}" if ":" in _service.host else f"{_service.host}:{_service.port}"]
workers = _processes["workers"]
worker_class = os.environ.get("GUNICORN_WORKER_CLASS", "").strip() or library_worker_class() or FALLBACK_WORKER_CLASS
preload_app = False
proc_name = "library-api"

graceful_timeout = _processes["graceful_timeout"]
timeout = _processes["timeout"]
keepalive = _processes["keepalive"]
max_requests = _processes["max_requests"]
max_requests_jitter = _processes["max_requests_jitter"]

limit_request_line = _processes["limit_request_line"]
limit_request_fields = _processes["limit_request_fields"]
limit_request_field_size = _processes["limit_request_field_size"]

worker_tmp_dir = _processes["worker_tmp_dir"]
# No control socket: it would be written under $HOME, which is read-only in the container.
control_socket_disable = True

loglevel = _service.log_level.lower()
errorlog = "-"
accesslog = None
logconfig_dict = logging_config(_service)
