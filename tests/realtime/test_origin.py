"""A page on another site cannot open the live event stream with the credentials its visitor's browser holds.

Real Uvicorn on loopback, real WebSocket clients sending the ``Origin`` header a browser would. The credential is
a valid one in every case, as a browser would present it on its own (a client certificate, in mTLS): only the
page's origin decides.
"""

from __future__ import annotations

import asyncio

import pytest
from pydantic import ValidationError
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from library_api.config import ConfigError, Settings, canonical_origin, load_settings
from library_api.realtime.origin import REFUSAL, foreign_origin
from library_api.security.permissions import Role
from tests.realtime.conftest import SQLITE_ONLY, StartLive
from tests.support.factories import create_user, token_for
from tests.support.live import receive


async def closed_with(client: ClientConnection, within: float = 10) -> tuple[int | None, str | None]:
    """Read until the server closes the connection; fail if a message arrives first."""
    try:
        message = await asyncio.wait_for(client.recv(), timeout=within)
    except ConnectionClosed:
        return client.close_code, client.close_reason
    raise AssertionError(f"the server sent {message!r} instead of refusing")


@pytest.mark.parametrize(**SQLITE_ONLY)
async def test_a_foreign_origin_is_refused_and_the_own_origin_and_no_origin_are_welcome(start_live: StartLive) -> None:
    live, ctx = await start_live(ws_allowed_origins="https://admin.library.example.org")
    headers = {"Authorization": f"Bearer {token_for(ctx, await create_user(ctx, Role.READER))}"}
    own = f"http://127.0.0.1:{live.port}"
    for origin in ("https://evil.example", "null", f"http://127.0.0.1:{live.port + 1}", "http://localhost"):
        async with connect(live.ws("victim"), origin=origin, additional_headers=headers) as client:  # type: ignore[arg-type]
            assert await closed_with(client) == (1008, REFUSAL), origin
    assert ctx.hub.connections_opened == 0

    welcomed = []
    for origin in (own, "https://admin.library.example.org:443", None):
        async with connect(live.ws("page"), origin=origin, additional_headers=headers) as client:  # type: ignore[arg-type]
            welcomed.append((await receive(client))["type"])
    assert welcomed == ["welcome"] * 3


async def test_the_host_header_without_a_port_names_the_host_only() -> None:
    """Behind nginx ``Host`` arrives without the port (``$host``): the host name decides, never the scheme."""

    def scope(origin: bytes, host: bytes) -> dict[str, object]:
        return {"type": "websocket", "headers": [(b"host", host), (b"origin", origin)]}

    allowed: list[str] = []
    assert foreign_origin(scope(b"https://library.example.org:8443", b"library.example.org"), allowed) is None
    assert foreign_origin(scope(b"https://library.example.org", b"library.example.org:443"), allowed) is None
    assert foreign_origin(scope(b"http://[::1]:8000", b"[::1]:8000"), allowed) is None
    assert foreign_origin(scope(b"https://library.example.org", b"library.example.org:8443"), allowed) == REFUSAL
    assert foreign_origin(scope(b"https://evil.example", b""), allowed) == REFUSAL
    assert foreign_origin(scope(b"https://evil.example", b"bad host/"), allowed) == REFUSAL


def test_allowed_origins_are_checked_and_spelt_one_way() -> None:
    settings = load_settings(
        env={"WS_ALLOWED_ORIGINS": "HTTPS://Admin.Example.org:443/,http://[::1]:8080"}, env_file=None
    )
    assert settings.ws_allowed_origins == ["https://admin.example.org", "http://[::1]:8080"]
    assert load_settings(env={}, env_file=None).ws_allowed_origins == []
    for wrong in ("admin.example.org", "ftp://example.org", "https://example.org/path", "https://u@example.org"):
        with pytest.raises(ConfigError) as refused:
            load_settings(env={"WS_ALLOWED_ORIGINS": wrong}, env_file=None)
        [line] = refused.value.problems
        assert line.startswith("WS_ALLOWED_ORIGINS: "), line
    assert canonical_origin("https://example.org:99999") is None
    with pytest.raises(ValidationError):
        Settings(ws_allowed_origins=5)  # type: ignore[arg-type]  # neither a list nor text: pydantic's refusal
