"""Conditional GET: ``ETag`` on catalogue answers and ``304 Not Modified`` for a matching ``If-None-Match``.

The tags are weak (``W/"..."``) because the same answer may travel gzip-compressed or not; ``If-None-Match``
uses the weak comparison (RFC 9110 section 13.1.2), so ``*``, a list, and weak or strong forms of the tag all
match. ``Cache-Control: no-cache`` lets clients and proxies keep the answer but makes them revalidate it each
time, which is right for availability that changes with every booking.
"""

from __future__ import annotations

from starlette.responses import Response

CACHE_CONTROL = "no-cache"


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """Whether an ``If-None-Match`` value matches ``etag`` under the weak comparison."""
    if not if_none_match:
        return False
    wanted = etag.removeprefix("W/")
    for raw in if_none_match.split(","):
        candidate = raw.strip()
        if candidate == "*" or candidate.removeprefix("W/") == wanted:
            return True
    return False


def conditional_response(body: bytes, etag: str, if_none_match: str | None) -> Response:
    """A 200 JSON response with ``ETag``, or a bodiless 304 when the client already holds this answer."""
    headers = {"ETag": etag, "Cache-Control": CACHE_CONTROL}
    if etag_matches(if_none_match, etag):
        return Response(status_code=304, headers=headers)
    return Response(body, media_type="application/json", headers=headers)
