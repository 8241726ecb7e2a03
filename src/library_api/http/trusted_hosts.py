"""Refuse requests whose ``Host`` is not one of ``ALLOWED_HOSTS`` (DNS rebinding, host-header injection).

Entries are exact host names or ``*.example.org`` (any subdomain); ``*`` allows every host. The port is
ignored. An HTTP request with another host gets a 400 problem; a WebSocket handshake is closed with 1008.
Probes and ``/metrics`` are exempt: orchestrators and scrapers address a pod by its IP address.
"""

from __future__ import annotations

from collections.abc import Iterable

from starlette.types import ASGIApp, Receive, Scope, Send

from library_api.problems import problem_response


def _host_of(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == b"host":
            host: str = value.decode("latin-1").strip().lower()
            if host.startswith("["):
                return host.split("]", 1)[0] + "]"
            return host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    return ""


class TrustedHostMiddleware:
    """Checks the ``Host`` header of HTTP requests and WebSocket handshakes against the allowed hosts."""

    def __init__(self, app: ASGIApp, *, allowed_hosts: Iterable[str], exempt_paths: Iterable[str] = ()) -> None:
        self.app = app
        hosts = [host.lower() for host in allowed_hosts]
        self.allow_any = "*" in hosts
        self.exact = frozenset(host for host in hosts if not host.startswith("*."))
        self.suffixes = tuple(host[1:] for host in hosts if host.startswith("*."))
        self.exempt_paths = frozenset(exempt_paths)

    def allowed(self, host: str) -> bool:
        """Whether ``host`` (without port) is one the service answers to."""
        return host in self.exact or (bool(host) and host.endswith(self.suffixes))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass allowed hosts on; answer the others here."""
        if (
            self.allow_any
            or scope["type"] not in ("http", "websocket")
            or scope["path"] in self.exempt_paths
            or self.allowed(_host_of(scope))
        ):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008, "reason": "host not allowed"})
            return
        response = problem_response(
            400,
            "invalid-host",
            "Invalid host",
            "The Host header names a host this service does not answer to.",
            instance=scope["path"],
        )
        await response(scope, receive, send)
