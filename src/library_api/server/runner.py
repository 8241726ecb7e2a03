"""Start the configured ASGI server.

One worker without reload runs the application built here, in this process. Several workers or reload need
the server to import the application itself in each child, so the command-line overrides are handed down
through the environment and :func:`library_api.server.asgi.create_app_from_environment` rebuilds it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import uvicorn

from library_api.app import create_app
from library_api.config import Settings, hand_down_overrides
from library_api.observability.logging import configure_logging
from library_api.observability.multiprocess import prepare_worker_metrics
from library_api.server.protocols import protocol_for

logger = logging.getLogger("library_api.server")

APP_FACTORY = "library_api.server.asgi:create_app_from_environment"


def _uvicorn_options(settings: Settings) -> dict[str, Any]:
    return {
        "host": settings.host,
        "port": settings.port,
        "log_config": None,
        "server_header": False,
        "proxy_headers": False,
        "access_log": False,
        "ws_max_size": settings.ws_max_size,
        "ws_ping_interval": settings.ws_ping_interval or None,
        "ws_ping_timeout": settings.ws_ping_timeout or None,
        "ws_per_message_deflate": settings.ws_per_message_deflate,
        "http": protocol_for(settings.http_header_timeout),
    }


def run(settings: Settings, overrides: Mapping[str, Any]) -> None:
    """Serve until stopped; ``overrides`` are the command-line flags, handed down to worker processes."""
    configure_logging(settings.log_level, settings.effective_log_format)
    options = _uvicorn_options(settings)
    if settings.workers > 1 or settings.reload:
        hand_down_overrides(overrides)
        prepare_worker_metrics(settings)
        logger.info(
            "starting uvicorn on %s:%d with %d worker(s)%s",
            settings.host,
            settings.port,
            settings.workers,
            " and reload" if settings.reload else "",
        )
        uvicorn.run(
            APP_FACTORY,
            factory=True,
            workers=None if settings.reload else settings.workers,
            reload=settings.reload,
            reload_dirs=["src"] if settings.reload else None,
            **options,
        )
        return
    logger.info("starting uvicorn on %s:%d", settings.host, settings.port)
    server = uvicorn.Server(uvicorn.Config(create_app(settings), **options))
    server.run()
