"""A tiny ASGI application standing in for the service behind nginx: it answers with what it received.

nginx's own behaviour (TLS, redirects, headers it sets or strips, body limits, WebSocket upgrade, gzip) is
tested against it, so those tests do not depend on the service's routes. Run by the tests under Uvicorn:
``uvicorn tests.deploy.echo_upstream:app``.
"""

from __future__ import annotations

import json
from typing import Any

Scope = dict[str, Any]


def _headers(scope: Scope) -> dict[str, list[str]]:
    seen: dict[str, list[str]] = {}
    for name, value in scope["headers"]:
        seen.setdefault(name.decode("latin-1"), []).append(value.decode("latin-1"))
    return seen


async def app(scope: Scope, receive: Any, send: Any) -> None:
    """Echo an HTTP request (method, path, headers, body size) as JSON, or echo WebSocket messages."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] == "websocket":
        await receive()
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.send", "text": json.dumps({"path": scope["path"], "headers": _headers(scope)})})
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return
            await send({"type": "websocket.send", "text": message.get("text") or ""})
    size = 0
    while True:
        message = await receive()
        size += len(message.get("body", b""))
        if not message.get("more_body"):
            break
    body: dict[str, Any] = {
        "method": scope["method"],
        "path": scope["path"],
        "query": scope["query_string"].decode(),
        "headers": _headers(scope),
        "body_size": size,
    }
    if scope["path"] == "/api/v1/large":
        body["padding"] = "x" * 5000
    payload = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                # What the service sends itself; nginx must pass on exactly one of each.
                (b"x-request-id", b"from-the-upstream"),
                (b"strict-transport-security", b"max-age=1"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})
