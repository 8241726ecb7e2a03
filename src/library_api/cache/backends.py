"""Where cached answers live: this process's memory, or Redis shared by every worker.

Both stores keep answers under keys that embed a *generation* of the thing they describe (one per book, one for
all list pages) and a global *epoch*. Invalidating is incrementing a generation: every answer stored under the
old one becomes unreachable at once (and expires on its own), and an answer that a reader was still computing
from data older than the change is stored under the old generation, where nobody looks: the classic race
between a slow reader and a writer cannot leave a stale answer behind. Incrementing the epoch forgets
everything (after Redis was unreachable while something changed).

The stores also keep the catalogue's *watermark*: the database position (PostgreSQL WAL LSN) of the latest
catalogue change, which replica reads must have caught up with (see :mod:`library_api.books.catalogue_cache`).
One lookup is one round trip to Redis (a Lua script reads epoch, generation, watermark and the answer).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from library_api.resilience.redis import GuardedRedis

_LOOKUP = """
local epoch = redis.call('GET', KEYS[1]) or '0'
local generation = redis.call('GET', KEYS[2]) or '0'
local watermark = redis.call('GET', KEYS[3]) or '0'
local token = epoch .. ':' .. generation
local value = redis.call('GET', ARGV[1] .. token .. ':' .. ARGV[2])
return {token, value or false, watermark}
"""

_INVALIDATE = """
for i = 1, #KEYS - 1 do
    redis.call('INCR', KEYS[i])
end
local watermark = tonumber(ARGV[1])
if watermark > 0 then
    local current = tonumber(redis.call('GET', KEYS[#KEYS]) or '0')
    if watermark > current then
        redis.call('SET', KEYS[#KEYS], ARGV[1])
    end
end
return 1
"""


@dataclass(frozen=True, slots=True)
class Lookup:
    """What a lookup found: the token to store a fresh answer under, the answer if any, and the watermark."""

    token: str
    value: bytes | None
    watermark: int


class CacheBackend(Protocol):
    """A store of cached answers with generations, an epoch and a watermark."""

    name: str

    def recoveries(self) -> int:
        """How many times the store was unreachable and came back (then changes may have gone unannounced)."""
        ...

    async def lookup(self, scope: str, name: str) -> Lookup:
        """The current token of ``scope`` and the answer stored under it as ``name``, if any."""
        ...

    async def store(self, scope: str, token: str, name: str, value: bytes, ttl: float) -> None:
        """Keep ``value`` under ``token`` for ``ttl`` seconds."""
        ...

    async def invalidate(self, scopes: Sequence[str], watermark: int) -> None:
        """Start new generations of ``scopes`` and raise the watermark to ``watermark`` (0: leave it)."""
        ...

    async def flush(self) -> None:
        """Forget every answer (a new epoch)."""
        ...


class MemoryBackend:
    """The store of a single process: dictionaries, the answers bounded in number (least recently used go).

    Entries expire by ``clock`` (monotonic seconds; public so that a test can move a running store's time).
    """

    name = "memory"

    def __init__(self, max_entries: int) -> None:
        self.clock: Callable[[], float] = time.monotonic
        self.max_entries = max_entries
        self._epoch = 0
        self._generations: dict[str, int] = {}
        self._watermark = 0
        self._entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()

    def _token(self, scope: str) -> str:
        return f"{self._epoch}:{self._generations.get(scope, 0)}"

    def recoveries(self) -> int:
        """Process memory is never unreachable."""
        return 0

    async def lookup(self, scope: str, name: str) -> Lookup:
        """See :meth:`CacheBackend.lookup`."""
        token = self._token(scope)
        key = f"{token}:{scope}:{name}"
        entry = self._entries.get(key)
        value = None
        if entry is not None:
            if entry[0] > self.clock():
                value = entry[1]
                self._entries.move_to_end(key)
            else:
                del self._entries[key]
        return Lookup(token, value, self._watermark)

    async def store(self, scope: str, token: str, name: str, value: bytes, ttl: float) -> None:
        """See :meth:`CacheBackend.store`; answers for a token that is no longer current are not kept."""
        if token != self._token(scope):
            return
        self._entries[f"{token}:{scope}:{name}"] = (self.clock() + ttl, value)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    async def invalidate(self, scopes: Sequence[str], watermark: int) -> None:
        """See :meth:`CacheBackend.invalidate`."""
        for scope in scopes:
            self._generations[scope] = self._generations.get(scope, 0) + 1
        self._watermark = max(self._watermark, watermark)

    async def flush(self) -> None:
        """See :meth:`CacheBackend.flush`."""
        self._epoch += 1
        self._entries.clear()


class RedisBackend:
    """The store shared by every worker and host: Redis, through the guarded client (so it can be down)."""

    name = "redis"

    def __init__(self, redis: GuardedRedis, prefix: str) -> None:
        self.redis = redis
        self.prefix = prefix
        self._lookup = redis.script(_LOOKUP)
        self._invalidate = redis.script(_INVALIDATE)

    def recoveries(self) -> int:
        """How often the Redis circuit has closed again after opening."""
        return self.redis.breaker.recoveries

    def _generation_key(self, scope: str) -> str:
        return f"{self.prefix}gen:{scope}"

    @property
    def _epoch_key(self) -> str:
        return f"{self.prefix}epoch"

    @property
    def _watermark_key(self) -> str:
        return f"{self.prefix}watermark"

    async def lookup(self, scope: str, name: str) -> Lookup:
        """See :meth:`CacheBackend.lookup`; raises ``RedisUnavailable`` when Redis cannot answer."""
        keys = [self._epoch_key, self._generation_key(scope), self._watermark_key]
        token, value, watermark = await self.redis.call(
            lambda _client: self._lookup(keys=keys, args=[f"{self.prefix}d:", f"{scope}:{name}"])
        )
        return Lookup(_text(token), value, int(watermark))

    async def store(self, scope: str, token: str, name: str, value: bytes, ttl: float) -> None:
        """See :meth:`CacheBackend.store`."""
        milliseconds = int(ttl * 1000)
        if milliseconds > 0:
            key = f"{self.prefix}d:{token}:{scope}:{name}"
            await self.redis.call(lambda client: client.set(key, value, px=milliseconds))

    async def invalidate(self, scopes: Sequence[str], watermark: int) -> None:
        """See :meth:`CacheBackend.invalidate`."""
        keys = [*(self._generation_key(scope) for scope in scopes), self._watermark_key]
        await self.redis.call(lambda _client: self._invalidate(keys=keys, args=[watermark]))

    async def flush(self) -> None:
        """See :meth:`CacheBackend.flush`."""
        await self.redis.call(lambda client: client.incr(self._epoch_key))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
