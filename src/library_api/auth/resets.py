"""Forgotten passwords: a single-use link by e-mail, and the new password it sets.

**Asking** (:meth:`PasswordResets.request`) answers the same, in the same way, whatever the address: the
request path only counts the address against its per-account limit (known and unknown addresses alike) and puts
it on an in-memory queue; a background task then looks the account up and, for an active one, issues a link
and queues the mail in the e-mail outbox. So neither the answer nor the time it takes depends on whether an
account exists: the look-up, the writes and the mail happen after the response, for every address the same
way up to the look-up. A request lost with its process (a crash between the answer and the background work)
is lost; the person asks again.

**The link** carries a 256-bit random token in its fragment (``PASSWORD_RESET_URL#token=...``, never sent to a
server by a browser, so it stays out of access logs and ``Referer``). Only its SHA-256 is stored
(``password_resets``). It works once, until ``PASSWORD_RESET_EXPIRE_MINUTES`` have passed, and only while it is
the account's newest: issuing a link ends the account's older ones, and so does every end of the account's
sessions (a password change, logout everywhere, a role change, deactivation). The outbox row holds the link
until the SMTP server has accepted the mail; its copy of the token is then replaced.

**Confirming** (:meth:`PasswordResets.confirm`) applies the registration password policy, spends the token
(a conditional update: of two concurrent uses exactly one wins), sets the new password and ends every session
of the account: refresh families revoked, ``token_version`` raised (access tokens refused on every worker within
``PRINCIPAL_CACHE_TTL``, live WebSocket connections closed with 4401 by their credential checks).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Row, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession

from library_api.auth.models import PasswordReset
from library_api.config import Settings
from library_api.db.base import utcnow
from library_api.db.engine import Database, begin_write
from library_api.lifecycle.loops import Loops
from library_api.notifications.messages import render_password_reset
from library_api.notifications.models import EmailKind
from library_api.notifications.service import Notifier
from library_api.problems import BadRequest, Forbidden, NotFound, ProblemError, ServiceUnavailable, TooManyRequests
from library_api.resilience.rate_limits import RateLimiter, build_policy, ratelimit_header
from library_api.security.password_checks import account_key
from library_api.security.passwords import PasswordService
from library_api.security.tokens import digest_token
from library_api.users.models import User
from library_api.users.service import UserService, normalize_email

logger = logging.getLogger("library_api.auth")

_STATE = select(
    PasswordReset.id, PasswordReset.user_id, PasswordReset.used_at, PasswordReset.revoked_at, PasswordReset.expires_at
)

ACCOUNT_POLICY = "password-reset-account"
QUEUE_SIZE = 1000
"""Requests waiting for the background task; a full queue answers 503 (the same for every address)."""


class InvalidResetToken(BadRequest):
    """The token is not one this service issued (mistyped, truncated, or made up)."""

    slug, title = "invalid-reset-token", "Invalid password-reset token"


class ResetTokenGone(ProblemError):
    """The token was issued but can no longer be used; ``slug`` says why."""

    status = 410


class ResetTokenUsed(ResetTokenGone):
    """The token has set a password already; a link works once."""

    slug, title = "reset-token-used", "Password-reset link already used"


class ResetTokenExpired(ResetTokenGone):
    """The token is older than ``PASSWORD_RESET_EXPIRE_MINUTES``."""

    slug, title = "reset-token-expired", "Password-reset link expired"


class ResetTokenRevoked(ResetTokenGone):
    """A newer link was issued, or the account's sessions were ended, after this one."""

    slug, title = "reset-token-revoked", "Password-reset link replaced"


class PasswordResetUnavailable(ServiceUnavailable):
    """Reset by e-mail is not configured here, or its queue is full."""

    slug, title = "password-reset-unavailable", "Password reset unavailable"


@dataclass(frozen=True, slots=True)
class IssuedLink:
    """A link just issued: the raw token (shown once) and the full link that carries it."""

    user_id: int
    email: str
    token: str
    link: str
    expires_at: datetime


class PasswordResets:
    """Issues, mails and spends password-reset links (see the module docs)."""

    def __init__(
        self,
        settings: Settings,
        database: Database,
        users: UserService,
        passwords: PasswordService,
        limiter: RateLimiter,
        notifier: Notifier,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.clock = clock
        """The current time (aware UTC); injectable so that expiry is tested without waiting."""
        self.enabled = settings.password_reset_enabled
        self.base_url = settings.password_reset_url
        self.lifetime = timedelta(minutes=settings.password_reset_expire_minutes)
        self.limited = settings.effective_rate_limit_enabled
        self.account_policy = build_policy(ACCOUNT_POLICY, settings.rate_limit_password_reset_account)
        self.processed = 0
        """Requests the background task has finished with (mailed or not), for tests and metrics."""
        self._database = database
        self._users = users
        self._passwords = passwords
        self._limiter = limiter
        self._notifier = notifier
        self._queue: asyncio.Queue[str] = asyncio.Queue(maxsize=QUEUE_SIZE)
        self._loops = Loops()

    # ----- asking -----

    async def request(self, email: str) -> None:
        """Accept a request for ``email``'s account; the same outcome and work whether or not it exists.

        Raises 503 when reset by e-mail is not configured (or the queue is full) and 429 when the address has
        been asked for too often (``RATE_LIMIT_PASSWORD_RESET_ACCOUNT``, counted for every address alike).
        """
        if not self.enabled:
            raise PasswordResetUnavailable(
                "Password reset by e-mail is not available on this service; ask its operators.", retry_after=3600
            )
        if self.limited:
            decision = await self._limiter.hit(self.account_policy.items, ACCOUNT_POLICY, account_key(email))
            if not decision.allowed:
                raise TooManyRequests(
                    "Too many password-reset requests for this address; retry later.",
                    retry_after=max(decision.reset_after, 1),
                    headers={
                        "RateLimit-Policy": self.account_policy.header.decode(),
                        "RateLimit": ratelimit_header(self.account_policy, decision).decode(),
                    },
                )
        try:
            self._queue.put_nowait(normalize_email(email))
        except asyncio.QueueFull:
            raise PasswordResetUnavailable("Too many password resets are waiting; retry shortly.") from None

    def start(self) -> None:
        """Start the background task that issues and mails links (nothing when reset by e-mail is off)."""
        if self.enabled and not self._loops.running:
            self._loops.start("password-resets", self._work)

    async def stop(self) -> None:
        """Finish the requests already accepted (bounded), then stop."""
        if not self._loops.running:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._drain(), timeout=5)
        await self._loops.stop()

    async def _drain(self) -> None:
        while not self._queue.empty():
            await self._handle(self._queue.get_nowait())

    async def _work(self) -> None:
        """One round of the background task: the next accepted request (its errors are logged by ``_handle``)."""
        await self._handle(await self._queue.get())

    async def _handle(self, email: str) -> None:
        try:
            await self.issue(email, mail=True)
        except (SQLAlchemyError, OSError) as exc:
            logger.warning("could not issue a password-reset link (%s); the person may ask again", exc)
        finally:
            self.processed += 1

    async def issue(self, email: str, *, mail: bool) -> IssuedLink | None:
        """Issue a link for the active account with this address, ending its older ones; ``None`` without one.

        With ``mail`` the link is queued in the outbox in the same transaction (and the sender woken).
        """
        async with self._database.sessionmaker() as session:
            await begin_write(session)
            user = (
                await session.execute(select(User).where(User.email == normalize_email(email)).with_for_update())
            ).scalar_one_or_none()
            if user is None or not user.is_active:
                return None
            now = self.clock()
            token = secrets.token_urlsafe(32)
            await session.execute(
                update(PasswordReset)
                .where(
                    PasswordReset.user_id == user.id,
                    PasswordReset.used_at.is_(None),
                    PasswordReset.revoked_at.is_(None),
                )
                .values(revoked_at=now)
            )
            issued = IssuedLink(user.id, user.email, token, f"{self.base_url}#token={token}", now + self.lifetime)
            digest = digest_token(token)
            session.add(PasswordReset(user_id=user.id, token_hash=digest, created_at=now, expires_at=issued.expires_at))
            if mail:
                minutes = int(self.lifetime.total_seconds() // 60)
                subject, body = render_password_reset(name=user.full_name, link=issued.link, minutes=minutes)
                self._notifier.add_mail(session, EmailKind.PASSWORD_RESET, user.email, subject, body)
            await session.commit()
        if mail:
            self._notifier.wake()
        return issued

    # ----- confirming -----

    async def confirm(self, session: AsyncSession, token: str, password: str) -> None:
        """Spend ``token`` to set ``password`` and end every session of its account; refused if not usable."""
        self._users.check_new_password(password)
        by_digest = _STATE.where(PasswordReset.token_hash == digest_token(token))
        reset = (await session.execute(by_digest)).one_or_none()
        await session.rollback()
        if reset is None:
            raise InvalidResetToken("This password-reset link is not one the service issued; ask for a new one.")
        self._refuse_unusable(reset)
        password_hash = await self._passwords.hash(password)
        await begin_write(session)
        now = self.clock()
        spent = await session.execute(
            update(PasswordReset)
            .where(
                PasswordReset.id == reset.id,
                PasswordReset.used_at.is_(None),
                PasswordReset.revoked_at.is_(None),
                PasswordReset.expires_at > now,
            )
            .values(used_at=now)
            .execution_options(synchronize_session=False)
        )
        if spent.rowcount != 1:  # type: ignore[attr-defined]
            await session.rollback()
            self._refuse_unusable((await session.execute(by_digest)).one())
            raise ResetTokenUsed("This password-reset link has just been used by another request.")
        await self.set_password_in(session, reset.user_id, password_hash, reason="password_reset")

    def _refuse_unusable(self, reset: Row[int, int, datetime | None, datetime | None, datetime]) -> None:
        if reset.used_at is not None:
            raise ResetTokenUsed("This password-reset link has been used already; a link works once.")
        if reset.revoked_at is not None:
            raise ResetTokenRevoked(
                "This password-reset link was replaced by a newer one, or the account's password or sessions "
                "changed since it was sent; use the newest link, or ask for a new one."
            )
        if reset.expires_at <= self.clock():
            raise ResetTokenExpired("This password-reset link has expired; ask for a new one.")

    async def set_password_in(self, session: AsyncSession, user_id: int, password_hash: str, *, reason: str) -> User:
        """In the open write transaction: set the account's password, end its sessions, commit, cache the state."""
        user = (
            await session.execute(
                select(User).where(User.id == user_id).with_for_update().execution_options(populate_existing=True)
            )
        ).scalar_one_or_none()
        if user is None:
            raise NotFound("The account of this link no longer exists.")
        if not user.is_active:
            raise Forbidden("This account is deactivated.")
        await self._users.set_password(session, user, password_hash, reason=reason)
        await session.commit()
        self._users.remember(user)
        return user

    async def set_password(self, email: str, password: str) -> User:
        """An operator's reset: set ``password`` on the account with this address and end all its sessions."""
        self._users.check_new_password(password)
        password_hash = await self._passwords.hash(password)
        async with self._database.sessionmaker() as session:
            await begin_write(session)
            user_id = (
                await session.execute(select(User.id).where(User.email == normalize_email(email)))
            ).scalar_one_or_none()
            if user_id is None:
                raise NotFound("No account has this e-mail address.")
            return await self.set_password_in(session, user_id, password_hash, reason="password_reset")
