"""Security headers on every HTTP response, computed once at start-up (added by :mod:`library_api.http.edge`).

``X-Content-Type-Options: nosniff``, ``X-Frame-Options: DENY``, ``Referrer-Policy``, ``X-XSS-Protection: 0``
(the old auditor caused more harm than it prevented; CSP is the protection) and the ``Content-Security-Policy``
from ``CONTENT_SECURITY_POLICY``. ``Strict-Transport-Security`` is sent only on
responses to HTTPS requests (``scope["scheme"]``, which :mod:`library_api.http.request_origin` sets from a
trusted proxy's ``X-Forwarded-Proto``): over plain HTTP it would be ignored by browsers and is meaningless.
The interactive API documentation loads its script and styles from a CDN, so its pages get a policy that
allows exactly that. A header the application already set on a response is left as it is.
"""

from __future__ import annotations

from collections.abc import Iterable

from starlette.types import Scope

DOCS_CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net; "
    "style-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net; img-src 'self' data: https://fastapi.tiangolo.com; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)
"""The policy of the Swagger UI pages (inline bootstrap script, assets from jsDelivr)."""

Header = tuple[bytes, bytes]


def _encode(pairs: Iterable[tuple[str, str]]) -> tuple[Header, ...]:
    return tuple((name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in pairs)


class SecurityHeaders:
    """The headers every HTTP response gets, encoded once; which of them apply depends on the request."""

    def __init__(self, *, content_security_policy: str, hsts_max_age: int, docs_paths: Iterable[str] = ()) -> None:
        common = [
            ("X-Content-Type-Options", "nosniff"),
            ("X-Frame-Options", "DENY"),
            ("Referrer-Policy", "strict-origin-when-cross-origin"),
            ("X-XSS-Protection", "0"),
        ]
        self.headers = _encode([*common, ("Content-Security-Policy", content_security_policy)])
        self.docs_headers = _encode([*common, ("Content-Security-Policy", DOCS_CONTENT_SECURITY_POLICY)])
        self.hsts: tuple[Header, ...] = (
            _encode([("Strict-Transport-Security", f"max-age={hsts_max_age}; includeSubDomains")])
            if hsts_max_age > 0
            else ()
        )
        self.docs_paths = frozenset(docs_paths)
        self.names = frozenset(name for name, _ in self.headers + self.docs_headers + self.hsts)

    def for_scope(self, scope: Scope) -> tuple[Header, ...]:
        """The headers for the response to ``scope`` (HSTS only over HTTPS, the documentation's own CSP)."""
        headers = self.docs_headers if scope["path"] in self.docs_paths else self.headers
        return headers + self.hsts if scope.get("scheme") == "https" else headers

    def merge(self, response_headers: Iterable[Header], extra: tuple[Header, ...]) -> list[Header]:
        """``response_headers`` plus ``extra``, keeping any of ours that the application already set."""
        present = {name.lower() for name, _ in response_headers if name.lower() in self.names}
        if not present:
            return [*response_headers, *extra]
        return [*response_headers, *(header for header in extra if header[0] not in present)]
