"""Stream messages go to the server's own ``send``: the middleware that passes it on, and the route that uses it."""

from __future__ import annotations

import gc
import weakref
from typing import Any

import pytest
from starlette.types import Message, Receive, Scope, Send

from library_api.realtime.server_send import SERVER_SEND, ServerSendMiddleware
from library_api.realtime.topics import Subscription
from library_api.security.permissions import Role
from library_api.server.uvicorn import TLSWebSocketsProtocol
from tests.realtime.conftest import SQLITE_ONLY, StartLive
from tests.support.factories import create_user, token_for
from tests.support.live import open_client, receive_until
from tests.support.polling import wait_until


async def receive() -> Message:
    return {"type": "websocket.connect"}


async def send(message: Message) -> None:
    """A server's ``send``; the tests compare it by identity only."""


class Inner:
    """An application that records what it saw of the scope, and can fail."""

    def __init__(self, fail: bool = False) -> None:
        self.seen: list[Any] = []
        self.fail = fail

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.seen.append(scope.get(SERVER_SEND))
        if self.fail:
            raise RuntimeError("the application failed")


async def test_a_websocket_scope_carries_the_send_while_it_is_served_and_not_after() -> None:
    inner = Inner()
    scope: dict[str, Any] = {"type": "websocket", "path": "/ws/a"}
    await ServerSendMiddleware(inner)(scope, receive, send)
    assert inner.seen == [send]
    assert SERVER_SEND not in scope  # a scope holding its protocol's send would be a reference cycle


async def test_the_key_goes_when_the_application_fails_too() -> None:
    inner = Inner(fail=True)
    scope: dict[str, Any] = {"type": "websocket", "path": "/ws/a"}
    with pytest.raises(RuntimeError, match="the application failed"):
        await ServerSendMiddleware(inner)(scope, receive, send)
    assert inner.seen == [send]
    assert SERVER_SEND not in scope


@pytest.mark.parametrize("scope_type", ["http", "lifespan"])
async def test_other_scopes_get_the_inner_applications_own_coroutine(scope_type: str) -> None:
    inner = Inner()
    scope: dict[str, Any] = {"type": scope_type, "path": "/"}
    awaitable = ServerSendMiddleware(inner)(scope, receive, send)
    assert awaitable.cr_code is Inner.__call__.__code__  # type: ignore[attr-defined]  # no coroutine of its own
    await awaitable
    assert inner.seen == [None]
    assert SERVER_SEND not in scope


@pytest.mark.parametrize(**SQLITE_ONLY)
async def test_a_live_connection_sends_through_the_servers_protocol_and_lets_it_go_when_closed(
    start_live: StartLive,
) -> None:
    live, ctx = await start_live()
    token = token_for(ctx, await create_user(ctx, Role.READER))
    client = await open_client(live, "direct", token)
    [connection] = ctx.hub.connections()
    assert isinstance(getattr(connection.send, "__self__", None), TLSWebSocketsProtocol)
    assert connection.send != connection.websocket.send
    await ctx.hub.publish("broadcast", [Subscription("broadcast", "broadcast")], {"message": "straight through"})
    message = await receive_until(client, lambda m: m["type"] == "broadcast")
    assert message["data"]["message"] == "straight through"

    protocol = weakref.ref(connection.send.__self__)  # type: ignore[attr-defined]
    scope = connection.websocket.scope
    del connection
    gc.disable()  # the protocol must go by reference counting alone, as it did before the key existed
    try:
        await client.close()
        await wait_until(lambda: not ctx.hub.connections(), within=10, what="the connection to be unregistered")
        assert SERVER_SEND not in scope
        await wait_until(lambda: protocol() is None, within=10, what="the closed connection's protocol to be freed")
    finally:
        gc.enable()
