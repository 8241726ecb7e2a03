"""The Hypercorn adapter: HTTP/1.1 and HTTP/2 (ALPN) with the service's TLS, the ASGI TLS extension, and the drain.

Hypercorn (0.18) builds its own SSL context and creates one ``TCPServer`` per connection inside its serving
function, with no hook for either. This adapter therefore runs its own, short serving loop over Hypercorn's
public building blocks (its ``Config`` for sockets and timeouts, ``Lifespan``, ``WorkerContext``, ``TCPServer``):

* connections use :func:`library_api.security.tls.build_server_context`, offering ``h2`` and ``http/1.1`` over
  ALPN; each handshake is run by :func:`handshake` (``StreamWriter.start_tls``), so a refused one is logged and
  counted (:mod:`library_api.server.handshakes`);
* :class:`TLSTCPServer` is Hypercorn's connection handler that reads the connection's ``SSLObject`` once and
  puts the ASGI TLS extension into every scope of that connection (HTTP/1.1 requests, HTTP/2 streams and
  WebSockets alike);
* the first SIGTERM/SIGINT runs the application's shutdown coordinator drain, then Hypercorn's own graceful
  stop (close listeners, let in-flight requests finish within ``graceful_timeout``, lifespan shutdown). A
  second signal forces the drain to end;
* ``WS_MAX_SIZE`` holds against clients that ignore close 1009, and permessage-deflate is agreed only with
  ``WS_PER_MESSAGE_DEFLATE`` (:mod:`library_api.server.hypercorn_ws`).

With ``serve --fd N`` the handed-down listening socket is served on instead of binding ``HOST:PORT``.
With ``WORKERS`` above one, the parent binds the sockets and forks that many workers, forwarding the stop
signal to each; every worker builds its own application and SSL context after the fork.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal
import socket
import ssl
from collections.abc import Mapping
from typing import Any

from hypercorn.asyncio.lifespan import Lifespan
from hypercorn.asyncio.tcp_server import TCPServer
from hypercorn.asyncio.worker_context import WorkerContext
from hypercorn.config import Config as HypercornConfig
from starlette.types import ASGIApp

from library_api.app import create_app
from library_api.config import Settings
from library_api.server.handshakes import HANDSHAKE_TIMEOUT, HandshakeFailures
from library_api.server.hypercorn_ws import install as bound_websocket_messages
from library_api.server.tls import ServerTLS, find_shutdown

logger = logging.getLogger("library_api.server")

ALPN_PROTOCOLS = ("h2", "http/1.1")
GRACEFUL_SECONDS = 30.0
"""Time in-flight HTTP requests get after the WebSocket drain, before the lifespan shutdown."""


class HypercornApp:
    """An ASGI application in Hypercorn's calling convention (it passes two extra callables)."""

    __slots__ = ("app", "tls")

    def __init__(self, app: ASGIApp, tls: dict[str, Any] | None = None) -> None:
        self.app = app
        self.tls = tls

    async def __call__(self, scope: Any, receive: Any, send: Any, sync_spawn: Any, call_soon: Any) -> None:
        """Call the application, with this connection's TLS extension in the scope when there is one."""
        if self.tls is not None:
            scope["extensions"] = {**(scope.get("extensions") or {}), "tls": self.tls}
        await self.app(scope, receive, send)


class TLSTCPServer(TCPServer):
    """Hypercorn's connection handler, giving each TLS connection's scopes the ASGI TLS extension."""

    def __init__(self, app: HypercornApp, *args: Any, tls: ServerTLS | None) -> None:
        super().__init__(app, *args)
        ssl_object = self.writer.get_extra_info("ssl_object")
        if ssl_object is not None and tls is not None:
            self.app = HypercornApp(app.app, tls.extension(ssl_object))


def hypercorn_config(settings: Settings) -> HypercornConfig:
    """Hypercorn's settings for the service: binding, limits and timeouts (TLS is applied separately)."""
    config = HypercornConfig()
    config.bind = [f"[{settings.host}]:{settings.port}" if ":" in settings.host else f"{settings.host}:{settings.port}"]
    config.accesslog = None
    config.errorlog = logger
    config.include_server_header = False
    config.websocket_max_message_size = settings.ws_max_size
    config.graceful_timeout = GRACEFUL_SECONDS
    config.alpn_protocols = list(ALPN_PROTOCOLS)
    return config


async def serve(app: ASGIApp, config: HypercornConfig, sockets: list[socket.socket], tls: ServerTLS | None) -> None:
    """Serve ``app`` on ``sockets`` until a stop signal, then drain and stop gracefully."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals: list[int] = []

    def on_signal(number: int) -> None:
        signals.append(number)
        stop.set()
        coordinator = find_shutdown(app)
        if len(signals) > 1 and coordinator is not None:
            coordinator.force()

    for number in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(number, on_signal, number)

    wrapped = HypercornApp(app)
    lifespan = Lifespan(wrapped, config, loop, {})
    lifespan_task = loop.create_task(lifespan.handle_lifespan())
    await lifespan.wait_for_startup()
    context = WorkerContext(None)
    connections: set[asyncio.Task[Any]] = set()
    ssl_context = tls.context() if tls is not None else None
    failures = tls.failures(app) if tls is not None else None

    async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        connections.add(task)
        task.add_done_callback(connections.discard)
        if ssl_context is not None and not await handshake(writer, ssl_context, failures):
            return
        await TLSTCPServer(wrapped, loop, config, context, lifespan.state, reader, writer, tls=tls)

    servers = [await asyncio.start_server(on_connection, sock=sock, backlog=config.backlog) for sock in sockets]
    scheme = "https" if ssl_context is not None else "http"
    for sock in sockets:
        host, port = sock.getsockname()[:2]
        logger.info("hypercorn running on %s://%s:%d", scheme, host, port)
    await stop.wait()
    coordinator = find_shutdown(app)
    if coordinator is not None:
        await coordinator.drain()
    await context.terminated.set()
    for server in servers:
        server.close()
        await server.wait_closed()
    if connections:
        await asyncio.wait(connections, timeout=config.graceful_timeout)
    await lifespan.wait_for_shutdown()
    lifespan_task.cancel()
    await asyncio.gather(lifespan_task, return_exceptions=True)
    logger.info("hypercorn stopped")


async def handshake(writer: asyncio.StreamWriter, context: ssl.SSLContext, failures: HandshakeFailures | None) -> bool:
    """Run the TLS handshake of an accepted connection; a refusal is logged and counted, and the connection closed."""
    peer = writer.get_extra_info("peername")
    try:
        await writer.start_tls(context, ssl_handshake_timeout=HANDSHAKE_TIMEOUT)
    except (TimeoutError, OSError) as exc:
        if failures is not None:
            failures.refused(exc, peer)
        writer.transport.abort()
        return False
    return True


def _worker(settings: Settings, sockets: list[socket.socket], tls: ServerTLS | None) -> None:
    bound_websocket_messages(settings)
    asyncio.run(serve(create_app(settings), hypercorn_config(settings), sockets, tls))


def run_hypercorn(settings: Settings, _overrides: Mapping[str, Any], listener: socket.socket | None = None) -> None:
    """Serve with Hypercorn: in this process for one worker, in forked workers for several.

    ``listener`` is a socket handed down by the parent (``--fd``), served on instead of binding ``HOST:PORT``.
    """
    config = hypercorn_config(settings)
    tls = ServerTLS.from_settings(settings, ALPN_PROTOCOLS)
    config.certfile = str(settings.tls_cert_file) if tls is not None else None
    config.keyfile = str(settings.tls_key_file) if tls is not None else None
    if listener is not None:
        sockets = [listener]
    else:
        bound = config.create_sockets()
        sockets = bound.secure_sockets + bound.insecure_sockets
    if settings.workers == 1:
        _worker(settings, sockets, tls)
        return
    processes = [
        multiprocessing.get_context("fork").Process(target=_worker, args=(settings, sockets, tls), daemon=False)
        for _ in range(settings.workers)
    ]
    for process in processes:
        process.start()
    logger.info("hypercorn started %d workers", len(processes))

    def forward(number: int, _frame: Any) -> None:
        for process in processes:
            if process.pid is not None and process.is_alive():
                os.kill(process.pid, number)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for process in processes:
        process.join()
    if any(process.exitcode for process in processes):
        raise SystemExit(1)
