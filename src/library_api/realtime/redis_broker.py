"""The Redis Streams broker: every worker on every host sees every message once, numbered per stream.

Keys (all under one hash tag, so that the publishing script touches a single Redis Cluster slot):

* ``{prefix}:s:{stream}`` -- the stream's history, ``MAXLEN = WS_HISTORY_SIZE``. Entries get the ids
  ``0-1``, ``0-2``, ... (``XADD ... 0-*``), so the sequence part *is* the per-topic message id: atomic,
  gap-free, and kept by Redis even when old entries are trimmed.
* ``{prefix}:e:{stream}`` -- the stream's epoch, a hash ``{e: epoch, u: 1 once something was published}``.
  ``XADD 0-*`` starts again at 1 on a stream that no longer exists (Redis restarted without its data, the key
  was evicted or deleted), so the scripts below give a stream a *new* epoch whenever its numbering cannot be
  the one the stored epoch names: no epoch yet, or an epoch that numbered messages (``u = 1``) while the
  stream itself is gone. An epoch made by a subscription to a stream nobody has published on yet (``u = 0``)
  is kept by the first publish (position 0 of it is still exact) and expires after ``EMPTY_EPOCH_TTL`` if
  nothing is published, so that subscribing to arbitrary topics leaves nothing behind for long.
* ``{prefix}:published`` -- the keys of the last ``PUBLISHED_KEYS`` outbox rows published (a sorted set scored
  by ``{prefix}:published:n``, a counter): a row published again (its relay died before deleting it) is
  recognised and not numbered a second time.
* ``{prefix}:fanout`` -- one entry per (message, stream), ``MAXLEN ~ 10000``, read by every worker with a
  blocking ``XREAD`` from the last id it saw. Unlike Pub/Sub, a worker whose connection drops resumes where it
  stopped, so no message is lost to a reconnect; and because each worker reads the stream itself (no consumer
  group), every worker receives every message exactly once.

Both ``XADD`` calls run in one Lua script, so a message is in the history exactly when it is in the fanout; the
history read is one script too, so the epoch, the latest id and the entries it returns belong together.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.exceptions import RedisError

from library_api.realtime.broker import (
    PUBLISHED_KEYS,
    BrokerUnavailable,
    ControlHandler,
    Deliver,
    Replay,
    new_epoch,
    replay_from,
)
from library_api.realtime.topics import Subscription, envelope_tail, now_iso, with_id

logger = logging.getLogger("library_api.realtime.redis")

FANOUT_MAXLEN = 10_000
"""Approximate length of the fanout stream: how far behind a worker may fall before it loses messages."""

EMPTY_EPOCH_TTL = 86_400
"""Seconds an epoch made for a stream nobody has published on yet is kept (a subscription makes it)."""

_EPOCH = """
local function epoch_of(skey, ekey, candidate, publishing, ttl)
  local epoch = redis.call('HGET', ekey, 'e')
  local exists = redis.call('EXISTS', skey) == 1
  if epoch and (exists or redis.call('HGET', ekey, 'u') ~= '1') then
    if publishing and not exists then
      redis.call('HSET', ekey, 'u', '1')
      redis.call('PERSIST', ekey)
    end
    return epoch, exists
  end
  redis.call('DEL', ekey)
  if publishing or exists then
    redis.call('HSET', ekey, 'e', candidate, 'u', '1')
  else
    redis.call('HSET', ekey, 'e', candidate, 'u', '0')
    redis.call('EXPIRE', ekey, ttl)
  end
  return candidate, exists
end
"""

_PUBLISH = (
    _EPOCH
    + """
local n = tonumber(ARGV[3])
local key = ARGV[4 + 3 * n]
if key ~= '' then
  local seen = KEYS[2 + 2 * n]
  if redis.call('ZSCORE', seen, key) then
    return {{}, {}}
  end
  redis.call('ZADD', seen, redis.call('INCR', KEYS[3 + 2 * n]), key)
  redis.call('ZREMRANGEBYRANK', seen, 0, -(tonumber(ARGV[5 + 3 * n]) + 1))
end
local ids = {}
local epochs = {}
for i = 1, n do
  local epoch = epoch_of(KEYS[1 + i], KEYS[1 + n + i], ARGV[3 + 2 * n + i], true, 0)
  local tail = ARGV[3 + i]
  local id = redis.call('XADD', KEYS[1 + i], 'MAXLEN', '=', ARGV[1], '0-*', 't', tail)
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', 's', ARGV[3 + n + i], 'i', id, 'e', epoch, 't', tail)
  ids[i] = id
  epochs[i] = epoch
end
return {ids, epochs}
"""
)

_HISTORY = (
    _EPOCH
    + """
local epoch, exists = epoch_of(KEYS[1], KEYS[2], ARGV[1], false, ARGV[2])
if not exists then
  return {epoch, '0-0', {}}
end
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)[1][1]
local entries = {}
if ARGV[3] == epoch and ARGV[4] ~= '' then
  entries = redis.call('XRANGE', KEYS[1], '(0-' .. ARGV[4], '+', 'COUNT', ARGV[5])
end
return {epoch, last, entries}
"""
)
"""Reads a stream's epoch (making one if it has none), its latest id and, for a position of that epoch, the
entries after it: all at one instant, so a reset cannot fall between the judgement and the read."""


def sequence(entry_id: str) -> int:
    """The per-stream message id inside a Redis entry id ``0-N``."""
    return int(entry_id.partition("-")[2])


class RedisBroker:
    """Publishes through one Lua script and reads the fanout stream in a background task."""

    def __init__(self, url: str, prefix: str, history_size: int, *, block_ms: int = 2000) -> None:
        self._redis: Redis = Redis.from_url(
            url,
            decode_responses=True,
            socket_connect_timeout=2,
            client_name=f"library-api:{prefix}",
            socket_timeout=block_ms / 1000 + 5,
            health_check_interval=30,
        )
        self._prefix = "{" + prefix + "}"
        self._fanout = f"{self._prefix}:fanout"
        self._history_size = history_size
        self._block_ms = block_ms
        self._publish = self._redis.register_script(_PUBLISH)
        self._history = self._redis.register_script(_HISTORY)
        self._reader: asyncio.Task[None] | None = None
        self._stopping = False
        self._deliver: Deliver | None = None
        self._on_control: ControlHandler | None = None

    def stopping(self) -> bool:
        """Whether :meth:`close` has begun (the reader leaves its loop)."""
        return self._stopping

    def key(self, stream: str) -> str:
        """The Redis key holding ``stream``'s history."""
        return f"{self._prefix}:s:{stream}"

    def epoch_key(self, stream: str) -> str:
        """The Redis key holding ``stream``'s epoch."""
        return f"{self._prefix}:e:{stream}"

    async def start(self, deliver: Deliver, on_control: ControlHandler) -> None:
        """Start reading the fanout from its current end (taken now, so nothing published after this is missed)."""
        self._deliver = deliver
        self._on_control = on_control
        try:
            last: str | None = await self._tail()
        except RedisError as exc:
            logger.warning("Redis is unreachable for live events (%s); will keep trying", exc)
            last = None
        self._reader = asyncio.create_task(self._read(last), name="realtime-redis-reader")

    async def publish(
        self, message_type: str, routes: Sequence[Subscription], data: Any, key: str | None = None
    ) -> list[int]:
        """Append to each route's stream and to the fanout in one atomic script (nothing for a known ``key``)."""
        if not routes:
            return []
        ts = now_iso()
        keys = [
            self._fanout,
            *(self.key(route.stream) for route in routes),
            *(self.epoch_key(route.stream) for route in routes),
            f"{self._prefix}:published",
            f"{self._prefix}:published:n",
        ]
        tails = [envelope_tail(message_type, route.topic, ts, data) for route in routes]
        args: list[str | int] = [
            self._history_size,
            FANOUT_MAXLEN,
            len(routes),
            *tails,
            *(route.stream for route in routes),
            *(new_epoch() for _ in routes),
            key or "",
            PUBLISHED_KEYS,
        ]
        try:
            ids, _epochs = await self._publish(keys=keys, args=args)
        except RedisError as exc:
            raise BrokerUnavailable(f"redis: {exc}") from exc
        return [sequence(str(entry_id)) for entry_id in ids]

    async def latest(self, stream: str) -> int:
        """The last id Redis generated for ``stream`` (kept even after trimming)."""
        return (await self.history(stream, None, None)).latest

    async def history(self, stream: str, after: int | None, epoch: str | None) -> Replay:
        """The kept entries of ``stream`` after ``after`` (at most the history size), if ``epoch`` is the stream's."""
        position: str | int = "" if after is None else after
        args: list[str | int] = [new_epoch(), EMPTY_EPOCH_TTL, epoch or "", position, self._history_size]
        try:
            current, last, entries = await self._history(keys=[self.key(stream), self.epoch_key(stream)], args=args)
        except RedisError as exc:
            raise BrokerUnavailable(f"redis: {exc}") from exc
        messages = []
        for entry_id, fields in entries:
            event_id = sequence(str(entry_id))
            flat = dict(zip(fields[::2], fields[1::2], strict=True))
            messages.append((event_id, with_id(event_id, str(flat["t"]), str(current))))
        return replay_from(messages, after, sequence(str(last)), str(current), epoch)

    async def announce(self, notice: dict[str, Any]) -> None:
        """Put a control notice on the fanout for every worker."""
        try:
            await self._redis.xadd(
                self._fanout, {"c": orjson.dumps(notice).decode()}, maxlen=FANOUT_MAXLEN, approximate=True
            )
        except RedisError as exc:
            raise BrokerUnavailable(f"redis: {exc}") from exc

    async def close(self) -> None:
        """Stop the reader and close the connection pool.

        Cancelling alone is not enough: when a cancellation meets redis-py's own read timeout, the client
        turns it into a retryable timeout and carries on. The reader therefore also checks a stop flag, and
        disconnecting the pool ends the blocking read at once.
        """
        self._stopping = True
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.cancel()
            done, _ = await asyncio.wait({reader}, timeout=0.5)
            if not done:
                await self._redis.connection_pool.disconnect()
                await asyncio.wait({reader}, timeout=self._block_ms / 1000 + 1)
            if reader.done() and not reader.cancelled() and reader.exception() is not None:
                logger.warning("the live event reader failed: %r", reader.exception())
        await self._redis.aclose()

    async def _tail(self) -> str:
        entries = await self._redis.xrevrange(self._fanout, "+", "-", count=1)
        return str(entries[0][0]) if entries else "0-0"

    async def _lost_since(self, last: str) -> bool:
        """Whether messages after ``last`` may be gone: the fanout was trimmed past it, or Redis lost its data."""
        if last == "0-0":
            return False
        entries = await self._redis.xrange(self._fanout, "-", "+", count=1)
        if not entries:
            return True  # we had read from it, so it existed: Redis restarted without its data
        first = tuple(int(part) for part in str(entries[0][0]).split("-"))
        return first > tuple(int(part) for part in last.split("-"))

    async def _read(self, last: str | None) -> None:
        failing = False
        delay = 0.1
        while not self.stopping():
            try:
                if last is None:
                    last = await self._tail()
                elif failing and await self._lost_since(last):
                    logger.warning("the event fanout was trimmed while this worker was away; clients will resync")
                    self._control({"kind": "resync"})
                response: Any = await self._redis.xread({self._fanout: last}, count=1000, block=self._block_ms)
            except RedisError as exc:
                if self.stopping():
                    return
                if not failing:
                    logger.warning("lost the connection to Redis for live events (%s); retrying", exc)
                failing = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            if failing:
                logger.info("live events: connection to Redis restored")
                failing = False
                delay = 0.1
            for _key, entries in response or ():
                for entry_id, fields in entries:
                    last = str(entry_id)
                    self._dispatch(fields)

    def _dispatch(self, fields: Any) -> None:
        if "c" in fields:
            self._control(orjson.loads(fields["c"]))
            return
        deliver = self._deliver
        if deliver is not None:
            event_id = sequence(fields["i"])
            epoch = fields.get("e")
            deliver(fields["s"], epoch, event_id, with_id(event_id, fields["t"], epoch))

    def _control(self, notice: dict[str, Any]) -> None:
        if self._on_control is not None:
            self._on_control(notice)
