"""GZip above the configured size, for clients that accept it, never for what should not be compressed."""

from __future__ import annotations

import gzip

from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from library_api.http.gzip import GZipMiddleware
from tests.conftest import AppFactory
from tests.support.factories import create_book
from tests.support.http import client_for


async def test_large_answers_are_compressed_small_ones_are_not(app_factory: AppFactory) -> None:
    app = await app_factory()
    for _ in range(8):
        await create_book(app.state.context, description="A description long enough to matter. " * 4)
    async with client_for(app) as client:
        large = await client.get("/api/v1/books", headers={"Accept-Encoding": "gzip"})
        raw = await client.get("/api/v1/books", headers={"Accept-Encoding": "identity"})
        small = await client.get("/health", headers={"Accept-Encoding": "gzip"})
    assert len(raw.content) > 1000
    assert large.headers["content-encoding"] == "gzip"
    assert large.headers["vary"] == "Accept-Encoding"
    assert int(large.headers["content-length"]) < len(raw.content)
    assert large.json() == raw.json()  # httpx decodes it
    assert "content-encoding" not in raw.headers
    assert "content-encoding" not in small.headers
    assert small.headers["vary"] == "Accept-Encoding"


async def run(middleware: GZipMiddleware, accept: bytes = b"gzip, br") -> list[Message]:
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    async def receive() -> Message:
        return {"type": "http.request", "body": b""}

    scope = {"type": "http", "method": "GET", "path": "/", "headers": [(b"accept-encoding", accept)]}
    await middleware(scope, receive, send)
    return sent


def app_answering(body: bytes, media_type: str, status: int = 200, **headers: str) -> object:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await Response(body, status_code=status, media_type=media_type, headers=headers)(scope, receive, send)

    return app


async def test_images_encoded_answers_and_304_pass_through() -> None:
    for app in (
        app_answering(b"\x89PNG" * 500, "image/png"),
        app_answering(b"x" * 5000, "application/json", **{"Content-Encoding": "br"}),
        app_answering(b"", "application/json", status=304),
    ):
        sent = await run(GZipMiddleware(app, minimum_size=100))  # type: ignore[arg-type]
        headers = dict(sent[0]["headers"])
        assert b"content-encoding" not in headers or headers[b"content-encoding"] == b"br"


async def test_compressed_body_round_trips_and_streams_pass_through() -> None:
    body = b'{"items": [' + b'{"title": "A book"},' * 200 + b"]}"
    sent = await run(GZipMiddleware(app_answering(body, "application/json"), minimum_size=1000))  # type: ignore[arg-type]
    headers = dict(sent[0]["headers"])
    assert headers[b"content-encoding"] == b"gzip"
    assert gzip.decompress(sent[1]["body"]) == body
    assert int(headers[b"content-length"]) == len(sent[1]["body"])

    async def streaming(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"a" * 2000, "more_body": True})
        await send({"type": "http.response.body", "body": b"b" * 2000})

    sent = await run(GZipMiddleware(streaming, minimum_size=1000))
    assert b"content-encoding" not in dict(sent[0]["headers"])
    assert [message.get("body") for message in sent[1:]] == [b"a" * 2000, b"b" * 2000]


async def test_no_accept_encoding_means_no_wrapping() -> None:
    body = b"x" * 5000
    sent = await run(GZipMiddleware(app_answering(body, "text/plain"), minimum_size=10), accept=b"identity")  # type: ignore[arg-type]
    assert sent[1]["body"] == body
