"""TLS handshakes run where their failures can be seen: each refusal logged with OpenSSL's reason, and counted.

When an event loop serves TLS itself (``create_server(ssl=...)``), a handshake that fails never reaches the
application nor any log: asyncio and uvloop report it only in debug mode, and the client just sees its
connection reset. An operator then cannot tell why a certificate is refused (expired, from another CA, revoked,
lacking the Authority Key Identifier that OpenSSL's strict checks require, no certificate at all, plain HTTP
sent to the TLS port...). So every server adapter accepts plain TCP connections and runs the handshake itself
with the event loop's public ``start_tls`` (:class:`HandshakeGate` for Uvicorn and Gunicorn,
``StreamWriter.start_tls`` for Hypercorn); a failure raises there, with the peer address at hand, and
:class:`HandshakeFailures`

* counts it in ``tls_handshake_failures_total{reason}``: the reason is OpenSSL's certificate verification
  message (``certificate has expired``, ``unable to get local issuer certificate``, ``Missing Authority Key
  Identifier``...) or its error reason (``peer did not return a certificate``, ``http request``...), both
  finite sets, so the label cannot grow without bound;
* logs a TLS error as a warning naming the peer and OpenSSL's full error, at most :data:`LOG_LIMIT` lines per
  :data:`LOG_WINDOW` seconds per process (a scanner must not flood the log); the next line logged says how
  many refusals were left out meanwhile. A client that merely closed or stalled before finishing its
  handshake (TCP probes do) is counted but logged only at debug level.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Callable
from typing import Any, cast

from prometheus_client import Counter

logger = logging.getLogger("library_api.tls")

LOG_LIMIT = 10
"""Handshake refusals logged per window and process; the rest are counted and summed up in the next line."""
LOG_WINDOW = 60.0
"""Seconds of a logging window."""
HANDSHAKE_TIMEOUT = 30.0
"""Seconds a client has to complete its TLS handshake (asyncio's default is 60)."""


def refusal_reason(exc: BaseException) -> str:
    """The metric label of a failed handshake: OpenSSL's verification message or error reason, in lower case."""
    if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_message:
        return str(exc.verify_message)
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason).lower().replace("_", " ")
    if isinstance(exc, ssl.SSLError):
        return "tls error"
    if isinstance(exc, TimeoutError | ConnectionAbortedError):
        return "handshake timeout"
    return "connection lost during handshake"


def peer_text(peer: Any) -> str:
    """A peer address as ``host:port`` (``[host]:port`` for IPv6), or ``unknown``."""
    if isinstance(peer, tuple) and len(peer) >= 2:
        host, port = peer[0], peer[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return "unknown" if not peer else str(peer)


class HandshakeFailures:
    """Counts and logs refused TLS handshakes of one process (see the module documentation)."""

    def __init__(
        self,
        counter: Counter | None,
        *,
        limit: int = LOG_LIMIT,
        window: float = LOG_WINDOW,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.counter = counter
        self.limit = limit
        self.window = window
        self.clock = clock
        self._window_start = -window
        self._logged = 0
        self.suppressed = 0
        """Refusals not logged since the last line that was."""

    def refused(self, exc: BaseException, peer: Any) -> None:
        """Record one refused handshake from ``peer``."""
        reason = refusal_reason(exc)
        if self.counter is not None:
            self.counter.labels(reason).inc()
        if not isinstance(exc, ssl.SSLError):
            # A client that closes or stalls before its handshake (a TCP probe, a scanner) is counted, not logged.
            logger.debug("TLS handshake from %s did not finish: %s", peer_text(peer), reason)
            return
        now = self.clock()
        if now - self._window_start >= self.window:
            self._window_start, self._logged = now, 0
        if self._logged >= self.limit:
            self.suppressed += 1
            return
        self._logged += 1
        left_out = ""
        if self.suppressed:
            left_out = f"; {self.suppressed} more refused handshake(s) were not logged"
            self.suppressed = 0
        logger.warning("TLS handshake from %s refused: %s (%s)%s", peer_text(peer), reason, exc, left_out)


def feed(protocol: Any, chunks: list[bytes]) -> None:
    """Give ``chunks`` to a protocol as if the transport had read them (buffered or plain protocol interface)."""
    for data in chunks:
        view = memoryview(data)
        while view and hasattr(protocol, "get_buffer"):
            buffer = protocol.get_buffer(len(view))
            size = min(len(buffer), len(view))
            buffer[:size] = view[:size]
            protocol.buffer_updated(size)
            view = view[size:]
        if view:
            protocol.data_received(bytes(view))


class HandshakeGate(asyncio.Protocol):
    """Runs the TLS handshake of one accepted TCP connection, then hands the TLS transport to the server's protocol.

    Until the handshake is complete the gate keeps the raw transport's reading paused (``start_tls`` resumes it);
    whatever the TLS layer delivers before the server's protocol has been told of the connection is kept and
    passed on right after. Afterwards the gate only forwards; a protocol that replaces itself on the transport
    (a WebSocket upgrade) leaves the gate out of the path.
    """

    def __init__(
        self,
        inner: asyncio.Protocol,
        context: ssl.SSLContext,
        failures: HandshakeFailures,
        timeout: float = HANDSHAKE_TIMEOUT,
    ) -> None:
        self.inner = inner
        self.context = context
        self.failures = failures
        self.timeout = timeout
        self.transport: asyncio.BaseTransport | None = None
        self._pending: list[bytes] = []
        self._eof = False
        self._lost: tuple[Exception | None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._started = False
        self._raw: asyncio.Transport | None = None
        self._early: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Pause the raw connection and start the handshake."""
        raw = self._raw = cast("asyncio.Transport", transport)  # uvloop's transports do not subclass asyncio's
        raw.pause_reading()
        self._task = asyncio.get_running_loop().create_task(self._handshake(raw))

    async def _handshake(self, raw: asyncio.Transport) -> None:
        loop = asyncio.get_running_loop()
        peer = raw.get_extra_info("peername")
        self._started = True
        starting = loop.create_task(
            loop.start_tls(raw, self, self.context, server_side=True, ssl_handshake_timeout=self.timeout)
        )
        await asyncio.sleep(0)  # ``start_tls`` has now put its TLS protocol on the transport, reading paused
        if self._early:
            # Bytes of the handshake read before it began: the TLS protocol gets them right after its
            # ``connection_made`` (queued by ``start_tls`` before this), before the transport reads again.
            loop.call_soon(feed, raw.get_protocol(), self._early)
        try:
            tls = await starting
        except (TimeoutError, OSError) as exc:
            self.failures.refused(exc, peer)
            raw.abort()
            return
        if tls is None:  # pragma: no cover - start_tls returns None only for a transport closed meanwhile
            return
        self.transport = tls
        self.inner.connection_made(tls)
        pending, self._pending = self._pending, []
        for data in pending:
            self.inner.data_received(data)
        if self._eof:
            self.inner.eof_received()
        if self._lost is not None:
            self.inner.connection_lost(self._lost[0])

    def data_received(self, data: bytes) -> None:
        """Application data: to the server's protocol, or kept until it has been told of the connection.

        uvloop starts reading after ``connection_made`` whatever the protocol asked, so the first bytes of the
        handshake may reach the gate itself, while it is still the raw transport's protocol: they are kept for
        the TLS protocol and reading is paused until ``start_tls`` resumes it.
        """
        if self._raw is not None and self._raw.get_protocol() is self:
            self._early.append(data)
            self._raw.pause_reading()
        elif self.transport is None:
            self._pending.append(data)
        else:
            self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        """The client will send nothing more."""
        if self.transport is None:
            self._eof = True
            return None
        return self.inner.eof_received()

    def pause_writing(self) -> None:
        """Flow control, for the server's protocol."""
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        """Flow control, for the server's protocol."""
        self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        """The connection ended: tell the server's protocol if it knew of it."""
        if self.transport is not None:
            self.inner.connection_lost(exc)
        elif not self._started and self._task is not None:
            self._task.cancel()  # gone before the handshake began: nothing to report
        else:
            self._lost = (exc,)
