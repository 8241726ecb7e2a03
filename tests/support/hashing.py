"""A real argon2 hasher that tests can hold at a gate, counting how many calls run at once."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

from library_api.dependencies.context import AppContext
from library_api.security.passwords import Hasher

T = TypeVar("T")


class GatedHasher:
    """Wraps the application's own hasher: every call does real argon2 work, after the gate lets it through.

    While ``gated``, each call waits (in its worker thread) until the test opens the gate for it; ``entered``
    counts calls that reached the hasher, ``active`` those inside it now, ``peak`` the most ever inside at once.
    """

    def __init__(self, inner: Hasher) -> None:
        self.inner = inner
        self.gated = False
        self._gate = threading.Semaphore(0)
        self._lock = threading.Lock()
        self.entered = 0
        self.active = 0
        self.peak = 0

    def open(self, calls: int = 1) -> None:
        """Let ``calls`` waiting (or future) calls through."""
        self._gate.release(calls)

    def open_all(self) -> None:
        """Stop gating and release every call waiting now."""
        self.gated = False
        self._gate.release(1000)

    def hash(self, password: str) -> str:
        return self._through(lambda: self.inner.hash(password))

    def verify(self, hash: str, password: str) -> bool:
        return self._through(lambda: self.inner.verify(hash, password))

    def check_needs_rehash(self, hash: str) -> bool:
        return self.inner.check_needs_rehash(hash)

    def _through(self, work: Callable[[], T]) -> T:
        with self._lock:
            self.entered += 1
            self.active += 1
            self.peak = max(self.peak, self.active)
        try:
            if self.gated and not self._gate.acquire(timeout=60):
                raise TimeoutError("the test never opened the gate")
            return work()
        finally:
            with self._lock:
                self.active -= 1


def gate_hasher(ctx: AppContext) -> GatedHasher:
    """Put a closed gate in front of the application's real hasher and return it."""
    hasher = GatedHasher(ctx.passwords.hasher)
    hasher.gated = True
    ctx.passwords.hasher = hasher
    return hasher
