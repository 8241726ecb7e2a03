"""Who is really asking, and under which request id: the first step of the edge middleware.

**Client address.** Behind a reverse proxy the TCP peer is the proxy. ``X-Forwarded-For`` and
``X-Forwarded-Proto`` are believed only when the peer is one of ``TRUSTED_PROXIES``: the list is read from the
right, skipping trusted proxies, and the first address that is not one is the client. From anyone else the
headers are ignored, so a client cannot choose the address that rate limits and allowed networks see. The
result replaces ``scope["client"]`` (and ``scope["scheme"]``), so everything after, on HTTP and WebSocket alike,
sees the real client, whichever server runs the application.

**Client certificate.** A TLS-terminating proxy (nginx, ingress-nginx) that verified a client certificate
forwards it in ``ssl-client-cert`` (URL-escaped PEM) with ``ssl-client-verify: SUCCESS``. Those headers are read
only from peers in ``FORWARDED_CERT_PROXIES`` (a list of its own, empty by default: believing a certificate is a
bigger grant than believing an address), and from them a forwarded certificate still proves nothing by itself:
it is verified here in full against ``TLS_CA_FILE`` and ``TLS_CRL_FILE`` by the injected ``verify`` callable
(:class:`library_api.security.forwarded_certificates.ForwardedCertificateVerifier`). A certificate that
verifies becomes the ASGI TLS extension ``scope["extensions"]["tls"]``, exactly as if the client had presented
it to this server. A claim that fails (a bad certificate, ``SUCCESS`` without a certificate, a certificate the
proxy did not call verified, ``FAILED:...``) becomes the extension with no certificate and
``client_cert_error`` set: HTTP requests are refused by the edge with 401, WebSocket handshakes by the
authenticator with 4401. ``ssl-client-verify: NONE`` without a certificate is a client that sent none. From any
other peer both headers are ignored, so a client cannot claim a certificate it does not hold.

**Request id.** ``X-Request-ID`` is taken from a trusted proxy (when it is 1-128 characters of letters, digits and
``-._:``) or generated, returned on the response, and bound to :data:`request_id_var` for the whole request,
so every log line written for it carries the id (see :mod:`library_api.http.edge`).
"""

from __future__ import annotations

import ipaddress
import random
import re
from collections.abc import Callable
from urllib.parse import unquote

from starlette.types import Scope

from library_api.http.networks import Networks

REQUEST_ID_HEADER = b"x-request-id"
CLIENT_CERT_HEADER = b"ssl-client-cert"
CLIENT_VERIFY_HEADER = b"ssl-client-verify"
_VALID_REQUEST_ID = re.compile(rb"^[A-Za-z0-9._:-]{1,128}$")

CertificateCheck = Callable[[str], str | None]
"""Why a forwarded certificate (PEM) must be refused, or ``None`` when it verifies."""

UNVERIFIED_CLAIM = "The proxy did not report the client certificate as verified."
MISSING_CERTIFICATE = "The proxy reported a verified client certificate but forwarded none."


def new_request_id() -> str:
    """A fresh random request id (128 bits, hex).

    The ids correlate log lines and need not be unpredictable, so the fast generator of :mod:`random` serves
    (reseeded in every forked worker by the standard library), not a system call per request.
    """
    return f"{random.getrandbits(128):032x}"


class RequestOrigin:
    """Establishes who is asking (address, scheme, certificate) and the request id, for HTTP and WebSocket."""

    def __init__(
        self,
        trusted_proxies: Networks,
        certificate_proxies: Networks | None = None,
        verify_certificate: CertificateCheck | None = None,
    ) -> None:
        self.trusted = trusted_proxies
        self.certificate_proxies = certificate_proxies or Networks([])
        if self.certificate_proxies and verify_certificate is None:
            raise ValueError("forwarded certificates need a verifier (TLS_CA_FILE)")
        self.verify_certificate = verify_certificate

    def enter(self, scope: Scope) -> str:
        """Rewrite ``scope`` from the peer's forwarding headers, as far as it is trusted; return the request id."""
        client = scope.get("client")
        request_id: str | None = None
        if client is not None:
            if self.certificate_proxies and self.certificate_proxies.contains(client[0]):
                self._apply_certificate(scope)
            if self.trusted and self.trusted.contains(client[0]):
                request_id = self._apply_forwarded(scope)
        request_id = request_id or new_request_id()
        scope["request_id"] = request_id
        return request_id

    def _apply_forwarded(self, scope: Scope) -> str | None:
        forwarded_for: bytes | None = None
        forwarded_proto: bytes | None = None
        request_id: str | None = None
        for name, value in scope["headers"]:
            if name == b"x-forwarded-for":
                forwarded_for = value if forwarded_for is None else forwarded_for + b"," + value
            elif name == b"x-forwarded-proto":
                forwarded_proto = value
            elif name == REQUEST_ID_HEADER and _VALID_REQUEST_ID.match(value):
                request_id = value.decode()
        if forwarded_for is not None:
            client = self._client_from(forwarded_for.decode("latin-1"))
            if client is not None:
                scope["client"] = (client, 0)
        if forwarded_proto is not None:
            proto = forwarded_proto.decode("latin-1").split(",")[-1].strip().lower()
            if proto in {"http", "https"}:
                scope["scheme"] = proto if scope["type"] == "http" else {"http": "ws", "https": "wss"}[proto]
        return request_id

    def _apply_certificate(self, scope: Scope) -> None:
        """Verify the certificate a certificate proxy forwarded; record it, or why it was refused, in the scope."""
        assert self.verify_certificate is not None
        certificate: bytes | None = None
        verify: bytes | None = None
        for name, value in scope["headers"]:
            if name == CLIENT_CERT_HEADER:
                certificate = value.strip() or None
            elif name == CLIENT_VERIFY_HEADER:
                verify = value.strip()
        if certificate is None and verify in (None, b"", b"NONE"):
            return
        if verify != b"SUCCESS":
            _forward_certificate(scope, None, UNVERIFIED_CLAIM)
        elif certificate is None:
            _forward_certificate(scope, None, MISSING_CERTIFICATE)
        else:
            pem = unquote(certificate.decode("latin-1"))
            problem = self.verify_certificate(pem)
            _forward_certificate(scope, None if problem else pem, problem)

    def _client_from(self, forwarded_for: str) -> str | None:
        hops = [hop.strip() for hop in forwarded_for.split(",") if hop.strip()]
        for hop in reversed(hops):
            if not self.trusted.contains(hop):
                return hop if _is_address(hop) else None
        return hops[0] if hops else None


def forwarded_certificate_error(scope: Scope) -> str | None:
    """Why the certificate a proxy forwarded for this request was refused, if it was."""
    tls = (scope.get("extensions") or {}).get("tls")
    if not tls or tls.get("client_cert_chain"):
        return None
    error = tls.get("client_cert_error")
    return str(error) if error else None


def _forward_certificate(scope: Scope, pem: str | None, error: str | None) -> None:
    """Present a verified forwarded certificate, or the reason for refusing one, as the ASGI TLS extension."""
    extensions = dict(scope.get("extensions") or {})
    extensions["tls"] = {
        "server_cert": None,
        "client_cert_chain": [pem] if pem is not None else [],
        "client_cert_name": None,
        "client_cert_error": error,
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


def client_address(scope: Scope) -> str:
    """The client's address as this service believes it (``scope["client"]``, set from trusted proxies)."""
    client = scope.get("client")
    return str(client[0]) if client else "unknown"
