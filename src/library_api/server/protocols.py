"""Uvicorn's HTTP protocol with a deadline on the request head, so that slow-header clients cannot linger.

Uvicorn closes a connection that stays idle after a response (``timeout_keep_alive``), but it sets no deadline
for a request's head to arrive: a client that opens a connection and sends nothing, or trickles one header
byte at a time (slowloris), holds the connection, its file descriptor and its buffers for as long as it likes,
and enough of them exhaust the worker. :class:`HeadDeadlineProtocol` starts a timer when a connection opens and
whenever a new request on it begins, stops it when the head is complete, and when it fires answers
``408 Request Timeout`` (``application/problem+json``) and closes the connection. WebSocket upgrades complete
their head like any request and are not affected afterwards. Requests the HTTP parser refuses get a 400 problem
document, like every other error the service gives.

At shutdown, Uvicorn closes every connection that is between requests at once. Under load that is often a
connection whose next request is already in the socket's receive buffer, not yet read by the busy event loop:
closing it resets a request the client sent before the server decided to stop. :meth:`HeadDeadlineProtocol.shutdown`
instead closes such a connection one loop turn later (:data:`SHUTDOWN_READ_GRACE`), after the buffered bytes have
been read; a request whose head has arrived by then is served, with ``connection: close``.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


def _problem_response(status: int, reason: str, slug: str, title: str, detail: str) -> bytes:
    """A complete ``connection: close`` response carrying an RFC 9457 problem.

    For the answers the server gives before any application code runs.
    """
    body = orjson.dumps({"type": f"urn:library-api:problem:{slug}", "title": title, "status": status, "detail": detail})
    return (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/problem+json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    ).encode("ascii") + body


_TIMEOUT_RESPONSE = _problem_response(
    408, "Request Timeout", "request-timeout", "Request timeout", "The request's head did not arrive in time."
)
_MALFORMED_RESPONSE = _problem_response(
    400, "Bad Request", "bad-request", "Bad request", "The request is not valid HTTP/1.1."
)


SHUTDOWN_READ_GRACE = 0.05
"""Seconds between the server's shutdown and closing a connection that is between requests: long enough for the
event loop to poll the socket once and read a request already waiting there, short enough to change nothing
else."""


class HeadDeadlineProtocol(HttpToolsProtocol):
    """``HttpToolsProtocol`` that gives each request ``head_timeout`` seconds to deliver its line and headers."""

    def __init__(self, *args: Any, head_timeout: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.head_timeout = head_timeout
        self._head_timer: asyncio.TimerHandle | None = None
        self._shutting_down = False

    def _arm(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.head_timeout, self._head_overdue)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_overdue(self) -> None:
        self._head_timer = None
        if not self.transport.is_closing():
            self.logger.warning("closing a connection whose request head took over %.1f s", self.head_timeout)
            self.transport.write(_TIMEOUT_RESPONSE)
            self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Start the clock: the first request's head is due within ``head_timeout``."""
        super().connection_made(transport)
        self._arm()

    def on_message_begin(self) -> None:
        """A further request on a kept-alive connection: its head is due within ``head_timeout`` too."""
        super().on_message_begin()
        self._arm()

    def on_headers_complete(self) -> None:
        """The head is complete; the application (and its own limits) take over."""
        self._disarm()
        super().on_headers_complete()
        if self._shutting_down and self.cycle is not None:
            self.cycle.keep_alive = False

    def shutdown(self) -> None:
        """The server is stopping: finish the request in progress, or one already received, then close."""
        self._shutting_down = True
        if self.cycle is None or self.cycle.response_complete:
            self.loop.call_later(SHUTDOWN_READ_GRACE, self._close_between_requests)
        else:
            self.cycle.keep_alive = False

    def _close_between_requests(self) -> None:
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.keep_alive = False  # a request arrived in the meantime; close after its response
        elif not self.transport.is_closing():
            self.transport.close()

    def send_400_response(self, msg: str) -> None:
        """Answer a request the HTTP parser refuses with a 400 problem document instead of plain text.

        Such requests carry a raw non-ASCII byte in the target or a broken header line.
        """
        del msg  # the parser's wording stays in the server's log
        self.transport.write(_MALFORMED_RESPONSE)
        self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        """Nothing more is due from a closed connection."""
        self._disarm()
        super().connection_lost(exc)
