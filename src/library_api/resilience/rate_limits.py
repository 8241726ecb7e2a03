"""Rate-limit policies and the counting behind them: the moving-window algorithm, in Redis or in process.

Across workers the counts live in Redis through the ``limits`` library (its moving-window strategy and atomic
Lua scripts), so exactly N of N+k requests pass within a window whichever workers serve them. Without Redis, or
while the Redis circuit is open, each worker counts in its own memory: the limit then holds per process, which
is documented as the degraded mode.

The in-process count is ours (:class:`LocalWindows`, tested to decide exactly as ``limits`` does): the
library's in-memory store expires entries from a task that hops to the thread pool on every call, which
nothing on this service's request path may use, and its per-call layers cost more than the count itself.

It sits with the other protections against overload, below the HTTP middleware: the route policies of the rate
limit middleware, the password checks of :mod:`library_api.security.password_checks`, the password-reset
requests and the WebSocket admission all count here.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from limits import RateLimitItem, parse_many
from limits.aio.storage import RedisStorage
from limits.aio.strategies import MovingWindowRateLimiter

from library_api.resilience.redis import GuardedRedis, RedisUnavailable

_SWEEP_EVERY = 4096


class LocalWindows:
    """Moving windows in this process's memory: ``limits``' moving-window semantics, answered in one step.

    A hit is admitted when fewer than ``limit`` hits lie in the last ``expiry`` seconds (as ``limits``'
    ``acquire_entry``); the answer also carries what ``get_moving_window`` would report (the oldest hit in the
    window and their number). Windows expire lazily; idle keys are swept every few thousand calls or when
    ``max_keys`` is reached, so the memory stays bounded whatever the number of callers. ``clock`` is the wall
    clock in seconds (``time.time``, as ``limits`` uses); a test passes one it moves itself.
    """

    def __init__(self, max_keys: int = 200_000, clock: Callable[[], float] = time.time) -> None:
        self.max_keys = max_keys
        self.clock = clock
        self._windows: dict[str, tuple[float, deque[float]]] = {}
        self._calls = 0

    def __len__(self) -> int:
        return len(self._windows)

    def _sweep(self, now: float) -> None:
        self._calls += 1
        if self._calls % _SWEEP_EVERY and len(self._windows) < self.max_keys:
            return
        self._windows = {
            key: (expiry, window)
            for key, (expiry, window) in self._windows.items()
            if window and window[-1] > now - expiry
        }
        while len(self._windows) >= self.max_keys:
            del self._windows[next(iter(self._windows))]

    def count(self, key: str, limit: int, expiry: int) -> tuple[bool, float, int]:
        """One hit: whether it is admitted, the oldest hit still in the window, and how many the window holds."""
        return self._apply(key, limit, expiry, record=True)

    def peek(self, key: str, limit: int, expiry: int) -> tuple[bool, float, int]:
        """What :meth:`count` would answer, without counting: a check before work that may or may not count."""
        return self._apply(key, limit, expiry, record=False)

    def clear(self, key: str) -> None:
        """Forget every hit of ``key`` (a success that wipes the failures counted before it)."""
        self._windows.pop(key, None)

    def _apply(self, key: str, limit: int, expiry: int, *, record: bool) -> tuple[bool, float, int]:
        now = self.clock()
        self._sweep(now)
        entry = self._windows.get(key)
        if entry is None:
            window: deque[float] = deque()
            if record:
                self._windows[key] = (expiry, window)
        else:
            window = entry[1]
            horizon = now - expiry
            while window and window[0] <= horizon:
                window.popleft()
        admitted = len(window) < limit
        if admitted and record:
            window.append(now)
        return admitted, window[0] if window else now, len(window)


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of one request against a policy, with what the ``RateLimit`` header reports."""

    allowed: bool
    item: RateLimitItem
    remaining: int
    reset_after: int
    shared: bool


class RateLimiter:
    """Applies lists of limits to identities, in Redis when it can and in process memory otherwise."""

    def __init__(self, *, redis: GuardedRedis | None, key_prefix: str) -> None:
        self.local = LocalWindows()
        self.redis = redis
        self.shared: MovingWindowRateLimiter | None = None
        if redis is not None:
            shared_pool: dict[str, Any] = {"connection_pool": redis.pool}
            storage = RedisStorage(
                "async+redis://", implementation="redispy", key_prefix=f"{key_prefix}ratelimit", **shared_pool
            )
            self.shared = MovingWindowRateLimiter(storage)

    async def hit(self, items: Sequence[RateLimitItem], *identity: str) -> Decision:
        """Count one request against every item; the decision reports the refusing or the tightest item."""
        return await self._decide(items, identity, record=True)

    async def peek(self, items: Sequence[RateLimitItem], *identity: str) -> Decision:
        """What :meth:`hit` would decide now, without counting anything."""
        return await self._decide(items, identity, record=False)

    async def _decide(self, items: Sequence[RateLimitItem], identity: tuple[str, ...], *, record: bool) -> Decision:
        """Through Redis when it is configured and reachable, else in this process."""
        if self.shared is not None and self.redis is not None:
            shared = self.shared
            try:
                return await self.redis.call(lambda _client: _shared_decision(shared, items, identity, record=record))
            except RedisUnavailable:
                pass
        return self._local_decision(items, identity, record=record)

    async def clear(self, items: Sequence[RateLimitItem], *identity: str) -> None:
        """Forget every hit counted for ``identity`` under these items."""
        if self.shared is not None and self.redis is not None:
            shared = self.shared
            try:
                await self.redis.call(lambda _client: _clear(shared, items, identity))
                return
            except RedisUnavailable:
                pass
        for item in items:
            self.local.clear(item.key_for(*identity))

    def _local_decision(
        self, items: Sequence[RateLimitItem], identity: Sequence[str], *, record: bool = True
    ) -> Decision:
        count = self.local.count if record else self.local.peek
        tightest = _Tightest()
        for item in items:
            expiry = item.get_expiry()
            admitted, oldest, hits = count(item.key_for(*identity), item.amount, expiry)
            reset_after = max(0, math.ceil(oldest + expiry - self.local.clock()))
            if tightest.refused(Decision(admitted, item, max(item.amount - hits, 0), reset_after, False)):
                break
        return tightest.decision()


class _Tightest:
    """The decision a list of limits reports, found one item at a time.

    The first refusal ends the search (the items after it are not counted); without one, the admitting item with
    the fewest requests left.
    """

    __slots__ = ("_found",)

    def __init__(self) -> None:
        self._found: Decision | None = None

    def refused(self, decision: Decision) -> bool:
        """Note one item's decision; whether it refuses (and so ends the search)."""
        if not decision.allowed:
            self._found = decision
            return True
        if self._found is None or decision.remaining < self._found.remaining:
            self._found = decision
        return False

    def decision(self) -> Decision:
        """The refusing or the tightest decision noted."""
        assert self._found is not None, "a policy has at least one limit"
        return self._found


async def _shared_decision(
    limiter: MovingWindowRateLimiter, items: Sequence[RateLimitItem], identity: Sequence[str], *, record: bool
) -> Decision:
    """The decision counted in Redis: a hit on each item in turn (``record``), or what a hit would decide."""
    tightest = _Tightest()
    for item in items:
        counted = await limiter.hit(item, *identity) if record else None
        stats = await limiter.get_window_stats(item, *identity)
        allowed = stats.remaining > 0 if counted is None else counted
        reset_after = max(0, math.ceil(stats.reset_time - time.time()))
        if tightest.refused(Decision(allowed, item, max(stats.remaining, 0), reset_after, True)):
            break
    return tightest.decision()


async def _clear(limiter: MovingWindowRateLimiter, items: Sequence[RateLimitItem], identity: Sequence[str]) -> None:
    for item in items:
        await limiter.clear(item, *identity)


DEFAULT_POLICY = "default"


def builtin_route_limits(api_prefix: str) -> dict[str, str]:
    """The stricter per-address limits of the authentication routes (an operator's entries replace them)."""
    return {
        f"POST {api_prefix}/auth/login": "10/minute;100/hour",
        f"POST {api_prefix}/auth/register": "20/hour",
        f"POST {api_prefix}/auth/refresh": "60/minute",
        f"POST {api_prefix}/auth/password-reset": "5/minute;20/hour",
        f"POST {api_prefix}/auth/password-reset/confirm": "10/minute;50/hour",
    }


@dataclass(frozen=True, slots=True)
class Policy:
    """A named list of limits, counted per client address or per caller, with its ``RateLimit-Policy`` value."""

    name: str
    items: tuple[RateLimitItem, ...]
    per_address: bool
    header: bytes

    def item_name(self, item: RateLimitItem) -> str:
        """The name under which ``item`` appears in the headers (the policy's, qualified by window if several)."""
        return self.name if len(self.items) == 1 else f"{self.name}/{item.get_expiry()}s"


def build_policy(name: str, text: str, *, per_address: bool = False) -> Policy:
    """A policy named ``name`` from ``limits`` notation (``"5/15 minutes"``), with its ``RateLimit-Policy`` value."""
    items = tuple(parse_many(text))
    names = [name if len(items) == 1 else f"{name}/{item.get_expiry()}s" for item in items]
    header = ", ".join(f'"{n}";q={item.amount};w={item.get_expiry()}' for n, item in zip(names, items, strict=True))
    return Policy(name, items, per_address, header.encode())


class RateLimitPolicies:
    """The policy of every route, resolved from the settings once.

    The limits on password guessing are not route policies: :mod:`library_api.security.password_checks` keeps
    them, per account and address, for every route that checks a password.
    """

    def __init__(self, default: str, routes: Mapping[str, str], builtin: Mapping[str, str]) -> None:
        self.default = build_policy(DEFAULT_POLICY, default, per_address=False)
        self.routes: dict[tuple[str, str], Policy] = {}
        for key, text in builtin.items():
            self._add(key, text, per_address=True)
        for key, text in routes.items():
            self._add(key, text, per_address=key in builtin)

    def _add(self, key: str, text: str, *, per_address: bool) -> None:
        method, _, template = key.partition(" ")
        self.routes[(method.upper(), template.strip())] = build_policy(key, text, per_address=per_address)

    def for_route(self, method: str, template: str) -> Policy:
        """The policy for a method and route template."""
        return self.routes.get((method, template), self.default)


def ratelimit_header(policy: Policy, decision: Decision) -> bytes:
    """The ``RateLimit`` field value for a decision."""
    return f'"{policy.item_name(decision.item)}";r={decision.remaining};t={decision.reset_after}'.encode()


def limit_headers(policy: Policy, decision: Decision) -> list[tuple[bytes, bytes]]:
    """``RateLimit-Policy`` and ``RateLimit`` as raw header pairs."""
    return [(b"ratelimit-policy", policy.header), (b"ratelimit", ratelimit_header(policy, decision))]
