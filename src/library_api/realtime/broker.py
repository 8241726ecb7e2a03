"""Brokers number messages per stream, keep a bounded history, and hand every message to every worker's hub.

Two implementations share one contract (:class:`Broker`):

* :class:`MemoryBroker`, the embedded default: one process, a ring buffer per stream.
* :class:`~library_api.realtime.redis_broker.RedisBroker`, when ``REDIS_URL`` is set: Redis Streams, so that
  several workers and hosts see the same numbered messages and each worker delivers them to its own clients.

Either way a message is identified by ``(stream, id)`` with ids 1, 2, 3, ... per stream; a client that
reconnects with ``last_event_id`` gets exactly the messages after it from :meth:`Broker.history`, or is told to
resynchronise when they are no longer kept.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from library_api.realtime.topics import Subscription, envelope_tail, now_iso, with_id

Deliver = Callable[[str, int, str], None]
"""Called with ``(stream, id, envelope text)`` for every message, in order per stream."""

ControlHandler = Callable[[dict[str, Any]], None]
"""Called with every control notice one worker announces to all (such as "this client id reconnected")."""


class BrokerUnavailable(Exception):
    """The broker cannot be reached right now (Redis down); the caller degrades instead of failing."""


@dataclass(frozen=True, slots=True)
class Replay:
    """What a reconnecting subscriber missed after ``after``.

    ``complete`` is false when some of those messages are no longer kept (or the stream was reset, so the
    id the client remembers lies in the future): the client must then resynchronise from the REST API.
    ``latest`` is the newest id of the stream (0 when it has none).
    """

    messages: list[tuple[int, str]]
    complete: bool
    latest: int


def replay_from(entries: Sequence[tuple[int, str]], after: int, latest: int) -> Replay:
    """Judge a history read: ``entries`` are the kept messages with ids above ``after``, oldest first."""
    if after > latest:
        return Replay([], complete=False, latest=latest)
    if after == latest:
        return Replay([], complete=True, latest=latest)
    complete = bool(entries) and entries[0][0] == after + 1
    return Replay(list(entries), complete=complete, latest=latest)


class Broker(Protocol):
    """Where messages are numbered, kept and fanned out to every worker."""

    async def start(self, deliver: Deliver, on_control: ControlHandler) -> None:
        """Begin handing messages (and control notices) to this worker's hub."""
        ...

    async def publish(self, message_type: str, routes: Sequence[Subscription], data: Any) -> list[int]:
        """Append one message to each route's stream; returns the id it got in each, in ``routes`` order."""
        ...

    async def latest(self, stream: str) -> int:
        """The newest id of ``stream`` (0 when nothing was ever published on it)."""
        ...

    async def history(self, stream: str, after: int) -> Replay:
        """The kept messages of ``stream`` with ids above ``after``."""
        ...

    async def announce(self, notice: dict[str, Any]) -> None:
        """Tell every worker's hub (this one included) about ``notice``."""
        ...

    async def close(self) -> None:
        """Stop delivering and release connections."""
        ...


@dataclass(slots=True)
class _Stream:
    last_id: int = 0
    entries: deque[tuple[int, str]] = field(default_factory=deque)


class MemoryBroker:
    """The in-process broker: numbering, a ring buffer of ``history_size`` messages per stream, direct delivery.

    Only this process's clients are reached, which is exactly right for one worker; with several workers
    configure ``REDIS_URL`` (the application logs a warning otherwise). Ids restart from 1 when the process
    restarts, so a client resuming from an older process's id is told to resynchronise.
    """

    def __init__(self, history_size: int) -> None:
        self._history_size = history_size
        self._streams: dict[str, _Stream] = {}
        self._deliver: Deliver | None = None
        self._on_control: ControlHandler | None = None

    async def start(self, deliver: Deliver, on_control: ControlHandler) -> None:
        """Deliver from now on to ``deliver``."""
        self._deliver = deliver
        self._on_control = on_control

    async def publish(self, message_type: str, routes: Sequence[Subscription], data: Any) -> list[int]:
        """Number, keep and deliver one message per route."""
        ts = now_iso()
        ids = []
        for route in routes:
            stream = self._streams.get(route.stream)
            if stream is None:
                stream = self._streams[route.stream] = _Stream(entries=deque(maxlen=self._history_size))
            stream.last_id += 1
            text = with_id(stream.last_id, envelope_tail(message_type, route.topic, ts, data))
            stream.entries.append((stream.last_id, text))
            ids.append(stream.last_id)
            if self._deliver is not None:
                self._deliver(route.stream, stream.last_id, text)
        return ids

    async def latest(self, stream: str) -> int:
        """The newest id of ``stream``."""
        found = self._streams.get(stream)
        return 0 if found is None else found.last_id

    async def history(self, stream: str, after: int) -> Replay:
        """The ring buffer's messages after ``after``."""
        found = self._streams.get(stream)
        if found is None:
            return replay_from([], after, 0)
        entries = [entry for entry in found.entries if entry[0] > after]
        return replay_from(entries, after, found.last_id)

    async def announce(self, notice: dict[str, Any]) -> None:
        """Only this process listens."""
        if self._on_control is not None:
            self._on_control(notice)

    async def close(self) -> None:
        """Stop delivering."""
        self._deliver = None
        self._on_control = None
