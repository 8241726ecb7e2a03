"""The Gunicorn adapter: Gunicorn manages the processes, each worker runs Uvicorn with the service's TLS and drain.

:class:`LibraryWorker` is Uvicorn's Gunicorn worker with the pieces of :mod:`library_api.server.uvicorn`: the
service's SSL context with each handshake run by the gate that logs and counts refusals (Gunicorn's own TLS
settings are not used, so its default cipher string never applies), the protocol classes that put the ASGI TLS
extension into every scope, and the :class:`~library_api.server.uvicorn.DrainingServer`, so the SIGTERM Gunicorn
sends a stopping worker first drains the application's WebSocket clients. ``deploy/gunicorn.conf.py`` finds this
class by itself and sets ``graceful_timeout`` above the drain; :func:`run_gunicorn` (``library-api serve --server
gunicorn``) does the same, from the same process settings (:mod:`library_api.server.gunicorn_settings`), binding
``fd://N`` for a socket handed down with ``serve --fd N``.

Uvicorn's own forwarded-header handling is off (``proxy_headers=False``), as under ``serve --server uvicorn``:
Uvicorn's worker would otherwise believe ``X-Forwarded-For``/``-Proto`` from Gunicorn's ``forwarded_allow_ips``
(loopback by default) whatever ``TRUSTED_PROXIES`` says. The application's request origin
(:mod:`library_api.http.request_origin`) is the one place that believes forwarded headers, from
``TRUSTED_PROXIES`` only, under every server.

Each worker builds its settings again from the environment (with the parent's command-line flags handed down
in ``LIBRARY_API_OVERRIDES``), exactly as the application factory in :mod:`library_api.server.asgi` does.
"""

from __future__ import annotations

import socket
import sys
import warnings
from collections.abc import Callable, Mapping
from typing import Any

from gunicorn.app.base import BaseApplication
from gunicorn.arbiter import Arbiter

from library_api.config import Settings, hand_down_overrides, load_settings
from library_api.observability.multiprocess import prepare_worker_metrics
from library_api.server.gunicorn_settings import hand_down_workers, process_options, with_workers
from library_api.server.tls import ServerTLS
from library_api.server.uvicorn import (
    DrainingServer,
    TLSHttpToolsProtocol,
    TLSWebSocketsProtocol,
    http_protocol,
)

with warnings.catch_warnings():
    # uvicorn.workers announces its move to a separate package on import; the class itself is what is used.
    warnings.simplefilter("ignore", DeprecationWarning)
    from uvicorn.workers import UvicornWorker

WORKER_CLASS = "library_api.server.gunicorn.LibraryWorker"


class LibraryWorker(UvicornWorker):
    """A Gunicorn worker running Uvicorn with the service's TLS context, TLS extension and graceful drain."""

    CONFIG_KWARGS: dict[str, Any] = {  # noqa: RUF012 - the base class declares it so; only read
        "loop": "auto",  # replaced by EVENT_LOOP in __init__
        "http": TLSHttpToolsProtocol,
        "ws": TLSWebSocketsProtocol,
        "proxy_headers": False,  # forwarded headers are the application's to judge (TRUSTED_PROXIES)
    }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        settings = load_settings()
        tls = ServerTLS.from_settings(settings)
        self.config.http = http_protocol(settings, tls)  # type: ignore[assignment]  # any protocol factory works
        self.config.server_header = False
        self.config.loop = settings.event_loop
        self.config.ws_max_size = settings.ws_max_size
        self.config.ws_ping_interval = settings.ws_ping_interval or None
        self.config.ws_ping_timeout = settings.ws_ping_timeout or None
        self.config.ws_per_message_deflate = settings.ws_per_message_deflate

    async def _serve(self) -> None:
        """Serve with the draining server (the first SIGTERM drains, then Uvicorn stops)."""
        self.config.app = self.wsgi
        server = DrainingServer(config=self.config)
        self._install_sigquit_handler()
        await server.serve(sockets=listening_sockets(self.sockets))
        if not server.started:
            sys.exit(Arbiter.WORKER_BOOT_ERROR)


def listening_sockets(listeners: list[Any]) -> list[socket.socket]:
    """The socket objects inside Gunicorn's listener wrappers, for the event loop to serve on.

    When a server stops, the event loop closes its listening sockets. uvloop closes the descriptor itself and
    then *detaches* a real :class:`socket.socket`, but calls ``close()`` on any other object it was given:
    Gunicorn's wrapper would then close the same descriptor a second time (logging "Error while closing socket
    [Errno 9] Bad file descriptor" on every stop, or closing an unrelated file that reused the number). Handing
    the loop the sockets themselves closes each descriptor exactly once, with uvloop and asyncio alike.
    """
    return [listener if isinstance(listener, socket.socket) else listener.sock for listener in listeners]


class GunicornService(BaseApplication):  # type: ignore[misc]
    """Gunicorn run from ``library-api serve``, configured from the service's settings instead of a file."""

    def __init__(self, options: Mapping[str, Any], load: Callable[[], Any]) -> None:
        self.options = dict(options)
        self._load = load
        super().__init__()

    def load_config(self) -> None:
        """Apply the options computed from the settings."""
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        """Build the application in the worker (after the fork, never in the master)."""
        return self._load()


def gunicorn_options(settings: Settings, fd: int | None = None) -> dict[str, Any]:
    """Gunicorn's settings for the service, from the process settings ``deploy/gunicorn.conf.py`` uses.

    The same keys with the same checks (:func:`~library_api.server.gunicorn_settings.process_options`), and
    ``--workers`` (``WORKERS``) first when it is given. ``fd`` is a listening socket handed down by the parent
    (``serve --fd``): Gunicorn serves on it (``fd://N``) instead of binding ``HOST:PORT``. Raises
    :class:`~library_api.config.ConfigError` on a bad key.
    """
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    explicit = settings.workers if "workers" in settings.model_fields_set else None
    return {
        **process_options(settings, workers=explicit),
        "bind": [f"fd://{fd}"] if fd is not None else [f"{host}:{settings.port}"],
        "worker_class": WORKER_CLASS,
        "accesslog": None,
        "proc_name": "library-api",
        "control_socket_disable": True,
    }


def run_gunicorn(settings: Settings, overrides: Mapping[str, Any], listener: socket.socket | None = None) -> None:
    """Serve with Gunicorn and its Uvicorn workers (on ``listener`` when the parent handed one down).

    The worker count is checked against the settings before start. Gunicorn takes over a handed-down descriptor
    and closes it once it has its own copy, so the socket object is detached first: nothing else may close that
    descriptor number later.
    """
    from library_api.server.asgi import create_app_from_environment  # noqa: PLC0415 - loaded in the workers

    options = gunicorn_options(settings, listener.fileno() if listener is not None else None)
    settings = with_workers(settings, options["workers"])
    hand_down_overrides(overrides)
    hand_down_workers(options["workers"])
    prepare_worker_metrics(settings)
    if listener is not None:
        listener.detach()
    GunicornService(options, create_app_from_environment).run()
