"""Argon2id password hashing: off the event loop, a bounded number at a time, never under a database lock.

Each hash or verification costs tens of milliseconds of CPU and ``PASSWORD_HASH_MEMORY_KIB`` of memory by
design. It runs in a worker thread, so the event loop keeps serving; at most ``PASSWORD_HASH_CONCURRENCY`` run
at once per process, so a flood of password guesses cannot take every core and a multiple of that memory. A
caller that finds every slot taken waits its turn for up to ``PASSWORD_HASH_QUEUE_TIMEOUT`` seconds and then
gets a 503 ``password-check-busy`` problem with ``Retry-After``.

Callers must not hold a database transaction or a pooled connection while they await these methods: the
services read what they need, end their transaction, hash, and then write in a short transaction of their own
(see ``docs/security.md``, "Password guessing and lockout").
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import ClassVar, Protocol, TypeVar

from anyio import to_thread
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from library_api.problems import ServiceUnavailable

_DUMMY_PASSWORD = "timing-equaliser-for-unknown-accounts"  # noqa: S105 - not a credential

T = TypeVar("T")


class Hasher(Protocol):
    """What the service needs of a password hasher: ``argon2.PasswordHasher``'s three methods."""

    def hash(self, password: str) -> str:
        """A new PHC-format hash of ``password``."""

    def verify(self, hash: str, password: str) -> bool:
        """True when ``password`` matches; raises ``VerificationError`` or ``InvalidHashError`` otherwise."""

    def check_needs_rehash(self, hash: str) -> bool:
        """Whether ``hash`` was made with other parameters than the current ones."""


class PasswordCheckBusy(ServiceUnavailable):
    """Every hashing slot stayed taken for ``PASSWORD_HASH_QUEUE_TIMEOUT`` seconds: retry shortly."""

    slug: ClassVar[str] = "password-check-busy"


class PasswordService:
    """Hashes and verifies passwords with argon2id (the library's RFC 9106 low-memory profile by default).

    ``hasher`` is public so that a test can wrap the real one (to hold a check at a known point); everything
    else goes through :meth:`hash`, :meth:`verify` and :meth:`needs_rehash`. Verifying against an unknown
    account still spends the same time (against a dummy hash) so that login timing does not reveal which
    e-mail addresses are registered.
    """

    def __init__(self, hasher: Hasher | None = None, *, concurrency: int = 2, queue_timeout: float = 5.0) -> None:
        self.hasher: Hasher = hasher or PasswordHasher()
        self.concurrency = concurrency
        self.queue_timeout = queue_timeout
        self._dummy_hash = self.hasher.hash(_DUMMY_PASSWORD)
        self._slots: asyncio.Semaphore | None = None
        self.waiting = 0
        """Calls waiting for a hashing slot right now (observability and tests)."""
        self.running = 0
        """Hashes or verifications holding a slot right now (at most ``concurrency``)."""

    async def hash(self, password: str) -> str:
        """An argon2id hash of ``password`` in PHC string form."""
        hasher = self.hasher
        return await self._run(lambda: hasher.hash(password))

    async def verify(self, password_hash: str | None, password: str) -> bool:
        """Whether ``password`` matches; ``None`` (no such account) costs the same and answers ``False``."""
        target = password_hash or self._dummy_hash
        hasher = self.hasher

        def check() -> bool:
            try:
                return hasher.verify(target, password)
            except (VerificationError, InvalidHashError):
                return False

        matched = await self._run(check)
        return matched and password_hash is not None

    def needs_rehash(self, password_hash: str) -> bool:
        """Whether a stored hash uses weaker parameters than the current ones (cheap: it parses, not hashes)."""
        return self.hasher.check_needs_rehash(password_hash)

    async def _run(self, work: Callable[[], T]) -> T:
        """Run ``work`` in a worker thread once a slot is free (waiting at most ``queue_timeout`` seconds).

        The slot is held until the thread finishes, even when the caller is cancelled meanwhile (AnyIO waits for
        the thread before it delivers the cancellation), so the bound counts threads, not requests.
        """
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.concurrency)
        slots = self._slots
        self.waiting += 1
        try:
            async with asyncio.timeout(self.queue_timeout):
                await slots.acquire()
        except TimeoutError:
            raise PasswordCheckBusy(
                "Too many password checks are in progress; retry shortly.",
                retry_after=max(1, round(self.queue_timeout)),
            ) from None
        finally:
            self.waiting -= 1
        self.running += 1
        try:
            return await to_thread.run_sync(work)
        finally:
            self.running -= 1
            slots.release()
