"""One client connection: its subscriptions, its bounded send queue and the writer task that empties it.

Delivery never awaits: :meth:`Connection.offer` appends the already-encoded text to the queue and makes sure
the connection's writer task runs, so a broadcast costs one append per subscriber and a slow client only ever
slows its own writer. When the queue is full the hub closes the connection with 1013 (try again later) and
counts it.

A message for a connection with nothing queued is handed to the server at once: the send coroutine is started
right there, and when the socket takes the frame without waiting (the common case) it completes on the spot,
as in a plain ``for ws in clients: await ws.send_text(...)`` loop but without anyone waiting on anyone. Only
when the socket cannot take it (the client reads slowly) does the connection get a writer task, which carries
that send on (see :class:`_Resume`) and then empties the queue; the task ends when the queue is empty. So an
idle connection holds no task and no future, a broadcast allocates nothing that outlives it (which keeps
Python's full garbage collections, half a second with 5,000 connections, away from the fan-out), and a slow
client still only ever slows itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Generator
from types import CoroutineType
from typing import TYPE_CHECKING, Any, Protocol

from starlette.types import Send
from starlette.websockets import WebSocket, WebSocketDisconnect

from library_api.realtime.broker import RESYNC_EPOCH
from library_api.realtime.topics import control
from library_api.security.principal import Principal

if TYPE_CHECKING:
    from library_api.realtime.held_credential import Held

logger = logging.getLogger("library_api.realtime")


class ConnectionOwner(Protocol):
    """What a connection needs of the hub that registered it: its delivery counters and the overflow verdict.

    The hub (:class:`library_api.realtime.hub.Hub`) is one; naming only this keeps the connection below the hub
    that holds connections.
    """

    messages_sent: int
    resyncs: int

    def overflowed(self, connection: Connection) -> None:
        """The connection's queue is full: the owner closes it (1013)."""


CLOSE_TIMEOUT = 2.0
"""Seconds a close frame may take to leave; a client whose TCP window is full never takes it."""


class _Resume:
    """An awaitable that carries on a coroutine which was started outside any task and then had to wait.

    ``coroutine.send(None)`` ran it up to its first suspension, which yielded ``waiting_on`` (the future it
    waits for); awaiting this object inside a task yields that future to the task and then drives the rest
    of the coroutine exactly as ``await coroutine`` would have (``yield from`` semantics: values, exceptions
    and cancellation pass through both ways).
    """

    __slots__ = ("coroutine", "waiting_on")

    def __init__(self, coroutine: Coroutine[Any, Any, None], waiting_on: Any) -> None:
        self.coroutine = coroutine
        self.waiting_on = waiting_on

    def __await__(self) -> Generator[Any, Any, None]:
        coroutine, yielded = self.coroutine, self.waiting_on
        while True:
            try:
                received = yield yielded
            except GeneratorExit:
                coroutine.close()
                raise
            except BaseException as exc:  # thrown in by the task (cancellation): pass it on
                try:
                    yielded = coroutine.throw(exc)
                except StopIteration:
                    return
                continue
            try:
                yielded = coroutine.send(received)
            except StopIteration:
                return


_SENT = object()
"""What stepping a send coroutine gives when the send completed without waiting."""


async def _awaiting(awaitable: Awaitable[None]) -> None:
    """A coroutine around a server's ``send`` result that is some other awaitable, so it can be driven alike."""
    await awaitable


class Connection:
    """A registered WebSocket client, as the hub sees it."""

    __slots__ = (
        "abandoned",
        "client_id",
        "closed",
        "credential",
        "handler",
        "hub",
        "listed",
        "nonce",
        "pending",
        "principal",
        "queue_limit",
        "send",
        "streams",
        "topics",
        "websocket",
        "writer",
    )

    def __init__(
        self,
        hub: ConnectionOwner,
        websocket: WebSocket,
        client_id: str,
        principal: Principal,
        nonce: str,
        queue_limit: int,
        send: Send | None = None,
    ) -> None:
        self.hub = hub
        self.websocket = websocket
        self.send: Send = websocket.send if send is None else send
        """Where messages go: the server's own ASGI ``send`` when the stack passed it on
        (:mod:`library_api.realtime.server_send`), else the framework's ``WebSocket.send``. Opening and closing
        always go through ``websocket``, which keeps the framework's view of the connection's state."""
        self.client_id = client_id
        self.principal = principal
        self.nonce = nonce
        self.queue_limit = queue_limit
        self.pending: deque[str] | None = None
        """Messages waiting behind a send in progress; made when the first one has to wait, dropped when empty
        (an empty deque costs 600 bytes, which ten thousand idle connections would hold for nothing)."""
        self.streams: dict[str, StreamPosition] = {}
        """Subscribed stream -> where it stands for this connection (the same object the hub delivers through)."""
        self.topics: dict[str, str] = {}
        """Subscribed stream -> the topic name the client used for it."""
        self.closed = False
        self.handler = asyncio.current_task()
        """The task serving this connection (its receive loop), created by the server for the handshake."""
        self.abandoned = False
        """Set when the hub gave up on a client that would not take a close frame and cancelled its handler."""
        self.listed = False
        """Whether the hub counts it as open (set on registration, cleared once when it leaves)."""
        self.writer: asyncio.Task[None] | None = None
        """The running writer, while the queue has something to send."""
        self.credential: Held | None = None
        """What the caller proved itself with, checked again for the life of the connection (``credentials.py``)."""

    @property
    def key(self) -> tuple[str, str]:
        """Who and which id: a newer connection with the same key replaces this one."""
        return (self.principal.subject, self.client_id)

    def offer(self, text: str) -> None:
        """Send ``text`` now if the socket takes it, else queue it; a full queue gets the connection closed (1013)."""
        if self.closed:
            return
        if self.writer is None:
            self.send_now(text)
            return
        pending = self.pending
        if pending is None:
            pending = self.pending = deque()
        if len(pending) >= self.queue_limit:
            self.hub.overflowed(self)
            return
        pending.append(text)

    def send_now(self, text: str) -> None:
        """Start sending ``text`` now (nothing may be queued); if the socket makes it wait, a writer carries it on."""
        sending = self.send({"type": "websocket.send", "text": text})
        if not isinstance(sending, CoroutineType):  # ASGI allows any awaitable; the servers here give coroutines
            sending = _awaiting(sending)
        try:
            # One step of the coroutine: ``next`` with a default, rather than ``send(None)``, lets a send that completes
            # on the spot end without raising StopIteration (one exception per message saved).
            waiting_on = next(sending.__await__(), _SENT)
            if waiting_on is _SENT:
                self.hub.messages_sent += 1
                return
        except (WebSocketDisconnect, OSError, RuntimeError):
            return  # the peer is gone: the receiving side notices and unregisters
        self.writer = asyncio.get_running_loop().create_task(self._write(_Resume(sending, waiting_on)))

    async def _write(self, in_flight: _Resume) -> None:
        send = self.send
        try:
            await in_flight
            self.hub.messages_sent += 1
            while self.pending:
                await send({"type": "websocket.send", "text": self.pending.popleft()})
                self.hub.messages_sent += 1
        except (WebSocketDisconnect, OSError, RuntimeError):
            # The peer is gone (or the socket was closed under us): the receiving side notices and unregisters.
            pass
        self.pending = None
        if not self.closed:
            self.writer = None

    async def close(self, code: int, reason: str, on_closed: Callable[[], None] | None = None) -> None:
        """Stop writing and send a close frame (bounded in time: a stalled client cannot hold this up)."""
        if self.closed:
            return
        self.closed = True
        self.pending = None
        if self.writer is not None:
            self.writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.writer
        if on_closed is not None:
            on_closed()
        try:
            await asyncio.wait_for(self.websocket.close(code, reason), timeout=CLOSE_TIMEOUT)
        except (TimeoutError, WebSocketDisconnect, OSError, RuntimeError):
            # A client that stopped reading may never let the close frame through; its handler would wait
            # for it forever, so end the handler instead (it returns quietly, seeing ``abandoned``).
            logger.debug("close frame %d to %s could not be sent", code, self.client_id)
            handler = self.handler
            if handler is not None and handler is not asyncio.current_task() and not handler.done():
                self.abandoned = True
                handler.cancel()


class StreamPosition:
    """One subscription of one connection as delivery sees it: the last id queued from the stream, and its epoch.

    Shared by the connection and its stream's :class:`~library_api.realtime.fanout.Fanout`, which checks
    :meth:`offer` only for the subscribers that follow a place of their own (new, replaying, resumed, resynced);
    for those in step with the stream it checks a message once for all of them, and their fields are brought up to
    date only when one leaves that group (:meth:`~library_api.realtime.fanout.Fanout.detach`).
    """

    __slots__ = ("connection", "epoch", "held", "last_id", "stream")

    def __init__(self, connection: Connection, stream: str, last_id: int = 0) -> None:
        self.connection = connection
        self.stream = stream
        self.last_id = last_id
        """Id of the last message queued from the stream (later ones only are sent)."""
        self.epoch: str | None = None
        """The epoch ``last_id`` belongs to (unknown until the broker has named one)."""
        self.held: list[tuple[str | None, int, str]] | None = None
        """While the stream's history is being fetched: the live messages that arrived meanwhile, sent after it."""

    def offer(self, epoch: str | None, event_id: int, text: str) -> None:
        """Queue a stream message unless it was already queued (ids only ever move forward per stream).

        A message of another epoch than the one the position belongs to means the stream's numbering
        restarted under this subscription (the broker lost its history): the client gets a ``resync`` first,
        and the position starts again in the new epoch, so no message of the new numbering is taken for one
        already sent.
        """
        if self.held is not None:
            self.held.append((epoch, event_id, text))
            return
        if epoch is not None and epoch != self.epoch:
            self._follow(epoch)
        if event_id <= self.last_id:
            return
        self.last_id = event_id
        self.connection.offer(text)

    def _follow(self, epoch: str) -> None:
        """The stream's messages now come in ``epoch``: the first one names it; a change restarts the position."""
        if self.epoch is not None:
            self._restart(epoch)
        self.epoch = epoch

    def _restart(self, epoch: str) -> None:
        """The stream's numbering restarted under a live subscription: tell the client, start the position again."""
        connection = self.connection
        connection.hub.resyncs += 1
        self.last_id = 0
        topic = connection.topics.get(self.stream, self.stream)
        data = {"topic": topic, "last_event_id": None, "latest": None, "epoch": epoch, "reason": RESYNC_EPOCH}
        connection.offer(control("resync", data))
