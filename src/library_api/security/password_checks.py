"""One accounting of password guesses for every route that checks a password (login, password change).

Failed checks are counted per **(account, client address)** and per **account**; successful ones are not
counted, and clear their pair's failures. A check for account *X* from address *A* is refused with 429 before
any hashing when

1. *A* has failed ``RATE_LIMIT_LOGIN_ACCOUNT_ADDRESS`` times for *X* (5 in 15 minutes by default), or
2. *X* has failed ``RATE_LIMIT_LOGIN_ACCOUNT`` times from all addresses together (10 in 15 minutes): the account
   is under attack, and then only addresses that have not failed for *X* in their window, or that signed in to
   *X* successfully within ``RATE_LIMIT_LOGIN_KNOWN_ADDRESS_DAYS``, may still try.

So an attacker can never lock the owner out: the owner's address has no failures of its own (or is known from
an earlier sign-in) and keeps being admitted, while the attacker gets 5 guesses per address and, once the
account is under attack, one per fresh address. Accounts are keyed by the e-mail address normalised exactly as
the account lookup normalises it (:func:`account_name`), hashed (no address is stored in Redis); unknown
accounts are counted like known ones, so the answers do not reveal which exist.

Counts live in the rate limiter's storage (Redis across workers, or process memory), so every worker sees the
same failures. Within a process, checks for the same (account, address) run one at a time, so a burst of
concurrent guesses cannot all pass the check before the first failure is counted; across workers a burst can
overshoot by at most the number of workers.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from limits import RateLimitItem, parse

from library_api.problems import TooManyRequests
from library_api.resilience.rate_limits import Decision, Policy, RateLimiter, build_policy, ratelimit_header
from library_api.security.passwords import PasswordCheckBusy, PasswordService

ACCOUNT_ADDRESS_POLICY = "login-account-address"
ACCOUNT_POLICY = "login-account"
_KNOWN = "login-known-address"


def account_name(email: str) -> str:
    """The form under which accounts are stored and looked up (and counted here): stripped and lower-cased."""
    return email.strip().lower()


def account_key(email: str) -> str:
    """A stable, non-reversible key for an account name (e-mail addresses are not stored in Redis)."""
    return hashlib.sha256(account_name(email).encode()).hexdigest()[:32]


class _KeyedLocks:
    """One :class:`asyncio.Lock` per key while anyone holds or awaits it; forgotten when nobody does."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @asynccontextmanager
    async def hold(self, key: str, patience: float) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (None, 0))
        if lock is None:
            lock = asyncio.Lock()
        self._locks[key] = (lock, users + 1)
        try:
            try:
                async with asyncio.timeout(patience):
                    await lock.acquire()
            except TimeoutError:
                raise PasswordCheckBusy(
                    "Another check of this password is still in progress; retry shortly.",
                    retry_after=max(1, round(patience)),
                ) from None
            try:
                yield
            finally:
                lock.release()
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)


class PasswordChecks:
    """Verifies passwords for every route, counting failures and refusing guessers (see the module docs).

    With rate limiting off (``RATE_LIMIT_ENABLED``, off in development by default) nothing is counted or
    refused; the hashing is still bounded by :class:`PasswordService`.
    """

    def __init__(
        self,
        passwords: PasswordService,
        limiter: RateLimiter,
        *,
        enabled: bool,
        per_account_address: str,
        per_account: str,
        known_address_days: int,
    ) -> None:
        self.passwords = passwords
        self.limiter = limiter
        self.enabled = enabled
        self.account_address = build_policy(ACCOUNT_ADDRESS_POLICY, per_account_address)
        self.account = build_policy(ACCOUNT_POLICY, per_account)
        self.known: tuple[RateLimitItem, ...] = (
            (parse(f"1/{known_address_days} days"),) if known_address_days > 0 else ()
        )
        self._header = b", ".join((self.account_address.header, self.account.header)).decode()
        self._serial = _KeyedLocks()

    async def verify(self, email: str, address: str, password_hash: str | None, password: str) -> bool:
        """Whether ``password`` matches ``password_hash`` (``None``: no such account), counted for the account.

        Raises :class:`TooManyRequests` (429, with ``Retry-After`` and the ``RateLimit`` fields) without
        hashing when this address may not try this account now, and :class:`PasswordCheckBusy` (503) when the
        hashing capacity stays taken. Call it with no database transaction or pooled connection held.
        """
        if not self.enabled:
            return await self.passwords.verify(password_hash, password)
        account = account_key(email)
        async with self._serial.hold(f"{account}|{address}", self.passwords.queue_timeout):
            await self._admit(account, address)
            matched = await self.passwords.verify(password_hash, password)
            if matched:
                await self._succeeded(account, address)
            else:
                await self._failed(account, address)
        return matched

    async def _admit(self, account: str, address: str) -> None:
        own = await self.limiter.peek(self.account_address.items, ACCOUNT_ADDRESS_POLICY, account, address)
        if not own.allowed:
            self._refuse(self.account_address, own, own.reset_after)
        if own.remaining == own.item.amount:
            return  # this address has not failed for this account: the owner's case, never refused
        everyone = await self.limiter.peek(self.account.items, ACCOUNT_POLICY, account)
        if everyone.allowed or await self._is_known(account, address):
            return
        # Under attack, this address may try again once its own failures have left their window.
        self._refuse(self.account, everyone, own.item.get_expiry())

    def _refuse(self, policy: Policy, decision: Decision, retry_after: int) -> None:
        raise TooManyRequests(
            "Too many failed password attempts for this account from this address; retry later.",
            retry_after=max(retry_after, 1),
            headers={"RateLimit-Policy": self._header, "RateLimit": ratelimit_header(policy, decision).decode()},
        )

    async def _is_known(self, account: str, address: str) -> bool:
        if not self.known:
            return False
        mark = await self.limiter.peek(self.known, _KNOWN, account, address)
        return not mark.allowed

    async def _failed(self, account: str, address: str) -> None:
        await self.limiter.hit(self.account_address.items, ACCOUNT_ADDRESS_POLICY, account, address)
        await self.limiter.hit(self.account.items, ACCOUNT_POLICY, account)

    async def _succeeded(self, account: str, address: str) -> None:
        await self.limiter.clear(self.account_address.items, ACCOUNT_ADDRESS_POLICY, account, address)
        if self.known:
            await self.limiter.clear(self.known, _KNOWN, account, address)
            await self.limiter.hit(self.known, _KNOWN, account, address)
