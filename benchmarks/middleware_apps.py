"""The two service applications ``bench_middleware.py`` serves, each under Uvicorn as its own process.

``full`` is the service as deployed: every middleware on (request context, security headers, access log and
metrics, trusted hosts, CORS, body limit, rate limit, gzip), a JSON access line per request written to the
process's stderr (a file). ``bare_stack`` is the very same application with its middleware list emptied: routes,
dependencies and the catalogue cache are unchanged, so the difference is the cost of the middleware alone.
Settings come from the environment (``DATABASE_URL`` and the rest, set by the benchmark).
"""

from __future__ import annotations

from fastapi import FastAPI

from library_api.app import create_app
from library_api.config import load_settings
from library_api.observability.logging import configure_logging


def full() -> FastAPI:
    """The service with its whole middleware stack."""
    settings = load_settings()
    configure_logging(settings.log_level, settings.effective_log_format)
    return create_app(settings)


def bare_stack() -> FastAPI:
    """The same service without any middleware."""
    app = full()
    app.user_middleware.clear()
    return app
