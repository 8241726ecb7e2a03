"""Which web pages may open the live event stream: a check of a WebSocket handshake's ``Origin`` header.

Browsers do not apply the same-origin policy to WebSockets: any page may open ``wss://`` to the service, and the
browser sends along what it holds for that host, a client certificate in particular (mTLS). Without a check, a
page on another site could listen to the events of whoever visits it (cross-site WebSocket hijacking). A browser
always says which page opens the connection (``Origin``), and a page cannot change it, so the handshake is
refused when that header names a foreign origin:

* no ``Origin`` header: not a browser (the Python client, services); their credentials are never ambient;
* the service's own origin: the host name of the ``Host`` header the request was sent to, and its port when the
  header names one. The scheme does not decide (behind a TLS-terminating proxy the request's own scheme is not
  the browser's), nor does the port when ``Host`` leaves it out: nginx forwards ``Host`` without the port
  (``$host``), so the page's port is not known there;
* an origin listed in ``WS_ALLOWED_ORIGINS`` (another front end of the same deployment).

Anything else, ``Origin: null`` (sandboxed frames, files) included, is refused before any credential is read.
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlsplit

from starlette.types import Scope

from library_api.config import canonical_origin

REFUSAL = "origin not allowed: this page's origin may not open the live event stream"


def _header(scope: Scope, wanted: bytes) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == wanted:
            return bytes(value).decode("latin-1")
    return None


def foreign_origin(scope: Scope, allowed: Iterable[str]) -> str | None:
    """Why the handshake in ``scope`` comes from a page that may not connect, or ``None`` when it may.

    ``allowed`` holds canonical origins (``Settings.ws_allowed_origins``).
    """
    origin = _header(scope, b"origin")
    if origin is None:
        return None
    canonical = canonical_origin(origin)
    if canonical is None:
        return REFUSAL
    if _same_origin(canonical, _header(scope, b"host")):
        return None
    return None if canonical in allowed else REFUSAL


def _same_origin(origin: str, host: str | None) -> bool:
    """Whether canonical ``origin`` is the service's own by its ``Host`` header (the port only when it names one)."""
    scheme = origin.partition("://")[0]
    if not host or canonical_origin(f"{scheme}://{host}") is None:
        return False
    served, page = urlsplit(f"{scheme}://{host}"), urlsplit(origin)
    if served.hostname != page.hostname:
        return False
    if served.port is None:  # no port in Host (or dropped by a proxy): the host name decides
        return True
    return served.port == (page.port or (443 if scheme == "https" else 80))
