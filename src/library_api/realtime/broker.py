"""Brokers number messages per stream, keep a bounded history, and hand every message to every worker's hub.

Two implementations share one contract (:class:`Broker`):

* :class:`MemoryBroker`, the embedded default: one process, a ring buffer per stream.
* :class:`~library_api.realtime.redis_broker.RedisBroker`, when ``REDIS_URL`` is set: Redis Streams, so that
  several workers and hosts see the same numbered messages and each worker delivers them to its own clients.

Either way a message is identified by ``(stream, epoch, id)`` with ids 1, 2, 3, ... per stream. The *epoch*
names one numbering of a stream: it is created with the stream (a random id), and a broker that loses its
history (the in-process broker when the process restarts, Redis when it restarts without its data) starts a
new epoch along with ids from 1 again. A position is therefore only meaningful with its epoch: a client that
reconnects with ``last_event_id`` *and* the epoch it came from gets exactly the messages after it from
:meth:`Broker.history`; any other position (another epoch, none named, beyond the latest id, or older than the
kept history) is judged incomplete and the client is told to resynchronise, never replayed another numbering.
"""

from __future__ import annotations

import secrets
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from library_api.realtime.topics import Subscription, envelope_tail, now_iso, with_id

Deliver = Callable[[str, str | None, int, str], None]
"""Called with ``(stream, epoch, id, envelope text)`` for every message, in order per stream."""

ControlHandler = Callable[[dict[str, Any]], None]
"""Called with every control notice one worker announces to all (such as "this client id reconnected")."""


PUBLISHED_KEYS = 10_000
"""How many outbox row keys a broker remembers to recognise a row published twice (see :meth:`Broker.publish`)."""


class BrokerUnavailable(Exception):
    """The broker cannot be reached right now (Redis down); the caller degrades instead of failing."""


def new_epoch() -> str:
    """A fresh epoch: 16 random hex digits (safe to put in JSON and Redis keys as they are)."""
    return secrets.token_hex(8)


RESYNC_EPOCH = "epoch"
"""Resync reason: the position names another epoch of the stream, or none (the broker's numbering restarted)."""
RESYNC_AHEAD = "ahead"
"""Resync reason: the position lies beyond the stream's latest id."""
RESYNC_TRIMMED = "trimmed"
"""Resync reason: messages after the position are no longer kept (older than ``WS_HISTORY_SIZE``)."""


@dataclass(frozen=True, slots=True)
class Replay:
    """What a reconnecting subscriber missed after ``after``, and where the stream stands.

    ``complete`` is false when the position cannot be resumed exactly: it belongs to another epoch (or names
    none), lies beyond the latest id, or some of the messages after it are no longer kept; ``reason`` then says
    which (one of the ``RESYNC_*`` values) and the client must resynchronise from the REST API. ``latest`` is
    the newest id of the stream (0 when it has none) and ``epoch`` the stream's current numbering.
    """

    messages: list[tuple[int, str]]
    complete: bool
    latest: int
    epoch: str
    reason: str | None = None


def replay_from(
    entries: Sequence[tuple[int, str]], after: int | None, latest: int, epoch: str, claimed: str | None
) -> Replay:
    """Judge a history read.

    ``entries`` are the kept messages with ids above ``after`` (oldest first) in the stream's current
    ``epoch``; ``claimed`` is the epoch the client says its position belongs to. No position (``after`` is
    ``None``) starts at ``latest``. A position is resumed only when its epoch is the stream's: without that, an
    id means nothing (the same number may name another message of another numbering), so the safe answer is a
    resync.
    """
    if after is None:
        return Replay([], complete=True, latest=latest, epoch=epoch)
    if claimed != epoch:
        return Replay([], complete=False, latest=latest, epoch=epoch, reason=RESYNC_EPOCH)
    if after > latest:
        return Replay([], complete=False, latest=latest, epoch=epoch, reason=RESYNC_AHEAD)
    if after == latest:
        return Replay([], complete=True, latest=latest, epoch=epoch)
    if entries and entries[0][0] == after + 1:
        return Replay(list(entries), complete=True, latest=latest, epoch=epoch)
    return Replay([], complete=False, latest=latest, epoch=epoch, reason=RESYNC_TRIMMED)


class Broker(Protocol):
    """Where messages are numbered, kept and fanned out to every worker."""

    async def start(self, deliver: Deliver, on_control: ControlHandler) -> None:
        """Begin handing messages (and control notices) to this worker's hub."""
        ...

    async def publish(
        self, message_type: str, routes: Sequence[Subscription], data: Any, key: str | None = None
    ) -> list[int]:
        """Append one message to each route's stream; returns the id it got in each, in ``routes`` order.

        ``key`` names an outbox row: a message whose key the broker still remembers (of the last
        :data:`PUBLISHED_KEYS`) was published already and is not appended again (the answer is then empty).
        """
        ...

    async def latest(self, stream: str) -> int:
        """The newest id of ``stream`` (0 when nothing was ever published on it)."""
        ...

    async def history(self, stream: str, after: int | None, epoch: str | None) -> Replay:
        """The kept messages of ``stream`` with ids above ``after`` of ``epoch``, judged by :func:`replay_from`."""
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
    restarts; the epoch, made anew by every broker (so by every process start), is what tells a client
    resuming from an older process's id to resynchronise instead of being replayed the new numbering.
    """

    def __init__(self, history_size: int) -> None:
        self._history_size = history_size
        self._streams: dict[str, _Stream] = {}
        self._deliver: Deliver | None = None
        self._on_control: ControlHandler | None = None
        self.epoch = new_epoch()
        """The epoch of every stream of this broker: they all began with it."""
        self._published: dict[str, None] = {}
        """Keys of the last published outbox rows, oldest first (a dict as an ordered set)."""

    async def start(self, deliver: Deliver, on_control: ControlHandler) -> None:
        """Deliver from now on to ``deliver``."""
        self._deliver = deliver
        self._on_control = on_control

    async def publish(
        self, message_type: str, routes: Sequence[Subscription], data: Any, key: str | None = None
    ) -> list[int]:
        """Number, keep and deliver one message per route (nothing when ``key`` was published already)."""
        if key is not None:
            if key in self._published:
                return []
            self._published[key] = None
            if len(self._published) > PUBLISHED_KEYS:
                del self._published[next(iter(self._published))]
        ts = now_iso()
        ids = []
        for route in routes:
            stream = self._streams.get(route.stream)
            if stream is None:
                stream = self._streams[route.stream] = _Stream(entries=deque(maxlen=self._history_size))
            stream.last_id += 1
            text = with_id(stream.last_id, envelope_tail(message_type, route.topic, ts, data), self.epoch)
            stream.entries.append((stream.last_id, text))
            ids.append(stream.last_id)
            if self._deliver is not None:
                self._deliver(route.stream, self.epoch, stream.last_id, text)
        return ids

    async def latest(self, stream: str) -> int:
        """The newest id of ``stream``."""
        found = self._streams.get(stream)
        return 0 if found is None else found.last_id

    async def history(self, stream: str, after: int | None, epoch: str | None) -> Replay:
        """The ring buffer's messages after ``after``, when ``epoch`` is this process's."""
        found = self._streams.get(stream)
        if found is None:
            return replay_from([], after, 0, self.epoch, epoch)
        entries = [] if after is None else [entry for entry in found.entries if entry[0] > after]
        return replay_from(entries, after, found.last_id, self.epoch, epoch)

    async def announce(self, notice: dict[str, Any]) -> None:
        """Only this process listens."""
        if self._on_control is not None:
            self._on_control(notice)

    async def close(self) -> None:
        """Stop delivering."""
        self._deliver = None
        self._on_control = None
