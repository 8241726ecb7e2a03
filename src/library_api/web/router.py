"""Serves the live console page and its assets.

The page, its script and its style sheet are files of this package, so the page runs under a strict Content
Security Policy (``script-src 'self'``, no inline code), which the page's response sets itself. The assets are
served by name from a fixed list, never by a path taken from the request.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

from library_api.dependencies.permissions import public
from library_api.problems import NotFound

STATIC_DIR = Path(__file__).parent / "static"

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
"""What the console needs and nothing more: its own script and styles, and calls back to this origin."""

_ASSETS = {"console.js": "text/javascript; charset=utf-8", "console.css": "text/css; charset=utf-8"}

router = APIRouter(include_in_schema=False)


@router.get("/", dependencies=[public()])
async def console_page() -> FileResponse:
    """The live console: log in, connect, subscribe, watch events, and broadcast (librarians)."""
    return FileResponse(
        STATIC_DIR / "index.html",
        media_type="text/html; charset=utf-8",
        headers={"Content-Security-Policy": CONTENT_SECURITY_POLICY, "Cache-Control": "no-cache"},
    )


@router.get("/console/{name}", dependencies=[public()])
async def console_asset(name: str) -> FileResponse:
    """The console's script or style sheet (only the names in the fixed list; anything else is a 404)."""
    media_type = _ASSETS.get(name)
    if media_type is None:
        raise NotFound("No such console asset.")
    return FileResponse(STATIC_DIR / name, media_type=media_type, headers={"Cache-Control": "no-cache"})
