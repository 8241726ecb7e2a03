"""The server's own ``send`` for every WebSocket connection, so that live events skip the framework's layers.

A message sent through Starlette's ``WebSocket.send`` passes three coroutines before it reaches the server: the
``WebSocket`` method (which checks the connection's state) and two exception-handling wrappers that only act on
HTTP responses. A broadcast sends one message per connection, so it pays them once per connection
(``docs/benchmarks.md``, "The server's own send"). :class:`ServerSendMiddleware`, the innermost layer of the
stack, puts the ``send`` it
receives into the scope under :data:`SERVER_SEND`; the live-event route gives it to the connection, whose
stream messages then go straight to it, while opening and closing still go through ``WebSocket`` and keep the
framework's view of the connection's state right.

It is the innermost layer so that a layer outside it that wraps a WebSocket's ``send`` is still honoured.
"""

from __future__ import annotations

from collections.abc import Awaitable

from starlette.types import ASGIApp, Receive, Scope, Send

SERVER_SEND = "library_api.server_send"
"""Scope key of a WebSocket connection's ``send`` as the layers outside the framework handed it on."""


class ServerSendMiddleware:
    """Record a WebSocket scope's ``send`` under :data:`SERVER_SEND` for as long as the connection is served."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        """A plain call for any other scope: it hands back the inner application's awaitable, adding nothing."""
        if scope["type"] == "websocket":
            return self._websocket(scope, receive, send)
        return self.app(scope, receive, send)

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        # The key goes when the connection ends: the server's protocol holds the scope, and the scope holding the
        # protocol's ``send`` would make a reference cycle, which would keep every closed connection's objects
        # until the next full garbage collection instead of freeing them at once.
        scope[SERVER_SEND] = send
        try:
            await self.app(scope, receive, send)
        finally:
            del scope[SERVER_SEND]
