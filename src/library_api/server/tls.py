"""What every server adapter shares: the TLS files from settings, the context factory and the per-connection scope.

:class:`ServerTLS` is built from settings once and is picklable (it holds paths, not an ``SSLContext``), so a
server that spawns its workers can hand it over and each worker builds its own context with
:func:`library_api.security.tls.build_server_context`. :class:`ConnectionTLS` wraps the application for one
connection and adds the ASGI TLS extension, computed once when the connection is made, to every scope of it.
:meth:`ServerTLS.failures` is this process's record of refused handshakes (:mod:`library_api.server.handshakes`),
counted in the application's metrics.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from library_api.config import Settings
from library_api.security.tls import TLSFiles, build_server_context, cipher_numbers, tls_extension
from library_api.server.handshakes import HandshakeFailures


@dataclass(slots=True)
class ServerTLS:
    """The TLS side of a server: its files and, once built in this process, its context."""

    files: TLSFiles
    alpn_protocols: tuple[str, ...] = ("http/1.1",)
    _context: ssl.SSLContext | None = field(default=None, repr=False)
    _ciphers: dict[str, int] = field(default_factory=dict, repr=False)
    _failures: HandshakeFailures | None = field(default=None, repr=False)

    @classmethod
    def from_settings(cls, settings: Settings, alpn_protocols: tuple[str, ...] = ("http/1.1",)) -> ServerTLS | None:
        """The TLS configuration the security mode asks for, or ``None`` for plain HTTP."""
        decision = settings.security
        if not decision.tls or settings.tls_cert_file is None or settings.tls_key_file is None:
            return None
        files = TLSFiles(
            cert=settings.tls_cert_file,
            key=settings.tls_key_file,
            ca=settings.tls_ca_file if decision.client_certificates != "none" else None,
            crl=settings.tls_crl_file if decision.client_certificates != "none" else None,
            require_client_certificate=decision.client_certificates == "required",
        )
        return cls(files, alpn_protocols)

    def __getstate__(self) -> dict[str, Any]:
        """Only the files cross a process boundary; each process builds its own context."""
        return {"files": self.files, "alpn_protocols": self.alpn_protocols}

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Rebuild from the files (see :meth:`__getstate__`)."""
        self.files = state["files"]
        self.alpn_protocols = state["alpn_protocols"]
        self._context = None
        self._ciphers = {}
        self._failures = None

    def context(self) -> ssl.SSLContext:
        """This process's SSL context, built on first use."""
        if self._context is None:
            self._context = build_server_context(self.files, self.alpn_protocols)
            self._ciphers = cipher_numbers(self._context)
        return self._context

    def failures(self, app: Any) -> HandshakeFailures:
        """This process's record of refused handshakes, counted in the metrics of ``app`` (found through wrappers)."""
        if self._failures is None:
            context = find_context(app)
            metrics = getattr(context, "metrics", None)
            self._failures = HandshakeFailures(getattr(metrics, "tls_handshake_failures", None))
        return self._failures

    def extension(self, ssl_object: ssl.SSLObject | ssl.SSLSocket) -> dict[str, Any]:
        """The ASGI TLS extension of one established connection."""
        if not self._ciphers:
            self._ciphers = cipher_numbers(ssl_object.context)
        return tls_extension(ssl_object, self._ciphers)


class ConnectionTLS:
    """The application as one TLS connection sees it: every scope carries that connection's TLS extension."""

    __slots__ = ("app", "tls")

    def __init__(self, app: ASGIApp, tls: dict[str, Any]) -> None:
        self.app = app
        self.tls = tls

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Add the extension (without touching a dictionary the server may share) and call the application."""
        scope["extensions"] = {**(scope.get("extensions") or {}), "tls": self.tls}
        await self.app(scope, receive, send)


def find_context(app: Any) -> Any:
    """The application's context (its services), looking through the wrappers a server puts around it."""
    seen = 0
    while app is not None and seen < 16:
        state = getattr(app, "state", None)
        context = getattr(state, "context", None)
        if context is not None:
            return context
        app = getattr(app, "app", None)
        seen += 1
    return None


def find_shutdown(app: Any) -> Any:
    """The application's shutdown coordinator, looking through the wrappers a server puts around it."""
    context = find_context(app)
    return None if context is None else context.shutdown
