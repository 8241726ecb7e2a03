"""A connection's sends: carrying a coroutine started outside a task into a task (the send that had to wait for a
slow socket), and the queue that exists only while a send waits."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from starlette.types import Send
from starlette.websockets import WebSocket

from library_api.realtime.connection import Connection, _Resume
from library_api.security.principal import CredentialKind, Principal
from tests.support.polling import wait_until


def started(coroutine: Any) -> _Resume:
    """Run ``coroutine`` to its first suspension, as a connection does when a send must wait."""
    return _Resume(coroutine, coroutine.send(None))


async def test_a_resumed_coroutine_finishes_in_its_task_with_what_it_waited_for() -> None:
    gate: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    seen: list[str] = []

    async def waits() -> None:
        seen.append(await gate)
        await asyncio.sleep(0)  # a second, bare suspension passes through as well
        seen.append("done")

    async def carry(resumed: _Resume) -> None:
        await resumed

    task = asyncio.create_task(carry(started(waits())))
    await asyncio.sleep(0)
    assert not task.done()
    gate.set_result("value")
    await task
    assert seen == ["value", "done"]


async def test_cancellation_reaches_the_resumed_coroutine() -> None:
    gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    cleaned: list[str] = []

    async def waits() -> None:
        try:
            await gate
        finally:
            cleaned.append("finally ran")

    async def carry(resumed: _Resume) -> None:
        await resumed

    task = asyncio.create_task(carry(started(waits())))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cleaned == ["finally ran"]
    assert gate.cancelled()


async def test_a_coroutine_that_handles_what_is_thrown_in_may_finish_normally() -> None:
    gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    outcome: list[str] = []

    async def tolerant() -> None:
        try:
            await gate
        except asyncio.CancelledError:
            outcome.append("handled")

    async def carry(resumed: _Resume) -> None:
        await resumed

    task = asyncio.create_task(carry(started(tolerant())))
    await asyncio.sleep(0)
    task.cancel()
    await task
    assert outcome == ["handled"]


async def test_closing_the_awaiting_generator_closes_the_coroutine() -> None:
    gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    closed: list[str] = []

    async def waits() -> None:
        try:
            await gate
        except GeneratorExit:
            closed.append("closed")
            raise

    generator = started(waits()).__await__()
    assert next(generator) is gate
    generator.close()
    assert closed == ["closed"]
    gate.cancel()


async def test_a_coroutine_may_keep_waiting_after_handling_what_is_thrown_in() -> None:
    loop = asyncio.get_running_loop()
    first: asyncio.Future[None] = loop.create_future()
    second: asyncio.Future[str] = loop.create_future()
    outcome: list[str] = []

    async def stubborn() -> None:
        try:
            await first
        except asyncio.CancelledError:
            outcome.append(await second)

    async def carry(resumed: _Resume) -> None:
        await resumed

    task = asyncio.create_task(carry(started(stubborn())))
    await asyncio.sleep(0)
    task.cancel()
    await asyncio.sleep(0)
    assert not task.done()
    second.set_result("still here")
    await task
    assert outcome == ["still here"]


# ----- the send queue of a connection -----


class Owner:
    """What a connection reports to: counts sends and records overflow verdicts."""

    def __init__(self) -> None:
        self.messages_sent = 0
        self.resyncs = 0
        self.overflows: list[Connection] = []

    def overflowed(self, connection: Connection) -> None:
        self.overflows.append(connection)


class Peer:
    """The server side of one WebSocket as ASGI sees it: frames taken at once, or held while the gate is shut."""

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.gate = asyncio.Event()
        self.gate.set()

    async def receive(self) -> dict[str, Any]:
        return {"type": "websocket.connect"}

    async def send(self, message: dict[str, Any]) -> None:
        await self.gate.wait()
        if message["type"] == "websocket.send":
            self.sent.append(message["text"])


async def connected(peer: Peer, owner: Owner, queue_limit: int = 10, send: Send | None = None) -> Connection:
    websocket = WebSocket({"type": "websocket", "path": "/ws/a", "headers": []}, peer.receive, peer.send)
    await websocket.accept()
    principal = Principal("user:1", CredentialKind.ACCESS_TOKEN, frozenset(), frozenset())
    return Connection(owner, websocket, "a", principal, "nonce", queue_limit, send=send)


async def test_an_idle_connection_sends_at_once_and_holds_no_queue() -> None:
    peer, owner = Peer(), Owner()
    connection = await connected(peer, owner)
    connection.offer("one")
    connection.offer("two")
    assert peer.sent == ["one", "two"]
    assert (connection.pending, connection.writer, owner.messages_sent) == (None, None, 2)


async def test_messages_behind_a_waiting_send_are_queued_then_sent_in_order_and_the_queue_dropped() -> None:
    peer, owner = Peer(), Owner()
    connection = await connected(peer, owner)
    peer.gate.clear()
    connection.offer("one")  # the socket makes it wait: a writer carries it on
    assert connection.writer is not None
    assert connection.pending is None
    connection.offer("two")
    connection.offer("three")
    assert list(connection.pending or ()) == ["two", "three"]
    peer.gate.set()
    await wait_until(lambda: connection.writer is None, within=5, what="the writer to empty the queue")
    assert peer.sent == ["one", "two", "three"]
    assert (connection.pending, owner.messages_sent) == (None, 3)
    connection.offer("four")  # idle again: straight out
    assert peer.sent[-1] == "four"


class FutureSender:
    """A server ``send`` that hands back a future rather than a coroutine (ASGI allows any awaitable)."""

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.waiting: list[asyncio.Future[None]] = []
        self.hold = False

    def __call__(self, message: dict[str, Any]) -> asyncio.Future[None]:
        self.sent.append(message["text"])
        future = asyncio.get_running_loop().create_future()
        if self.hold:
            self.waiting.append(future)
        else:
            future.set_result(None)
        return future


async def test_a_server_send_that_returns_another_awaitable_is_driven_like_a_coroutine() -> None:
    peer, owner, server_send = Peer(), Owner(), FutureSender()
    connection = await connected(peer, owner, send=server_send)
    server_send.hold = True
    connection.offer("one")  # its future is pending: a writer carries the send on
    connection.offer("two")
    assert connection.writer is not None
    assert list(connection.pending or ()) == ["two"]
    server_send.hold = False
    server_send.waiting[0].set_result(None)
    await wait_until(lambda: connection.writer is None, within=5, what="the writer to empty the queue")
    connection.offer("three")  # a future already done completes on the spot
    assert (server_send.sent, peer.sent, owner.messages_sent) == (["one", "two", "three"], [], 3)


async def test_a_full_queue_is_reported_to_the_owner_and_closing_drops_the_queue() -> None:
    peer, owner = Peer(), Owner()
    connection = await connected(peer, owner, queue_limit=1)
    peer.gate.clear()
    connection.offer("one")
    connection.offer("two")
    assert owner.overflows == []
    connection.offer("three")
    assert owner.overflows == [connection]
    closing = asyncio.create_task(connection.close(1013, "full"))
    await wait_until(lambda: connection.pending is None, within=5, what="closing to drop the queue")
    peer.gate.set()
    await closing
    assert peer.sent == []
    assert connection.closed
