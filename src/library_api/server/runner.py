"""Start the configured ASGI server: one entry point, one adapter per server, one TLS and validation path.

The settings are validated before this runs (``library-api serve`` exits with every problem otherwise), so no
port is opened for a configuration that cannot work. The security decision (mode, TLS, client certificates)
and the reason for it are logged, as are certificate warnings (expiry within 30 days). Then the adapter of
``SERVER`` serves:

* **uvicorn** (default): one worker runs the application built here; several workers
  (:mod:`library_api.server.draining`) or reload need the server to import the application in each child, so
  the command-line overrides are handed down through the environment and
  :func:`library_api.server.asgi.create_app_from_environment` rebuilds it;
* **hypercorn**: :mod:`library_api.server.hypercorn` (HTTP/2 over TLS via ALPN);
* **gunicorn**: :mod:`library_api.server.gunicorn`, Uvicorn workers managed by Gunicorn.

With ``serve --fd N`` (:mod:`library_api.server.listener`) every adapter serves on the listening socket its
parent handed down instead of binding ``HOST:PORT``.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Mapping
from typing import Any

import uvicorn

from library_api.app import create_app
from library_api.config import Settings, hand_down_overrides
from library_api.config.tls_files import check_tls_files
from library_api.observability.logging import configure_logging
from library_api.observability.multiprocess import prepare_worker_metrics
from library_api.server.draining import STARTUP_FAILURE, WorkerSupervisor
from library_api.server.listener import address_of
from library_api.server.tls import ServerTLS
from library_api.server.uvicorn import DrainingServer, listen, uvicorn_options

logger = logging.getLogger("library_api.server")

APP_FACTORY = "library_api.server.asgi:create_app_from_environment"


def announce(settings: Settings) -> None:
    """Log the security decision, why it was made, and any warning about the certificate files."""
    decision = settings.security
    logger.info(
        "security mode %s (%s); TLS %s, client certificates %s",
        decision.mode,
        decision.reason,
        "on" if decision.tls else "off",
        decision.client_certificates,
    )
    report = check_tls_files(settings.tls_cert_file, settings.tls_key_file, settings.tls_ca_file, settings.tls_crl_file)
    for warning in report.warnings:
        logger.warning("%s", warning)


def run(settings: Settings, overrides: Mapping[str, Any], listener: socket.socket | None = None) -> int:
    """Serve until stopped and return the process exit code; ``overrides`` are the command-line flags.

    ``listener`` is a socket handed down by the parent (``--fd``), served on instead of binding ``HOST:PORT``.
    Every server drains the application on the first stop signal before its own shutdown; reload, a
    development aid, is the exception and uses Uvicorn's own reloader (and binds its own socket).
    """
    configure_logging(settings.log_level, settings.effective_log_format)
    announce(settings)
    if settings.server == "hypercorn":
        from library_api.server.hypercorn import run_hypercorn  # noqa: PLC0415 - only this server needs it

        run_hypercorn(settings, overrides, listener)
        return 0
    if settings.server == "gunicorn":
        from library_api.server.gunicorn import run_gunicorn  # noqa: PLC0415 - only this server needs it

        run_gunicorn(settings, overrides, listener)
        return 0
    tls = ServerTLS.from_settings(settings)
    options = uvicorn_options(settings, tls)
    scheme = "https" if tls is not None else "http"
    inherited = " (inherited socket)" if listener is not None else ""
    if settings.reload:
        hand_down_overrides(overrides)
        logger.info("starting uvicorn on %s://%s:%d with reload", scheme, settings.host, settings.port)
        uvicorn.run(APP_FACTORY, factory=True, reload=True, reload_dirs=["src"], **options)
        return 0
    listener = listener if listener is not None else _listen(settings)
    if listener is None:
        return STARTUP_FAILURE
    # The one line that says where the server listens: the bound port, even when PORT=0 asked the kernel for one.
    workers = f" with {settings.workers} workers" if settings.workers > 1 else ""
    logger.info("uvicorn running on %s://%s%s%s", scheme, address_of(listener), inherited, workers)
    if settings.workers > 1:
        hand_down_overrides(overrides)
        prepare_worker_metrics(settings)
        config = uvicorn.Config(APP_FACTORY, factory=True, workers=settings.workers, **options)
        return WorkerSupervisor(config, settings.workers, listener=listener).run()
    server = DrainingServer(uvicorn.Config(create_app(settings), **options))
    server.run(sockets=[listener])
    return 0 if server.started else STARTUP_FAILURE


def _listen(settings: Settings) -> socket.socket | None:
    """The bound listening socket, or ``None`` (logged) when the address cannot be bound."""
    try:
        return listen(settings)
    except OSError as exc:
        logger.error("cannot listen on %s:%d: %s", settings.host, settings.port, exc.strerror or exc)
        return None
