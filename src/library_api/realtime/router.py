"""``/ws/{client_id}`` (the live event stream) and ``POST /broadcast``.

A handshake is authenticated before it is accepted whenever the credential comes with it: an
``Authorization: Bearer`` header, a client certificate (through the application's authenticator), or, for
browsers, which cannot set headers, the subprotocol ``bearer.<token>`` offered next to ``library-api.v1``
(the server only ever selects ``library-api.v1``, so the token is never echoed). A bad credential is refused
with close code 4401. Otherwise the connection is accepted and its first message must be
``{"type": "auth", "token": ...}`` within ``WS_AUTH_TIMEOUT`` seconds (close 4401 if not), unless
``WS_ALLOW_ANONYMOUS`` lets it stay anonymous. Tokens are never logged.

The abuse limits of :mod:`library_api.realtime.admission` apply on the way: a handshake over the address's rate or
its pending-connection count is refused with HTTP 429 before the upgrade (nothing is read from it); a first message
above ``WS_PREAUTH_MAX_SIZE`` is closed with 1009; a caller over its connection count is closed with 4429.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, WebSocket, status
from pydantic import ValidationError
from starlette.websockets import WebSocketDisconnect

from library_api.dependencies import ContextDep
from library_api.dependencies.context import AppContext, get_context
from library_api.dependencies.permissions import PERMISSION_ATTRIBUTE, require
from library_api.problems import InvalidInput, ServiceUnavailable, Unauthorized, problem_response
from library_api.problems.responses import problems
from library_api.realtime.admission import (
    CLOSE_MESSAGE_TOO_BIG,
    CLOSE_TOO_MANY_CONNECTIONS,
    Claim,
    Denied,
    Refusal,
)
from library_api.realtime.broker import BrokerUnavailable
from library_api.realtime.connection import Connection
from library_api.realtime.held_credential import Credential, Held
from library_api.realtime.hub import CLOSE_GOING_AWAY, REASON_SHUTDOWN
from library_api.realtime.origin import foreign_origin
from library_api.realtime.schemas import (
    COMMANDS,
    AuthCommand,
    BroadcastIn,
    BroadcastOut,
    PingCommand,
    SubscribeCommand,
    UnsubscribeCommand,
)
from library_api.realtime.server_send import SERVER_SEND
from library_api.realtime.topics import (
    BROADCAST,
    Subscription,
    TopicError,
    control,
    is_public_topic,
    is_valid_client_id,
    now_iso,
)
from library_api.security.authentication import Authenticator
from library_api.security.permissions import Permission
from library_api.security.principal import Principal

logger = logging.getLogger("library_api.realtime")

router = APIRouter()
"""The WebSocket route, mounted at the root (``/ws/{client_id}``)."""

api_router = APIRouter(tags=["live events"])
"""HTTP routes of live events, mounted under the API prefix."""

SUBPROTOCOL = "library-api.v1"
TOKEN_SUBPROTOCOL_PREFIX = "bearer."  # noqa: S105 - a prefix, not a secret
CLOSE_POLICY = 1008
CLOSE_UNAUTHENTICATED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_TRY_AGAIN_LATER = 1013
DENIAL_EXTENSION = "websocket.http.response"

Broadcaster = Annotated[Principal, require(Permission.BROADCAST_SEND)]


def _handshake_authorised() -> Any:
    """Marks the route's permission for route audits; the check itself runs in the handshake (see module doc)."""

    async def dependency() -> None:
        return None

    setattr(dependency, PERMISSION_ATTRIBUTE, Permission.EVENTS_SUBSCRIBE.value)
    dependency.__name__ = "handshake_requires_events_subscribe"
    return Depends(dependency)


async def _refuse(websocket: WebSocket, code: int, reason: str) -> None:
    """Refuse a connection with a close code and a reason the client can read (browsers included).

    A close frame rather than an HTTP denial response: browsers never see the status of a refused handshake,
    only a close code. Only the abuse limits counted per address are answered before the upgrade (:func:`_deny`).
    """
    offered = websocket.scope.get("subprotocols", [])
    await websocket.accept(SUBPROTOCOL if SUBPROTOCOL in offered else None)
    await websocket.close(code, reason[:120])


async def _deny(websocket: WebSocket, denied: Denied) -> None:
    """Refuse the handshake itself: HTTP 429 with ``Retry-After`` (a problem), never upgraded, nothing read.

    Every server the service runs on supports the ASGI denial-response extension; under one that does not, the
    handshake is closed before it is accepted (the server answers 403).
    """
    if DENIAL_EXTENSION in (websocket.scope.get("extensions") or {}):
        response = problem_response(
            429,
            "too-many-requests",
            "Too many requests",
            denied.detail,
            instance=websocket.url.path,
            headers={"Retry-After": str(denied.retry_after)},
        )
        await websocket.send_denial_response(response)
    else:
        await websocket.close(CLOSE_TRY_AGAIN_LATER, denied.detail[:120])


def _address(websocket: WebSocket) -> str:
    """The client address the limits count against (the real client behind trusted proxies)."""
    client = websocket.scope.get("client")
    return str(client[0]) if client else "unknown"


async def _handshake_principal(websocket: WebSocket, authenticator: Authenticator) -> Principal:
    """The principal proven by the handshake itself (header, certificate or token subprotocol), else anonymous."""
    principal = await authenticator.authenticate(websocket)
    if principal.is_authenticated:
        return principal
    for offered in websocket.scope.get("subprotocols", []):
        if offered.startswith(TOKEN_SUBPROTOCOL_PREFIX):
            return await authenticator.from_bearer(offered.removeprefix(TOKEN_SUBPROTOCOL_PREFIX))
    return principal


async def _first_message_principal(
    websocket: WebSocket, context: AppContext, anonymous: Principal
) -> tuple[Principal | None, str | None, str | None]:
    """Wait for ``{"type": "auth"}``: the principal (``None`` once closed), a command to run next, the token."""
    settings = context.settings
    authenticator = context.authenticator
    admission = context.admission
    try:
        message = await asyncio.wait_for(websocket.receive(), timeout=settings.ws_auth_timeout)
    except TimeoutError:
        message = None
    if message is not None and message["type"] == "websocket.disconnect":
        return None, None, None
    if message is not None and _size_of(message) > admission.preauth_max_size:
        admission.refused(Refusal.PREAUTH_SIZE)
        reason = f"the first message exceeds {admission.preauth_max_size} bytes: authenticate first"
        await websocket.close(CLOSE_MESSAGE_TOO_BIG, reason)
        return None, None, None
    text = None if message is None else _text_of(message)
    try:
        command = COMMANDS.validate_json(text) if text is not None else None
    except ValidationError:
        command = None
    if isinstance(command, AuthCommand) and command.token:
        try:
            return await authenticator.from_bearer(command.token), None, command.token
        except Unauthorized as exc:
            await websocket.close(CLOSE_UNAUTHENTICATED, (exc.detail or "invalid token")[:120])
            return None, None, None
    if settings.ws_allow_anonymous:
        return anonymous, None if isinstance(command, AuthCommand) else text, None
    reason = "authentication timed out" if message is None else "authentication required"
    await websocket.close(CLOSE_UNAUTHENTICATED, f'{reason}: send {{"type": "auth", "token": ...}} first')
    return None, None, None


def _size_of(message: Any) -> int:
    """The size of a received message in bytes (text counted as UTF-8)."""
    text = message.get("text")
    if text is not None:
        return len(str(text).encode())
    raw = message.get("bytes")
    return 0 if raw is None else len(raw)


def _text_of(message: Any) -> str | None:
    if message.get("text") is not None:
        return str(message["text"])
    raw = message.get("bytes")
    if raw is None:
        return None
    try:
        return bytes(raw).decode()
    except UnicodeDecodeError:
        return None


async def _authenticate(websocket: WebSocket, context: AppContext) -> tuple[Principal, str | None, Credential] | None:
    """Accept the handshake and establish who is calling; ``None`` when refused (the socket is then closed)."""
    if (refusal := foreign_origin(websocket.scope, context.settings.ws_allowed_origins)) is not None:
        await _refuse(websocket, CLOSE_POLICY, refusal)
        return None
    subprotocol = SUBPROTOCOL if SUBPROTOCOL in websocket.scope.get("subprotocols", []) else None
    try:
        principal = await _handshake_principal(websocket, context.authenticator)
    except Unauthorized as exc:
        await _refuse(websocket, CLOSE_UNAUTHENTICATED, exc.detail or "invalid credentials")
        return None
    first_command: str | None = None
    token: str | None = None
    if principal.is_authenticated:
        await websocket.accept(subprotocol)
    else:
        address = _address(websocket)
        denied = context.admission.enter_pending(address)
        if denied is not None:
            await _deny(websocket, denied)
            return None
        try:
            await websocket.accept(subprotocol)
            found, first_command, token = await _first_message_principal(websocket, context, principal)
        finally:
            context.admission.leave_pending(address)
        if found is None:
            return None
        principal = found
    if not context.hub.may_connect(principal):
        await websocket.close(CLOSE_FORBIDDEN, f"this credential lacks the '{Permission.EVENTS_SUBSCRIBE}' permission")
        return None
    return principal, first_command, context.credentials.credential_of(principal, websocket.scope, token)


async def _admit(
    websocket: WebSocket, context: AppContext, client_id: str
) -> tuple[Principal, str | None, Credential, Claim] | None:
    """Count the handshake, validate, authenticate and take the caller's place; ``None`` when refused."""
    hub = context.hub
    if hub.draining:
        hub.connections_refused += 1
        await _refuse(websocket, CLOSE_GOING_AWAY, REASON_SHUTDOWN)
        return None
    denied = await context.admission.check_handshake(_address(websocket))
    if denied is not None:
        await _deny(websocket, denied)
        return None
    if not is_valid_client_id(client_id):
        await _refuse(websocket, CLOSE_POLICY, "client_id must be 1-64 of A-Z a-z 0-9 _ -")
        return None
    authenticated = await _authenticate(websocket, context)
    if authenticated is None:
        return None
    principal, first_command, credential = authenticated
    admission = context.admission
    claim = admission.claim(principal, client_id, _address(websocket))
    if claim is None:
        reason = f"this credential already holds {admission.max_per_principal} connections; close one first"
        await websocket.close(CLOSE_TOO_MANY_CONNECTIONS, reason)
        return None
    return principal, first_command, credential, claim


async def _open(websocket: WebSocket, client_id: str) -> tuple[Connection, str | None, Claim] | None:
    """Admit, authenticate, accept and register; ``None`` when the handshake was refused or closed."""
    context = get_context(websocket)
    hub = context.hub
    admitted = await _admit(websocket, context, client_id)
    if admitted is None:
        return None
    principal, first_command, credential, claim = admitted
    connection = Connection(
        hub,
        websocket,
        client_id,
        principal,
        uuid.uuid4().hex,
        queue_limit=hub.settings.ws_send_queue_size,
        send=websocket.scope.get(SERVER_SEND),
    )
    connection.credential = Held(credential)
    if not await hub.register(connection):
        claim.release()
        await websocket.close(CLOSE_GOING_AWAY, REASON_SHUTDOWN)
        return None
    connection.offer(
        control(
            "welcome",
            {
                "client_id": client_id,
                "subject": principal.subject,
                "roles": sorted(principal.roles),
                "worker": hub.worker,
                "server_time": now_iso(),
                "topics": sorted(connection.topics.values()),
                "exp": None if credential.expires_at is None else int(credential.expires_at),
            },
        )
    )
    return connection, first_command, claim


@router.websocket("/ws/{client_id}", dependencies=[_handshake_authorised()])
async def live_events(websocket: WebSocket, client_id: str) -> None:
    """The live event stream of one client (see ``docs/realtime.md`` for the protocol)."""
    opened = await _open(websocket, client_id)
    if opened is None:
        return
    connection, first_command, claim = opened
    context = get_context(websocket)
    hub = context.hub
    try:
        if first_command is not None:
            await _run(context, connection, first_command)
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                break
            text = _text_of(message)
            if text is None:
                connection.offer(control("error", {"message": "messages must be UTF-8 JSON text"}))
                continue
            await _run(context, connection, text)
    except WebSocketDisconnect:
        pass
    except asyncio.CancelledError:
        if not connection.abandoned:
            raise
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()  # our own cancellation (see Connection.close): end quietly
    finally:
        await hub.unregister(connection)
        claim.release()


async def _run(context: AppContext, connection: Connection, text: str) -> None:
    """Carry out one client command; every problem is answered with an ``error`` message, never a close."""
    hub = context.hub
    try:
        command = COMMANDS.validate_json(text)
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        where = ".".join(str(part) for part in first["loc"]) or "message"
        connection.offer(control("error", {"message": f"{where}: {first['msg']}"}))
        return
    if isinstance(command, SubscribeCommand):
        try:
            await hub.subscribe(connection, command.topic, command.last_event_id, command.last_event_epoch)
        except TopicError as exc:
            connection.offer(control("error", {"request": "subscribe", "topic": command.topic, "message": str(exc)}))
    elif isinstance(command, UnsubscribeCommand):
        found = hub.unsubscribe(connection, command.topic)
        connection.offer(control("unsubscribed", {"topic": command.topic, "was_subscribed": found}))
    elif isinstance(command, PingCommand):
        connection.offer(control("pong", {"server_time": now_iso()}))
    elif command.token and connection.principal.is_authenticated:
        await context.credentials.renew(connection, command.token)
    else:
        connection.offer(control("error", {"request": "auth", "message": "already authenticated"}))


@api_router.post(
    "/broadcast",
    status_code=status.HTTP_202_ACCEPTED,
    responses=problems(401, 403, 422, 503),
    summary="Broadcast a message",
)
async def broadcast(body: BroadcastIn, principal: Broadcaster, ctx: ContextDep) -> BroadcastOut:
    """Send a message to every connected client (topic `broadcast`) or to one public topic's subscribers."""
    topic = body.topic or BROADCAST
    if not is_public_topic(topic):
        raise InvalidInput("A broadcast goes to 'broadcast', 'books' or 'book:<id>'.", field="body.topic")
    try:
        ids = await ctx.hub.publish(
            "broadcast", [Subscription(topic, topic)], {"message": body.message, "sender": principal.subject}
        )
    except BrokerUnavailable:
        raise ServiceUnavailable("Live events are unavailable right now; retry shortly.", retry_after=2) from None
    return BroadcastOut(topic=topic, id=ids[0])
