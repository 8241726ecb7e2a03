"""The Uvicorn adapter: our TLS context, the ASGI TLS extension, and a drain before Uvicorn's own shutdown.

Uvicorn (0.54) neither passes the client certificate to the application nor lets an application hook its
signals. Both are added through its public extension points, with no change to its code:

* ``Config(http=..., ws=...)`` accepts protocol classes. :class:`TLSHttpToolsProtocol` and
  :class:`TLSWebSocketsProtocol` are Uvicorn's own protocols that, when a connection is made, read the
  connection's ``SSLObject`` once and put an application wrapper carrying the ASGI TLS extension in front of
  every request of that connection (:class:`~library_api.server.tls.ConnectionTLS`).
* With TLS, Uvicorn itself listens in plain TCP and the HTTP protocol factory is a :class:`GatedProtocol`: each
  connection's handshake is run by a :class:`~library_api.server.handshakes.HandshakeGate` with the context of
  :func:`library_api.security.tls.build_server_context`, so a refused handshake is logged and counted
  (Uvicorn's own ``ssl_context_factory`` would let the event loop swallow it). The factory pickles as its file
  paths, so spawned workers build their own context. Since Uvicorn then believes it serves plain HTTP, the
  service binds its listening socket itself (:func:`listen`) and names the scheme in its own log line.
* :class:`DrainingServer` is a ``uvicorn.Server`` whose first exit signal runs the application's
  :class:`~library_api.lifecycle.shutdown.ShutdownCoordinator` drain; Uvicorn's shutdown follows when it is done.
  A second signal forces the drain to end.
"""

from __future__ import annotations

import asyncio
import functools
import signal
import socket
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from types import FrameType
from typing import Any

import uvicorn
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from library_api.config import Settings
from library_api.server.handshakes import HandshakeGate
from library_api.server.protocols import HeadDeadlineProtocol
from library_api.server.tls import ConnectionTLS, ServerTLS, find_shutdown


@dataclass(slots=True)
class GatedProtocol:
    """Uvicorn's HTTP protocol factory (``http=``) for TLS: each connection's handshake runs in a gate first."""

    inner: Callable[..., asyncio.Protocol]
    tls: ServerTLS

    def __call__(self, **kwargs: Any) -> HandshakeGate:
        """The gate for one accepted connection, in front of the HTTP protocol Uvicorn asked for."""
        config = kwargs["config"]
        return HandshakeGate(self.inner(**kwargs), self.tls.context(), self.tls.failures(config.loaded_app))


def _attach_tls(protocol: Any, transport: asyncio.BaseTransport) -> None:
    ssl_object = transport.get_extra_info("ssl_object")
    factory = protocol.config.http_protocol_class
    if ssl_object is None or not isinstance(factory, GatedProtocol):
        return
    protocol.app = ConnectionTLS(protocol.config.loaded_app, factory.tls.extension(ssl_object))


def listen(settings: Settings) -> socket.socket:
    """Bind the listening socket (Uvicorn's own would log ``http://`` for a TLS server); the runner logs where."""
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    listener = socket.create_server((settings.host, settings.port), family=family, backlog=2048)
    listener.set_inheritable(True)
    return listener


class TLSHttpToolsProtocol(HeadDeadlineProtocol):
    """Uvicorn's httptools protocol with a request-head deadline and the connection's TLS extension in every scope."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Register the connection, then read its TLS state once."""
        super().connection_made(transport)
        _attach_tls(self, transport)


class TLSWebSocketsProtocol(WebSocketsSansIOProtocol):
    """Uvicorn's WebSocket protocol, with the connection's TLS extension in the WebSocket scope.

    A handshake the application answers with an HTTP denial response (429 from the WebSocket abuse limits) is
    also marked complete once that response is sent: Uvicorn 0.54 leaves it open and then logs "ASGI callable
    returned without completing handshake." as an error for every refusal, which an attacker could turn into a
    flood of error lines.
    """

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Register the connection, then read its TLS state once."""
        super().connection_made(transport)
        _attach_tls(self, transport)

    def send(self, message: Any) -> Coroutine[Any, Any, None]:
        """Pass the application's message on; a finished denial response completes the handshake.

        A plain method that hands back Uvicorn's own coroutine for every other message: an ``async def`` here
        would add a coroutine per message sent, which a broadcast pays once per connection.
        """
        if message["type"] == "websocket.http.response.body" and not message.get("more_body", False):
            return self._send_last_denial_body(message)
        return super().send(message)

    async def _send_last_denial_body(self, message: Any) -> None:
        await super().send(message)
        self.handshake_complete = True


class DrainingServer(uvicorn.Server):
    """Uvicorn whose first exit signal drains the application before the server shuts down.

    A later SIGINT forces the drain to end; a repeated SIGTERM does not, so that Ctrl+C in a terminal (which
    reaches a worker both from the terminal and, as SIGTERM, from the supervisor) starts one graceful drain.
    Signals are not re-raised after the shutdown, unlike Uvicorn's own handler, so the process exits 0.
    """

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.exit_signals: list[int] = []
        self.drain_task: asyncio.Task[None] | None = None
        self.forced = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """Only record the signal here; :meth:`on_tick` acts on it from the event loop."""
        self.exit_signals.append(sig)

    async def on_tick(self, counter: int) -> bool:
        """Start the drain on the first signal, force it on a later SIGINT, and exit once it has finished."""
        if self.exit_signals:
            coordinator = find_shutdown(self.config.loaded_app)
            if coordinator is None:
                self.should_exit = True
            elif self.drain_task is None:
                self.drain_task = asyncio.create_task(coordinator.drain())
            later_sigint = len(self.exit_signals) > 1 and signal.SIGINT in self.exit_signals[1:]
            if later_sigint and coordinator is not None and not self.forced:
                self.forced = True
                coordinator.force()
            if self.drain_task is not None and self.drain_task.done():
                self.should_exit = True
        return await super().on_tick(counter)


def http_protocol(settings: Settings, tls: ServerTLS | None = None) -> Callable[..., asyncio.Protocol]:
    """The HTTP protocol factory given to Uvicorn (``http=``), with the configured request-head deadline.

    With ``tls``, each connection's handshake is run by the gate first. Module-level classes and a partial, so
    that the factory pickles into spawned worker processes.
    """
    protocol = functools.partial(TLSHttpToolsProtocol, head_timeout=settings.http_header_timeout)
    return protocol if tls is None else GatedProtocol(protocol, tls)


def uvicorn_options(settings: Settings, tls: ServerTLS | None) -> dict[str, Any]:
    """Keyword arguments of ``uvicorn.Config`` for the service, the TLS gate included when the mode asks for it."""
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "log_config": None,
        "server_header": False,
        "loop": settings.event_loop,
        "proxy_headers": False,
        "access_log": False,
        "http": http_protocol(settings, tls),
        "ws": TLSWebSocketsProtocol,
        "ws_max_size": settings.ws_max_size,
        "ws_ping_interval": settings.ws_ping_interval or None,
        "ws_ping_timeout": settings.ws_ping_timeout or None,
        "ws_per_message_deflate": settings.ws_per_message_deflate,
    }
    return options
