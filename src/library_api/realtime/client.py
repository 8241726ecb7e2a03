"""A Python client for the live event stream, used by ``library-api client ws`` and usable on its own.

:class:`LiveClient` keeps one connection alive: it reconnects with backoff and jitter, resubscribes every topic
with the last id it received and that id's epoch (so the server replays exactly what was missed, or says
``resync`` when it cannot: the id is too old, or the broker's numbering restarted since), leaves
politely when the server announces a shutdown, and measures delivery latency from each message's ``ts``.
:func:`run_clients` runs many of them (``--clients N``, ``--stress``) and :class:`ClientStats` sums them up.

Example::

    stop = asyncio.Event()
    client = LiveClient("ws://127.0.0.1:8000", "my-app", token, ["books", "bookings:me"], on_message=print)
    await client.run(stop)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx
import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

Message = dict[str, Any]

Renewal = Callable[[str | None], Awaitable[str | None]]
"""Given the access token a connection holds, a fresh one (``None``: none can be had); see :class:`TokenSession`."""

logger = logging.getLogger("library_api.client")

FINAL_CLOSE_CODES = {4000: "replaced by a newer connection", 4401: "authentication failed", 4403: "not allowed"}
"""Close codes after which reconnecting would not help."""

UNTRACKED_TOPICS = ("system", "heartbeat")
"""Messages on these topics are not part of a replayable stream."""


class ClientStopped(Exception):
    """The server closed the connection for a reason reconnecting cannot fix."""


@dataclass
class ClientStats:
    """What one or more clients received, for the summaries the command prints."""

    received: int = 0
    reconnects: int = 0
    resyncs: int = 0
    duplicates: int = 0
    gaps: int = 0
    types: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)

    def merge(self, other: ClientStats) -> None:
        """Add ``other``'s figures to these."""
        self.received += other.received
        self.reconnects += other.reconnects
        self.resyncs += other.resyncs
        self.duplicates += other.duplicates
        self.gaps += other.gaps
        self.types.update(other.types)
        self.latencies.extend(other.latencies)

    def percentile(self, fraction: float) -> float | None:
        """The latency (seconds) below which ``fraction`` of the messages arrived, or ``None`` without any."""
        if not self.latencies:
            return None
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]

    def summary(self) -> str:
        """One line: counts, reconnects and latency p50/p99/max in milliseconds."""

        def ms(value: float | None) -> str:
            return "-" if value is None else f"{value * 1000:.1f} ms"

        peak = max(self.latencies) if self.latencies else None
        return (
            f"received {self.received}, reconnects {self.reconnects}, resyncs {self.resyncs}, gaps {self.gaps}, "
            f"duplicates {self.duplicates}; latency p50 {ms(self.percentile(0.5))}, "
            f"p99 {ms(self.percentile(0.99))}, max {ms(peak)}"
        )


def latency_of(message: Message, now: float | None = None) -> float | None:
    """Seconds from the message's ``ts`` (when the server published it) to ``now``."""
    try:
        published = datetime.fromisoformat(str(message["ts"])).timestamp()
    except (KeyError, ValueError):
        return None
    return (time.time() if now is None else now) - published


class LiveClient:
    """One reconnecting client of ``/ws/{client_id}``."""

    def __init__(
        self,
        base_url: str,
        client_id: str,
        token: str | None,
        topics: Sequence[str],
        *,
        on_message: Callable[[Message], None] | None = None,
        ssl_context: ssl.SSLContext | None = None,
        stats: ClientStats | None = None,
        max_backoff: float = 10.0,
        renew: Renewal | None = None,
    ) -> None:
        scheme, _, rest = base_url.rstrip("/").partition("://")
        self.url = f"{ {'http': 'ws', 'https': 'wss'}.get(scheme, scheme) }://{rest}/ws/{client_id}"
        self.client_id = client_id
        self.token = token
        self.topics = list(topics)
        self.last_ids: dict[str, int | None] = dict.fromkeys(self.topics)
        self.epochs: dict[str, str | None] = dict.fromkeys(self.topics)
        """Topic -> the epoch its last id belongs to: an id is only a position together with its epoch."""
        self.on_message = on_message
        self.ssl_context = ssl_context
        self.stats = stats or ClientStats()
        self.max_backoff = max_backoff
        self.renew = renew
        """Where a fresh access token comes from when the server says the current one expires (``auth_expiring``)."""
        self.connection: ClientConnection | None = None
        self.worker: str | None = None
        self.welcomed = False

    async def run(self, stop: asyncio.Event) -> None:
        """Stay connected until ``stop`` is set; raises :class:`ClientStopped` on a final close code."""
        attempt = 0
        while not stop.is_set():
            self.welcomed = False
            try:
                async with self._connect() as connection:
                    self.connection = connection
                    await self._serve(connection, stop)
            except (OSError, TimeoutError, InvalidHandshake, ConnectionClosed) as exc:
                code = getattr(getattr(exc, "rcvd", None), "code", None)
                if code in FINAL_CLOSE_CODES:
                    raise ClientStopped(f"closed {code}: {FINAL_CLOSE_CODES[code]}") from exc
            finally:
                self.connection = None
            if stop.is_set():
                return
            attempt = 0 if self.welcomed else attempt + 1
            self.stats.reconnects += 1
            delay = min(self.max_backoff, 0.25 * 2**attempt) * random.uniform(0.5, 1.0)  # noqa: S311 - jitter
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=delay)

    def _connect(self) -> Any:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else None
        return connect(
            self.url,
            additional_headers=headers,
            subprotocols=["library-api.v1"],  # type: ignore[list-item]
            ssl=self.ssl_context,
            open_timeout=15,
            max_size=16 * 1024 * 1024,
        )

    async def send(self, command: Message) -> None:
        """Send a command if connected (dropped otherwise: the next connection resubscribes anyway)."""
        if self.connection is not None:
            with contextlib.suppress(ConnectionClosed):
                await self.connection.send(orjson.dumps(command).decode())

    def subscribe_command(self, topic: str) -> Message:
        """``subscribe`` for ``topic``, resuming after the last id received on it."""
        command: Message = {"type": "subscribe", "topic": topic}
        last = self.last_ids.get(topic)
        if last is not None:
            command["last_event_id"] = last
            epoch = self.epochs.get(topic)
            if epoch is not None:
                command["last_event_epoch"] = epoch
        return command

    async def subscribe(self, topic: str) -> None:
        """Follow ``topic`` from now on (and on every reconnection)."""
        if topic not in self.last_ids:
            self.topics.append(topic)
            self.last_ids[topic] = None
            self.epochs[topic] = None
        await self.send(self.subscribe_command(topic))

    async def unsubscribe(self, topic: str) -> None:
        """Stop following ``topic``."""
        self.last_ids.pop(topic, None)
        self.epochs.pop(topic, None)
        if topic in self.topics:
            self.topics.remove(topic)
        await self.send({"type": "unsubscribe", "topic": topic})

    async def _serve(self, connection: ClientConnection, stop: asyncio.Event) -> None:
        """Receive until the connection closes, the server announces a shutdown, or ``stop`` is set."""
        stopping = asyncio.ensure_future(stop.wait())
        try:
            while True:
                receiving = asyncio.ensure_future(connection.recv())
                await asyncio.wait({receiving, stopping}, return_when=asyncio.FIRST_COMPLETED)
                if not receiving.done():
                    receiving.cancel()
                    await connection.close(1000, "client stopping")
                    return
                message: Message = orjson.loads(receiving.result())
                if message["type"] == "welcome":
                    self.welcomed = True
                    self.worker = str(message["data"].get("worker"))
                    for topic in self.topics:
                        await connection.send(orjson.dumps(self.subscribe_command(topic)).decode())
                elif message["type"] == "auth_expiring" and self.renew is not None:
                    await self._renew(connection)
                elif message["type"] == "shutdown":
                    self._note(message)
                    await self._leave_soon(connection, message, stop)
                    return
                self._note(message)
        finally:
            stopping.cancel()

    async def _renew(self, connection: ClientConnection) -> None:
        """Send the server a fresh token on the open connection: subscriptions and positions stay as they are."""
        assert self.renew is not None
        token = await self.renew(self.token)
        if token is not None:
            self.token = token  # also for the next reconnection
            await connection.send(orjson.dumps({"type": "auth", "token": token}).decode())

    async def _leave_soon(self, connection: ClientConnection, message: Message, stop: asyncio.Event) -> None:
        """The server is draining: keep reading a moment (spread over clients), then leave to reconnect."""
        seconds_left = float(message["data"].get("seconds_left") or 0)
        linger = random.uniform(0, min(2.0, seconds_left / 2))  # noqa: S311 - spreading reconnections
        deadline = time.monotonic() + linger
        with contextlib.suppress(ConnectionClosed, TimeoutError):
            while not stop.is_set() and time.monotonic() < deadline:
                raw = await asyncio.wait_for(connection.recv(), timeout=max(deadline - time.monotonic(), 0.001))
                self._note(orjson.loads(raw))
        await connection.close(1000, "leaving a draining server")

    def _note(self, message: Message) -> None:
        kind = str(message.get("type"))
        topic = str(message.get("topic"))
        data = message.get("data") or {}
        named = str(data.get("topic"))
        if kind == "subscribed":
            if named in self.last_ids and self.last_ids[named] is None:
                self.last_ids[named] = data.get("last_event_id")
                self.epochs[named] = data.get("epoch")
        elif kind == "resync":
            self.stats.resyncs += 1
            if named in self.last_ids:
                self.last_ids[named] = data.get("latest")
                self.epochs[named] = data.get("epoch")
        elif topic not in UNTRACKED_TOPICS and message.get("id") is not None:
            self._count(topic, int(message["id"]), message)
        if self.on_message is not None:
            self.on_message(message)

    def _count(self, topic: str, event_id: int, message: Message) -> None:
        last = self.last_ids.get(topic)
        if last is not None and event_id <= last:
            self.stats.duplicates += 1
            return
        if last is not None and event_id > last + 1:
            self.stats.gaps += 1
        if topic in self.last_ids:
            self.last_ids[topic] = event_id
            self.epochs[topic] = message.get("epoch", self.epochs[topic])
        self.stats.received += 1
        self.stats.types[str(message.get("type"))] += 1
        latency = latency_of(message)
        if latency is not None:
            self.stats.latencies.append(latency)


async def login(base_url: str, email: str, password: str, ssl_context: ssl.SSLContext | None = None) -> str:
    """An access token for ``email``, from ``POST /api/v1/auth/login``."""
    return (await login_session(base_url, email, password, ssl_context)).access_token


async def login_session(
    base_url: str, email: str, password: str, ssl_context: ssl.SSLContext | None = None
) -> TokenSession:
    """Log in and keep the refresh token, so that live connections can renew their access token in band."""
    async with httpx.AsyncClient(base_url=base_url, verify=ssl_context or True, timeout=30) as http:
        response = await http.post("/api/v1/auth/login", data={"username": email, "password": password})
    if response.status_code != 200:
        detail = response.json().get("detail") if response.content else None
        raise ClientStopped(f"login failed ({response.status_code}): {detail or response.reason_phrase}")
    body = response.json()
    return TokenSession(base_url, str(body["access_token"]), str(body["refresh_token"]), ssl_context)


class TokenSession:
    """An access token and the refresh token that renews it, shared by every connection logged in with it.

    Refresh tokens rotate and a reused one revokes its whole family, so renewals are serialised: a connection
    asking with a token already replaced gets the replacement instead of refreshing a second time.
    """

    def __init__(
        self, base_url: str, access_token: str, refresh_token: str, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        self.base_url = base_url
        self.access_token = access_token
        self.refresh_token = refresh_token
        self.ssl_context = ssl_context
        self._lock = asyncio.Lock()

    async def renew(self, current: str | None) -> str | None:
        """A fresh access token in place of ``current`` (``None`` when the refresh is refused: log in again)."""
        async with self._lock:
            if current != self.access_token:
                return self.access_token
            async with httpx.AsyncClient(base_url=self.base_url, verify=self.ssl_context or True, timeout=30) as http:
                response = await http.post("/api/v1/auth/refresh", json={"refresh_token": self.refresh_token})
            if response.status_code != 200:
                logger.warning("renewing the access token failed (%d); the connection will end", response.status_code)
                return None
            body = response.json()
            self.access_token, self.refresh_token = str(body["access_token"]), str(body["refresh_token"])
            return self.access_token


async def run_clients(clients: Sequence[LiveClient], stop: asyncio.Event) -> list[BaseException | None]:
    """Run every client until ``stop``; the exception each one ended with, if any."""
    results = await asyncio.gather(*(client.run(stop) for client in clients), return_exceptions=True)
    return [result if isinstance(result, BaseException) else None for result in results]


def make_ssl_context(cafile: str | None, certfile: str | None, keyfile: str | None) -> ssl.SSLContext | None:
    """A TLS context trusting ``cafile`` and presenting a client certificate, when any of them is given."""
    if not (cafile or certfile):
        return None
    context = ssl.create_default_context(cafile=cafile)
    if certfile:
        context.load_cert_chain(certfile, keyfile)
    return context
