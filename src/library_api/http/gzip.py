"""GZip for answers above ``GZIP_MINIMUM_SIZE`` bytes (1,000 by default), for clients that accept it.

Ours rather than Starlette's because of two costs on every request: Starlette's wraps and parses the headers of
every response even when the client accepts no gzip, and compresses bodies over 128 KiB in the thread pool,
which nothing on this service's request path may use. Here a request without ``Accept-Encoding: gzip`` costs
one header scan and no wrapper; a compressible answer (JSON, text, problem details; not images or anything
already encoded) sent in one piece is compressed at level 6 on the event loop (a 1 MB catalogue page takes a
few milliseconds). Streamed answers (cover files) are passed through unchanged. Every compressible answer to a
client that accepts gzip carries ``Vary: Accept-Encoding``, so a cache never hands the compressed form to a
client that did not ask for it.
"""

from __future__ import annotations

import zlib

from starlette.types import ASGIApp, Message, Receive, Scope, Send

COMPRESSIBLE = (b"application/json", b"application/problem+json", b"text/", b"application/javascript")
COMPRESSION_LEVEL = 6


def _accepts_gzip(scope: Scope) -> bool:
    for name, value in scope["headers"]:
        if name == b"accept-encoding":
            return b"gzip" in value
    return False


class GZipMiddleware:
    """Compresses single-message compressible HTTP answers of at least ``minimum_size`` bytes."""

    def __init__(self, app: ASGIApp, minimum_size: int = 1000) -> None:
        self.app = app
        self.minimum_size = minimum_size

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Compress the answer when the client accepts gzip and the answer is worth it."""
        if scope["type"] != "http" or not _accepts_gzip(scope):
            await self.app(scope, receive, send)
            return
        start: Message | None = None
        passthrough = False

        async def compressing_send(message: Message) -> None:
            nonlocal start, passthrough
            if passthrough:
                await send(message)
                return
            if message["type"] == "http.response.start":
                if self._compressible(message):
                    start = message
                else:
                    passthrough = True
                    await send(message)
                return
            if message["type"] != "http.response.body" or start is None:
                await send(message)
                return
            body = message.get("body", b"")
            headers = [*start.get("headers", ()), (b"vary", b"Accept-Encoding")]
            if message.get("more_body", False) or len(body) < self.minimum_size:
                passthrough = True
                await send({**start, "headers": headers})
                await send(message)
                return
            compressed = zlib.compress(body, COMPRESSION_LEVEL, wbits=31)
            headers = [(name, value) for name, value in headers if name != b"content-length"]
            headers += [(b"content-encoding", b"gzip"), (b"content-length", str(len(compressed)).encode())]
            await send({**start, "headers": headers})
            await send({"type": "http.response.body", "body": compressed})

        await self.app(scope, receive, compressing_send)

    @staticmethod
    def _compressible(start: Message) -> bool:
        compressible = False
        for name, value in start.get("headers", ()):
            if name == b"content-encoding":
                return False
            if name == b"content-type":
                compressible = value.startswith(COMPRESSIBLE)
        return compressible and start["status"] not in (204, 206, 304)
