"""The middleware stack, in one deliberate order (outermost first).

1. **Edge** (:mod:`library_api.http.edge`), three steps in one layer:

   a. *request origin*: the real client address and scheme (from trusted proxies only), a forwarded client
      certificate (from certificate proxies only, verified in full), and the request id. First, so that
      everything after it, including every log line and the access line, sees them;
   b. *security headers*: on every response, even a 400 from trusted hosts, a 429, a 413 or the 500 of an
      unhandled error;
   c. *telemetry*: access line and HTTP metrics; it resolves the route template for itself and the rate
      limiter, times everything inside it (so refusals are counted and timed too) and turns an escaped
      exception into a 500 problem.
2. **Trusted hosts**: a request for a foreign host is refused before any work is done for it.
3. **CORS** (only when ``BACKEND_CORS_ORIGINS`` is set): answers preflights itself, before they are rate limited or
   size checked, and adds the CORS headers to every answer inside, 429 and 413 included, so browsers can read them.
4. **Body limit**: a declared oversize body is refused before the rate limiter spends a count on it.
5. **Rate limit**: after the cheap refusals, before any route work; it authenticates the caller once.
6. **GZip**: innermost, so it compresses the answer of the route only (never the tiny refusals) and the layers
   outside see the final headers.

Every layer is pure ASGI (no ``BaseHTTPMiddleware``), passes WebSocket and lifespan scopes through untouched
except where stated (trusted hosts closes foreign-host WebSockets; the edge sets their client address and id),
and costs a few microseconds per request.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Protocol

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware
from starlette.types import Receive, Scope, Send

from library_api.config import Settings
from library_api.http.body_limit import BodyLimitMiddleware, BodyLimitRule
from library_api.http.edge import EdgeMiddleware
from library_api.http.gzip import GZipMiddleware
from library_api.http.networks import Networks
from library_api.http.rate_limit_middleware import RateLimitMiddleware
from library_api.http.request_origin import CertificateCheck, RequestOrigin
from library_api.http.routes import RouteTable
from library_api.http.security_headers import SecurityHeaders
from library_api.http.telemetry import Telemetry
from library_api.http.trusted_hosts import TrustedHostMiddleware
from library_api.observability.health import PROBE_PATHS
from library_api.observability.metrics import Metrics
from library_api.resilience.rate_limits import RateLimiter, RateLimitPolicies
from library_api.security.authentication import Authenticator
from library_api.security.forwarded_certificates import ForwardedCertificateVerifier


class CrossOriginMiddleware(CORSMiddleware):
    """Starlette's CORS handling, entered only by requests that carry an ``Origin`` (the only ones it changes)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Skip the header parsing for same-origin and non-browser requests."""
        if scope["type"] == "http" and any(name == b"origin" for name, _ in scope["headers"]):
            await super().__call__(scope, receive, send)
            return
        await self.app(scope, receive, send)


class MiddlewareParts(Protocol):
    """What the stack is built from: the application's settings and the shared parts its middleware use.

    The application's container (:class:`library_api.dependencies.context.AppContext`) provides them; the
    middleware names only what it needs, so it stays below the domain it serves.
    """

    @property
    def settings(self) -> Settings:
        """The validated settings."""

    @property
    def rate_limiter(self) -> RateLimiter:
        """The windows every limited request counts in."""

    @property
    def rate_limit_policies(self) -> RateLimitPolicies:
        """The policy of each route."""

    @property
    def authenticator(self) -> Authenticator:
        """Resolves the caller once, for the rate limit and the route."""

    @property
    def metrics(self) -> Metrics:
        """The application's metrics."""


MULTIPART_ALLOWANCE = 64 * 1024
"""Room for the multipart envelope around a cover image of ``MAX_UPLOAD_SIZE`` bytes."""

EXPOSED_HEADERS = ["X-Request-ID", "ETag", "RateLimit", "RateLimit-Policy", "Retry-After"]


def forwarded_certificate_check(
    ca_file: Path | None, crl_file: Path | None, proxies: list[str]
) -> CertificateCheck | None:
    """The verifier of forwarded client certificates, when certificate proxies are configured.

    Settings validation refuses ``FORWARDED_CERT_PROXIES`` without ``TLS_CA_FILE``; the error here is for an
    application built from unvalidated settings.
    """
    if not proxies:
        return None
    if ca_file is None:
        raise ValueError("FORWARDED_CERT_PROXIES needs TLS_CA_FILE")
    return ForwardedCertificateVerifier(ca_file, crl_file).problem


def install_middleware(app: FastAPI, context: MiddlewareParts) -> None:
    """Add the stack to ``app`` in the documented order (Starlette applies the last added outermost)."""
    settings = context.settings
    routes = RouteTable(app.routes)
    quiet_paths = (*PROBE_PATHS, "/metrics")
    docs = [path for path in (app.docs_url, f"{app.docs_url}/oauth2-redirect" if app.docs_url else None) if path]

    app.add_middleware(GZipMiddleware, minimum_size=settings.gzip_minimum_size)
    if settings.effective_rate_limit_enabled:
        app.add_middleware(
            RateLimitMiddleware,
            limiter=context.rate_limiter,
            policies=context.rate_limit_policies,
            authenticator=context.authenticator,
            routes=routes,
            metrics=context.metrics if settings.metrics_enabled else None,
            exempt_paths=quiet_paths,
        )
    cover_path = re.compile(re.escape(settings.api_v1_str) + r"/books/[^/]+/cover")
    app.add_middleware(
        BodyLimitMiddleware,
        default_limit=settings.max_request_body_size,
        rules=[BodyLimitRule("PUT", cover_path, settings.max_upload_size + MULTIPART_ALLOWANCE)],
    )
    if settings.backend_cors_origins:
        app.add_middleware(
            CrossOriginMiddleware,
            allow_origins=settings.backend_cors_origins,
            allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "If-None-Match", "X-Request-ID", "X-API-Key"],
            expose_headers=EXPOSED_HEADERS,
            max_age=600,
        )
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=settings.allowed_hosts, exempt_paths=quiet_paths)
    app.add_middleware(
        EdgeMiddleware,
        origin=RequestOrigin(
            Networks(settings.trusted_proxies),
            Networks(settings.forwarded_cert_proxies),
            forwarded_certificate_check(settings.tls_ca_file, settings.tls_crl_file, settings.forwarded_cert_proxies),
        ),
        headers=SecurityHeaders(
            content_security_policy=settings.content_security_policy,
            hsts_max_age=settings.hsts_max_age,
            docs_paths=docs,
        ),
        telemetry=Telemetry(
            metrics=context.metrics if settings.metrics_enabled else None,
            routes=routes,
            access_log=settings.access_log,
            quiet_paths=quiet_paths,
        ),
    )
