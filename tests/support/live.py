"""Real servers on loopback for tests: Uvicorn serving an app inside the test's event loop, and WebSocket clients.

In-process servers let a test look at the hub's counters directly while real sockets, real handshakes and real
WebSocket clients do the work; server processes (``tests.support.processes``) are for several workers and signals.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Generator
from dataclasses import dataclass
from typing import Any, NamedTuple

import orjson
import uvicorn
from fastapi import FastAPI
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.support.polling import wait_until
from tests.support.ports import listening_socket, port_of


class QuietServer(uvicorn.Server):
    """Uvicorn without its signal handlers: the test, not a signal, decides when it stops."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


@dataclass
class Live:
    """Where a running server answers."""

    port: int
    server: uvicorn.Server | None = None

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ws(self, client_id: str) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/{client_id}"


@contextlib.asynccontextmanager
async def serve_in_loop(app: FastAPI, **options: Any) -> AsyncIterator[Live]:
    """Run ``app`` under Uvicorn on a loopback port of its own inside this event loop until the block ends.

    The server serves on a socket bound here (port 0), so the port is known at once and no one else can take it.
    """
    with listening_socket() as listener:
        config = uvicorn.Config(app, log_config=None, lifespan="on", ws_per_message_deflate=False, **options)
        server = QuietServer(config)
        task = asyncio.create_task(server.serve(sockets=[listener]))
        await wait_until(lambda: server.started or task.done(), within=15, what="the server to start")
        if task.done():
            task.result()
        try:
            yield Live(port=port_of(listener), server=server)
        finally:
            server.should_exit = True
            await asyncio.wait_for(task, timeout=30)


async def open_client(live: Live, client_id: str, token: str | None = None, **options: Any) -> ClientConnection:
    """A real WebSocket client, authenticated with a bearer header, after its ``welcome`` message."""
    headers = {"Authorization": f"Bearer {token}"} if token else None
    client = await connect(live.ws(client_id), additional_headers=headers, open_timeout=10, **options)
    welcome = await receive(client)
    assert welcome["type"] == "welcome", welcome
    return client


async def receive(client: ClientConnection, within: float = 10) -> dict[str, Any]:
    """The next message, decoded; raises ``TimeoutError`` when none arrives in ``within`` seconds."""
    raw = await asyncio.wait_for(client.recv(), timeout=within)
    message: dict[str, Any] = orjson.loads(raw)
    return message


async def receive_until(
    client: ClientConnection, accept: Callable[[dict[str, Any]], bool], within: float = 10
) -> dict[str, Any]:
    """Skip messages until one satisfies ``accept`` (heartbeats and others pass by)."""
    deadline = time.monotonic() + within
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError("no matching message arrived in time")
        message = await receive(client, left)
        if accept(message):
            return message


async def subscribe(client: ClientConnection, topic: str, last_event_id: int | None = None) -> dict[str, Any]:
    """Subscribe and return the ``subscribed`` reply (or fail on an ``error``)."""
    command: dict[str, Any] = {"type": "subscribe", "topic": topic}
    if last_event_id is not None:
        command["last_event_id"] = last_event_id
    await client.send(orjson.dumps(command).decode())
    return await receive_until(client, lambda m: m["type"] in ("subscribed", "error", "resync"))


class Arrived(NamedTuple):
    """What :func:`read_until_sentinel` read: everything before the sentinel, and the sentinel itself."""

    before: list[dict[str, Any]]
    sentinel: dict[str, Any]


async def read_until_sentinel(
    client: ClientConnection, is_sentinel: Callable[[dict[str, Any]], bool], within: float = 10
) -> Arrived:
    """Every message up to the first that ``is_sentinel`` accepts; fails when none arrives in ``within`` seconds.

    This is how a test proves that nothing else arrived, instead of waiting for a quiet moment: after the action
    whose messages it checks, it makes the server send something it knows comes later on the same path (an
    event on the same stream, a broadcast once the earlier events have been published, the ``pong`` to a
    ``ping`` for the replies to commands), and reads up to it. Whatever the action sent is in ``before``.
    """
    before: list[dict[str, Any]] = []
    deadline = time.monotonic() + within
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"the sentinel did not arrive within {within} s; before it: {before}")
        try:
            message = await receive(client, left)
        except TimeoutError:
            raise AssertionError(f"the sentinel did not arrive within {within} s; before it: {before}") from None
        if is_sentinel(message):
            return Arrived(before, message)
        before.append(message)


async def ping(client: ClientConnection) -> Callable[[dict[str, Any]], bool]:
    """Send ``ping``; the test for its ``pong``, the sentinel for replies to the commands sent before it."""
    await client.send('{"type": "ping"}')
    return lambda message: message["type"] == "pong"


async def closed_with(client: ClientConnection, within: float = 10) -> tuple[int | None, str | None]:
    """Read until the server closes the connection; the close code and reason it sent."""
    deadline = time.monotonic() + within
    try:
        while time.monotonic() < deadline:
            await asyncio.wait_for(client.recv(), timeout=max(deadline - time.monotonic(), 0.01))
    except ConnectionClosed:
        return client.close_code, client.close_reason
    raise AssertionError(f"the server did not close the connection within {within} s")
