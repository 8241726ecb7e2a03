"""Who is really asking, and under which request id: the first step of the edge middleware.

**Client address.** Behind a reverse proxy the TCP peer is the proxy. ``X-Forwarded-For`` and
``X-Forwarded-Proto`` are believed only when the peer is one of ``TRUSTED_PROXIES``: the list is read from the
right, skipping trusted proxies, and the first address that is not one is the client. From anyone else the
headers are ignored, so a client cannot choose the address that rate limits and allowed networks see. The
result replaces ``scope["client"]`` (and ``scope["scheme"]``), so everything after, on HTTP and WebSocket alike,
sees the real client, whichever server runs the application.

**Client certificate.** nginx verifies client certificates itself and forwards the verified one in
``ssl-client-cert`` (URL-escaped PEM) with ``ssl-client-verify: SUCCESS`` (``deploy/nginx/snippets/proxy.conf``).
From a trusted proxy, that certificate becomes the ASGI TLS extension ``scope["extensions"]["tls"]``, exactly
as if the client had presented it to this server; from anyone else the headers are ignored (nothing else reads
them), so a client cannot claim a certificate it does not hold.

**Request id.** ``X-Request-ID`` is taken from a trusted proxy (when it is 1-128 characters of letters, digits and
``-._:``) or generated, returned on the response, and bound to :data:`request_id_var` for the whole request,
so every log line written for it carries the id (see :mod:`library_api.http.edge`).
"""

from __future__ import annotations

import ipaddress
import random
import re
from urllib.parse import unquote

from starlette.types import Scope

from library_api.http.networks import Networks

REQUEST_ID_HEADER = b"x-request-id"
CLIENT_CERT_HEADER = b"ssl-client-cert"
CLIENT_VERIFY_HEADER = b"ssl-client-verify"
_VALID_REQUEST_ID = re.compile(rb"^[A-Za-z0-9._:-]{1,128}$")


def new_request_id() -> str:
    """A fresh random request id (128 bits, hex).

    The ids correlate log lines and need not be unpredictable, so the fast generator of :mod:`random` serves
    (reseeded in every forked worker by the standard library), not a system call per request.
    """
    return f"{random.getrandbits(128):032x}"


class RequestContext:
    """Establishes who is asking (address, scheme) and the request id, for HTTP and WebSocket scopes."""

    def __init__(self, trusted_proxies: Networks) -> None:
        self.trusted = trusted_proxies

    def enter(self, scope: Scope) -> str:
        """Rewrite ``scope`` from a trusted proxy's forwarding headers and return the request's id."""
        client = scope.get("client")
        request_id: str | None = None
        if self.trusted and client is not None and self.trusted.contains(client[0]):
            request_id = self._apply_forwarded(scope)
        request_id = request_id or new_request_id()
        scope["request_id"] = request_id
        return request_id

    def _apply_forwarded(self, scope: Scope) -> str | None:
        forwarded_for: bytes | None = None
        forwarded_proto: bytes | None = None
        request_id: str | None = None
        client_cert: bytes | None = None
        client_verify: bytes | None = None
        for name, value in scope["headers"]:
            if name == b"x-forwarded-for":
                forwarded_for = value if forwarded_for is None else forwarded_for + b"," + value
            elif name == b"x-forwarded-proto":
                forwarded_proto = value
            elif name == REQUEST_ID_HEADER and _VALID_REQUEST_ID.match(value):
                request_id = value.decode()
            elif name == CLIENT_CERT_HEADER:
                client_cert = value
            elif name == CLIENT_VERIFY_HEADER:
                client_verify = value
        if client_cert and client_verify == b"SUCCESS":
            _forward_certificate(scope, unquote(client_cert.decode("latin-1")))
        if forwarded_for is not None:
            client = self._client_from(forwarded_for.decode("latin-1"))
            if client is not None:
                scope["client"] = (client, 0)
        if forwarded_proto is not None:
            proto = forwarded_proto.decode("latin-1").split(",")[-1].strip().lower()
            if proto in {"http", "https"}:
                scope["scheme"] = proto if scope["type"] == "http" else {"http": "ws", "https": "wss"}[proto]
        return request_id

    def _client_from(self, forwarded_for: str) -> str | None:
        hops = [hop.strip() for hop in forwarded_for.split(",") if hop.strip()]
        for hop in reversed(hops):
            if not self.trusted.contains(hop):
                return hop if _is_address(hop) else None
        return hops[0] if hops else None


def _forward_certificate(scope: Scope, pem: str) -> None:
    """Present a proxy-verified client certificate to the application as the ASGI TLS extension."""
    if "-----BEGIN CERTIFICATE-----" not in pem:
        return
    extensions = dict(scope.get("extensions") or {})
    extensions["tls"] = {
        "server_cert": None,
        "client_cert_chain": [pem],
        "client_cert_name": None,
        "client_cert_error": None,
        "tls_version": None,
        "cipher_suite": None,
    }
    scope["extensions"] = extensions


def _is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True
