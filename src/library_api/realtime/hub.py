"""The connection hub of one worker: registry, subscriptions, delivery, heartbeats and graceful drain.

The registry (client key -> connection) changes only under the hub's lock; delivery reads it without
awaiting, so a message reaches every subscriber in one pass of the event loop. Domain events reach the broker
through :meth:`Hub.publish`, called by the outbox relay (:mod:`library_api.realtime.relay`) for the rows a
committed change wrote, and by the broadcast route.

The hub is a :class:`~library_api.lifecycle.shutdown.Drainer`: on shutdown it refuses new connections (they are
accepted and closed at once with 1001, so that browsers see a close code and a reason), tells every client the
deadline with a ``shutdown`` message, keeps serving them while they leave, and closes the rest with 1001.

:class:`Hub` is one cohesive class (the registry, the subscriptions and the delivery share one lock and one pass
of the event loop); how one stream's message reaches its subscribers is :mod:`library_api.realtime.fanout`, and
what a connection needs of the hub is only :class:`~library_api.realtime.connection.ConnectionOwner`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from library_api.config import Settings
from library_api.lifecycle.shutdown import ShutdownCoordinator
from library_api.realtime.broker import Broker, BrokerUnavailable
from library_api.realtime.connection import Connection, StreamPosition
from library_api.realtime.fanout import Fanout
from library_api.realtime.topics import (
    AUTOMATIC_TOPICS,
    HEARTBEAT,
    Subscription,
    control,
    envelope_tail,
    now_iso,
    resolve,
    with_id,
)
from library_api.security.permissions import Permission
from library_api.security.principal import Principal

logger = logging.getLogger("library_api.realtime")

CLOSE_REPLACED = 4000
CLOSE_OVERFLOW = 1013
CLOSE_GOING_AWAY = 1001
REASON_REPLACED = "replaced by a newer connection with the same client id"
REASON_OVERFLOW = "send queue full: the client reads too slowly"
REASON_SHUTDOWN = "server shutting down; reconnect later"


class Hub:
    """Connections of this worker, their subscriptions, and the tasks that feed them."""

    name = "websocket"

    def __init__(
        self,
        settings: Settings,
        broker: Broker,
        shutdown: ShutdownCoordinator | None = None,
    ) -> None:
        self.settings = settings
        self.broker = broker
        self.worker = str(os.getpid())
        self._shutdown = shutdown
        self._lock = asyncio.Lock()
        self._connections: dict[tuple[str, str], Connection] = {}
        self._fanouts: dict[str, Fanout] = {}  # stream -> its local subscribers
        self._tasks: list[asyncio.Task[None]] = []
        self._closing: set[asyncio.Task[None]] = set()
        self._heartbeat_id = 0
        self._draining = False
        self._started = False
        self.connections_opened = 0
        self.connections_closed = 0
        self.connections_replaced = 0
        self.connections_refused = 0
        self.overflow_closes = 0
        self.messages_sent = 0
        self.messages_published = 0
        self.publish_failures = 0
        self.resyncs = 0

    # ----- lifecycle -----

    async def start(self) -> None:
        """Connect the broker and start the heartbeats."""
        if self._started:
            return
        self._started = True
        await self.broker.start(self.deliver, self.on_control)
        if self.settings.broadcast_interval > 0:
            self._tasks.append(asyncio.create_task(self._heartbeat_loop(), name="realtime-heartbeat"))

    async def stop(self) -> None:
        """Close what is left (1001), stop the tasks, close the broker."""
        if not self._started:
            return
        self._started = False
        await self.close_remaining()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        await self.broker.close()

    # ----- counters -----

    def stats(self) -> dict[str, int]:
        """Counters of this worker's hub, for metrics and tests."""
        return {
            "connections_active": len(self._connections),
            "connections_opened": self.connections_opened,
            "connections_closed": self.connections_closed,
            "connections_replaced": self.connections_replaced,
            "connections_refused": self.connections_refused,
            "overflow_closes": self.overflow_closes,
            "messages_sent": self.messages_sent,
            "messages_published": self.messages_published,
            "publish_failures": self.publish_failures,
            "resyncs": self.resyncs,
        }

    # ----- publishing -----

    async def publish(
        self, message_type: str, routes: Sequence[Subscription], data: Any, key: str | None = None
    ) -> list[int]:
        """Publish now and return the message's id in each route's stream (raises :class:`BrokerUnavailable`).

        ``key`` names the outbox row the message comes from: the broker does not number a row twice (the answer
        is then empty).
        """
        try:
            ids = await self.broker.publish(message_type, routes, data, key)
        except BrokerUnavailable:
            self.publish_failures += 1
            raise
        self.messages_published += len(ids)
        return ids

    async def _heartbeat_loop(self) -> None:
        interval = self.settings.broadcast_interval
        while True:
            await asyncio.sleep(interval)
            self.heartbeat()

    def heartbeat(self) -> None:
        """Send every subscriber of ``heartbeat`` the server time and this worker's connection count."""
        self._heartbeat_id += 1
        ts = now_iso()
        data = {"server_time": ts, "connections": len(self._connections), "worker": self.worker}
        if self._draining:
            data["draining"] = True
        text = with_id(self._heartbeat_id, envelope_tail(HEARTBEAT, HEARTBEAT, ts, data))
        self.deliver(HEARTBEAT, None, self._heartbeat_id, text)

    # ----- delivery -----

    def deliver(self, stream: str, epoch: str | None, event_id: int, text: str) -> None:
        """Queue a numbered message for every local subscriber of ``stream`` (never awaits)."""
        fanout = self._fanouts.get(stream)
        if fanout is not None:
            fanout.deliver(epoch, event_id, text)

    def on_control(self, notice: dict[str, Any]) -> None:
        """Act on a notice from any worker: a client id reconnected elsewhere, or a fanout gap to resync."""
        kind = notice.get("kind")
        if kind == "replace":
            key = (str(notice.get("subject")), str(notice.get("client_id")))
            current = self._connections.get(key)
            if current is not None and current.nonce != notice.get("nonce"):
                self._close_soon(current, CLOSE_REPLACED, REASON_REPLACED, replaced=True)
        elif kind == "resync":
            # Messages were lost (or Redis lost its data and ids start again): positions mean nothing now.
            for connection in list(self._connections.values()):
                for stream, topic in connection.topics.items():
                    if stream != HEARTBEAT:
                        self.resyncs += 1
                        position = self._fanouts[stream].detach(connection)
                        if position is not None:
                            position.last_id, position.epoch = 0, None  # the next message names the epoch
                        connection.offer(
                            control("resync", {"topic": topic, "latest": None, "reason": "messages were lost"})
                        )

    def overflowed(self, connection: Connection) -> None:
        """A connection's queue is full: close it with 1013 (from a task, since delivery cannot await)."""
        self.overflow_closes += 1
        logger.warning(
            "closing WebSocket client %s: %d messages queued and not read", connection.client_id, connection.queue_limit
        )
        self._close_soon(connection, CLOSE_OVERFLOW, REASON_OVERFLOW)

    # ----- registry -----

    @property
    def draining(self) -> bool:
        """Whether new connections are being refused."""
        return self._draining

    async def register(self, connection: Connection) -> bool:
        """Add a connection (replacing one with the same key); ``False`` when the hub is draining."""
        async with self._lock:
            if self._draining:
                self.connections_refused += 1
                return False
            previous = self._connections.get(connection.key)
            self._connections[connection.key] = connection
            self.connections_opened += 1
            connection.listed = True
            for topic in AUTOMATIC_TOPICS:
                self._add_subscriber(connection, Subscription(topic, topic))
        if previous is not None:
            self.connections_replaced += 1
            await previous.close(CLOSE_REPLACED, REASON_REPLACED, functools.partial(self._forget, previous))
        with contextlib.suppress(BrokerUnavailable):
            await self.broker.announce(
                {
                    "kind": "replace",
                    "subject": connection.principal.subject,
                    "client_id": connection.client_id,
                    "nonce": connection.nonce,
                }
            )
        return True

    async def unregister(self, connection: Connection) -> None:
        """Remove a connection that has ended (idempotent) and stop its writer."""
        async with self._lock:
            self._forget(connection)
        if not connection.closed:
            connection.closed = True
            if connection.writer is not None:
                connection.writer.cancel()

    def _forget(self, connection: Connection) -> None:
        if self._connections.get(connection.key) is connection:
            del self._connections[connection.key]
        if connection.listed:
            connection.listed = False
            self.connections_closed += 1
        for stream in list(connection.streams):
            self._remove_subscriber(connection, stream)
        if self._draining and self._shutdown is not None:
            self._shutdown.notify()

    def end(self, connection: Connection, code: int, reason: str) -> None:
        """Close a connection whose caller may no longer follow it: no message is queued for it from now on."""
        for stream in list(connection.streams):
            self._remove_subscriber(connection, stream)
        self._close_soon(connection, code, reason)

    def _close_soon(self, connection: Connection, code: int, reason: str, *, replaced: bool = False) -> None:
        if connection.closed:
            return
        if replaced:
            self.connections_replaced += 1
        task = asyncio.create_task(connection.close(code, reason, functools.partial(self._forget, connection)))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def active(self) -> int:
        """Open connections of this worker."""
        return len(self._connections)

    def connections(self) -> list[Connection]:
        """The open connections of this worker (a snapshot)."""
        return list(self._connections.values())

    # ----- subscriptions -----

    def _add_subscriber(self, connection: Connection, subscription: Subscription) -> StreamPosition:
        position = StreamPosition(connection, subscription.stream)
        connection.streams[subscription.stream] = position
        connection.topics[subscription.stream] = subscription.topic
        self._fanouts.setdefault(subscription.stream, Fanout()).add(position)
        return position

    def _remove_subscriber(self, connection: Connection, stream: str) -> None:
        connection.streams.pop(stream, None)
        connection.topics.pop(stream, None)
        fanout = self._fanouts.get(stream)
        if fanout is not None:
            fanout.remove(connection)
            if not fanout:
                del self._fanouts[stream]

    async def subscribe(
        self, connection: Connection, topic: str, last_event_id: int | None, last_event_epoch: str | None = None
    ) -> None:
        """Subscribe (raises :class:`~library_api.realtime.topics.TopicError`); replays from ``last_event_id``.

        The position is resumed only when ``last_event_epoch`` is the stream's current epoch (see
        :func:`~library_api.realtime.broker.replay_from`); otherwise the client gets a ``resync``. Live messages
        arriving while the history is read are held back and sent after it, each once, in id order; the
        ``subscribed`` reply names the id (and epoch) the subscription starts after, so the client can resume
        from it even if nothing arrives before it disconnects.
        """
        subscription = resolve(topic, connection.principal)
        limit = self.settings.ws_max_subscriptions
        if subscription.stream not in connection.streams and len(connection.streams) >= limit:
            connection.offer(
                control("error", {"request": "subscribe", "topic": topic, "message": "too many subscriptions"})
            )
            return
        self._remove_subscriber(connection, subscription.stream)
        position = self._add_subscriber(connection, subscription)
        if not subscription.replayable:
            connection.offer(control("subscribed", {"topic": topic, "last_event_id": None, "replayed": 0}))
            return
        position.held = []
        messages: list[tuple[int, str]] = []
        epoch: str | None = None
        reason: str | None = None
        try:
            replay = await self.broker.history(subscription.stream, last_event_id, last_event_epoch)
        except BrokerUnavailable:
            start, reason = 0, "unavailable" if last_event_id is not None else None
        else:
            epoch, start, reason = replay.epoch, replay.latest, replay.reason
            if replay.complete and last_event_id is not None:
                start, messages = last_event_id, replay.messages
        held = position.held
        if held is None or connection.closed or connection.streams.get(subscription.stream) is not position:
            return  # unsubscribed, subscribed anew or closed while the history was read
        position.held = None
        known = None if epoch is None else start
        if reason is not None:
            self.resyncs += 1
            data = {"topic": topic, "last_event_id": last_event_id, "latest": known, "epoch": epoch, "reason": reason}
            connection.offer(control("resync", data))
        connection.offer(
            control(
                "subscribed",
                {"topic": topic, "last_event_id": known, "epoch": epoch, "replayed": len(messages)},
            )
        )
        position.last_id = start
        if epoch is not None:
            position.epoch = epoch
        for event_id, text in messages:
            position.offer(epoch, event_id, text)
        for held_epoch, event_id, text in held:
            position.offer(held_epoch, event_id, text)

    def unsubscribe(self, connection: Connection, topic: str) -> bool:
        """Stop a subscription; ``False`` when the connection had none for ``topic``."""
        for stream, name in list(connection.topics.items()):
            if name == topic:
                self._remove_subscriber(connection, stream)
                return True
        return False

    # ----- graceful drain (the Drainer protocol) -----

    async def begin_drain(self, deadline: float) -> None:
        """Refuse newcomers from now on and tell every client when the server will close their connection."""
        async with self._lock:
            self._draining = True
            connections = list(self._connections.values())
        notice = control(
            "shutdown",
            {
                "deadline": datetime.fromtimestamp(deadline, UTC).isoformat(timespec="seconds"),
                "seconds_left": max(0, round(deadline - time.time())),
                "message": "the server is shutting down; finish and reconnect (another instance will take you)",
            },
        )
        for connection in connections:
            connection.offer(notice)
        logger.info("told %d WebSocket client(s) that the server is shutting down", len(connections))

    async def close_remaining(self) -> None:
        """Close every connection still open with 1001 (going away), all at once."""
        async with self._lock:
            self._draining = True
            connections = list(self._connections.values())
        await asyncio.gather(
            *(
                connection.close(CLOSE_GOING_AWAY, REASON_SHUTDOWN, functools.partial(self._forget, connection))
                for connection in connections
            )
        )
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    def may_connect(self, principal: Principal) -> bool:
        """Whether ``principal`` may hold a connection (anonymous ones only when the setting allows)."""
        if not principal.is_authenticated:
            return self.settings.ws_allow_anonymous
        return principal.can(Permission.EVENTS_SUBSCRIBE)
