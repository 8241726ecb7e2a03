"""Login, refresh-token rotation with reuse detection, and logout.

Each login starts a refresh *family*. Refreshing spends the presented token (an atomic conditional update, so
two concurrent refreshes cannot both win) and issues the next one in the same family. Presenting a token that
was already spent means it was copied: the whole family is revoked, and the thief and the owner both have to
log in again. The account's ``token_version`` goes up with it, so the access tokens already issued (the thief's
included) stop working within ``PRINCIPAL_CACHE_TTL`` instead of living out their lifetime; the owner's other
sessions keep their refresh tokens and get new access tokens on their next refresh.

Logging out one session revokes its refresh family only: its access token lives until it expires
(``ACCESS_TOKEN_EXPIRE_MINUTES``). Ending it too would mean a bumped ``token_version``, which ends every access
token of the account on every device; ``/auth/logout-all`` does exactly that.

A login checks the password with no transaction open (through :class:`PasswordChecks`, which counts failures
per account and address) and then writes the new family in a short transaction that first makes sure the
password did not change meanwhile.
"""

from __future__ import annotations

import uuid
from datetime import timedelta

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from library_api.auth.models import PasswordReset, RefreshFamily, RefreshToken
from library_api.auth.schemas import TokenPair
from library_api.db.base import utcnow
from library_api.db.engine import begin_write
from library_api.problems import Forbidden, Unauthorized
from library_api.security.password_checks import PasswordChecks
from library_api.security.passwords import PasswordService
from library_api.security.tokens import TokenService, digest_token, new_refresh_token
from library_api.users.accounts import AccountState, AccountStateCache
from library_api.users.models import User
from library_api.users.service import UserService


class AuthService:
    """Issues and rotates credentials for user accounts."""

    def __init__(
        self,
        users: UserService,
        passwords: PasswordService,
        checks: PasswordChecks,
        tokens: TokenService,
        accounts: AccountStateCache,
        refresh_lifetime: timedelta,
    ) -> None:
        self._users = users
        self._passwords = passwords
        self._checks = checks
        self._tokens = tokens
        self._accounts = accounts
        self._refresh_lifetime = refresh_lifetime

    async def login(self, session: AsyncSession, email: str, password: str, address: str) -> TokenPair:
        """Check the password and start a new refresh family; wrong e-mail and wrong password look the same.

        ``address`` is the client's: failures are counted for the account from it, and a guesser is refused
        with 429 (see :mod:`library_api.security.password_checks`). A password changed while this one was being
        checked is a 409; nothing is written then.
        """
        read = await self._users.credentials(session, email=email)
        password_hash = read.password_hash if read else None
        if not await self._checks.verify(email, address, password_hash, password) or read is None:
            raise Unauthorized("Incorrect e-mail address or password.", error="invalid_grant")
        if not read.is_active:
            raise Forbidden("This account is deactivated.")
        rehashed = await self._passwords.hash(password) if self._passwords.needs_rehash(read.password_hash) else None
        user = await self._users.lock_unchanged(session, read, sessions_too=False)
        if not user.is_active:
            raise Forbidden("This account is deactivated.")
        if rehashed is not None:
            user.password_hash = rehashed
        family = RefreshFamily(id=str(uuid.uuid4()), user_id=user.id, created_at=utcnow())
        session.add(family)
        pair = self._issue(session, user, family.id)
        await session.commit()
        return pair

    async def refresh(self, session: AsyncSession, presented: str) -> TokenPair:
        """Rotate a refresh token; a spent or revoked one revokes its whole family and is refused."""
        await begin_write(session)
        now = utcnow()
        row = (
            await session.execute(
                select(RefreshToken, RefreshFamily)
                .join(RefreshFamily, RefreshFamily.id == RefreshToken.family_id)
                .where(RefreshToken.token_hash == digest_token(presented))
            )
        ).one_or_none()
        if row is None:
            raise Unauthorized("Unknown refresh token.", error="invalid_grant")
        token, family = row[0], row[1]
        if family.revoked_at is not None:
            raise Unauthorized("This refresh token has been revoked.", error="invalid_grant")
        if token.expires_at <= now:
            raise Unauthorized("This refresh token has expired.", error="invalid_grant")
        spent = await session.execute(
            update(RefreshToken)
            .where(RefreshToken.id == token.id, RefreshToken.used_at.is_(None))
            .values(used_at=now)
            .execution_options(synchronize_session=False)
        )
        if spent.rowcount != 1:  # type: ignore[attr-defined]
            await self._revoke_family(session, family.id, reason="reuse_detected")
            await session.execute(
                update(User)
                .where(User.id == family.user_id)
                .values(token_version=User.token_version + 1)
                .execution_options(synchronize_session=False)
            )
            await session.commit()
            self._accounts.forget(family.user_id)
            raise Unauthorized(
                "Refresh token reuse detected; every session of this login was ended.", error="invalid_grant"
            )
        user = await session.get(User, family.user_id)
        if user is None or not user.is_active:
            await self._revoke_family(session, family.id, reason="account_inactive")
            await session.commit()
            raise Unauthorized("This account can no longer sign in.", error="invalid_grant")
        pair = self._issue(session, user, family.id)
        await session.commit()
        return pair

    async def logout(self, session: AsyncSession, presented: str) -> None:
        """Revoke the family of a refresh token; unknown tokens are ignored (logout is idempotent)."""
        await begin_write(session)
        family_id = (
            await session.execute(
                select(RefreshToken.family_id).where(RefreshToken.token_hash == digest_token(presented))
            )
        ).scalar_one_or_none()
        if family_id is not None:
            await self._revoke_family(session, family_id, reason="logout")
            await session.commit()

    async def _revoke_family(self, session: AsyncSession, family_id: str, *, reason: str) -> None:
        await session.execute(
            update(RefreshFamily)
            .where(RefreshFamily.id == family_id, RefreshFamily.revoked_at.is_(None))
            .values(revoked_at=utcnow(), revoked_reason=reason)
            .execution_options(synchronize_session=False)
        )

    def _issue(self, session: AsyncSession, user: User, family_id: str) -> TokenPair:
        now = utcnow()
        refresh = new_refresh_token()
        session.add(
            RefreshToken(
                family_id=family_id,
                token_hash=digest_token(refresh),
                created_at=now,
                expires_at=now + self._refresh_lifetime,
            )
        )
        access = self._tokens.issue_access(user_id=user.id, role=user.role, token_version=user.token_version, now=now)
        self._accounts.remember(user.id, AccountState.of(user))
        return TokenPair(
            access_token=access.token,
            expires_in=access.expires_in,
            refresh_token=refresh,
            refresh_expires_in=int(self._refresh_lifetime.total_seconds()),
        )


async def revoke_credentials(session: AsyncSession, user_id: int, *, reason: str) -> None:
    """End an account's live refresh token families and unused reset links, in the caller's transaction.

    The :class:`~library_api.users.service.CredentialRevoker` the factory hands the account service: it calls this
    whenever the account's sessions end (logout everywhere, a new password, role or state).
    """
    now = utcnow()
    await session.execute(
        update(RefreshFamily)
        .where(RefreshFamily.user_id == user_id, RefreshFamily.revoked_at.is_(None))
        .values(revoked_at=now, revoked_reason=reason)
    )
    await session.execute(
        update(PasswordReset)
        .where(PasswordReset.user_id == user_id, PasswordReset.used_at.is_(None))
        .where(PasswordReset.revoked_at.is_(None))
        .values(revoked_at=now)
    )
