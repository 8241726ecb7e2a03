"""Accounts: creation, lookup, self-service changes and administration.

Role and activity changes bump ``token_version`` (invalidating issued access tokens) and revoke refresh
families, so a demoted or deactivated user loses access at once rather than when their tokens expire. Every
such end of an account's sessions also ends its unused password-reset links.

Password hashing never runs inside a transaction: a password change reads the account's credentials, ends that
read, checks and hashes, and only then writes, in a short transaction that first makes sure the account did
not change meanwhile (409 otherwise).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from library_api.db.engine import begin_write
from library_api.problems import Conflict, Forbidden, InvalidInput, NotFound
from library_api.security.password_checks import PasswordChecks, account_name
from library_api.security.passwords import PasswordService
from library_api.security.permissions import USER_ROLES, Role
from library_api.users.accounts import AccountState, AccountStateCache
from library_api.users.models import User
from library_api.users.schemas import UserAdminUpdate, UserOut, UserSelfUpdate


def normalize_email(email: str) -> str:
    """E-mail addresses are compared case-insensitively; they are stored lower-cased.

    The same normalisation keys the counting of failed password checks, so every spelling of an address that
    finds an account also counts against it.
    """
    return account_name(email)


@dataclass(frozen=True, slots=True)
class Credentials:
    """What a password check needs of an account, read before the check and compared again before a write."""

    user_id: int
    email: str
    password_hash: str
    is_active: bool
    token_version: int


_CREDENTIALS = select(User.id, User.email, User.password_hash, User.is_active, User.token_version)


class AccountChanged(Conflict):
    """The account changed (password, sessions) between the password check and the write: nothing was written."""

    def __init__(self) -> None:
        super().__init__("The account changed while this request was checking its password; try again.")


class CredentialRevoker(Protocol):
    """Ends what an account's sessions hold besides its access tokens, in the caller's transaction.

    The account decides when its sessions end (logout everywhere, a new password, role or state); what they hold
    (refresh token families, unused password-reset links) belongs to :mod:`library_api.auth`, which builds on
    accounts, so the factory passes it in here rather than this package importing it.
    """

    async def __call__(self, session: AsyncSession, user_id: int, *, reason: str) -> None:
        """Revoke them for ``user_id``, recording ``reason``."""
        ...


class UserService:
    """Operations on user accounts; each method runs in the caller's session and commits its own work."""

    def __init__(
        self,
        passwords: PasswordService,
        checks: PasswordChecks,
        accounts: AccountStateCache,
        password_min_length: int,
        revoke_credentials: CredentialRevoker,
    ) -> None:
        self._passwords = passwords
        self._checks = checks
        self._accounts = accounts
        self._min_length = password_min_length
        self._revoke_credentials = revoke_credentials

    def _check_password(self, password: str) -> None:
        if len(password) < self._min_length:
            raise InvalidInput(f"The password needs at least {self._min_length} characters.", field="body.password")

    def check_new_password(self, password: str) -> None:
        """Apply the password policy of registration and password change (422 ``body.password`` otherwise)."""
        self._check_password(password)

    async def set_password(self, session: AsyncSession, user: User, password_hash: str, *, reason: str) -> None:
        """Give an account locked by the caller's write transaction a new password and end all its sessions.

        The caller commits, then calls :meth:`remember`; every worker sees the new ``token_version`` within
        ``PRINCIPAL_CACHE_TTL``, and live sockets are closed by their credential checks.
        """
        user.password_hash = password_hash
        await self._end_sessions(session, user, reason=reason)

    def remember(self, user: User) -> None:
        """Refresh this worker's cached state of an account just written."""
        self._remember(user)

    async def create(
        self, session: AsyncSession, *, email: str, password: str, full_name: str, role: Role = Role.READER
    ) -> User:
        """Create an account; a taken e-mail address is a 409 conflict.

        The password is hashed before the session touches the database, so no connection waits on argon2.
        """
        if role not in USER_ROLES:
            raise InvalidInput(f"A user account cannot hold the role '{role}'.", field="role")
        self._check_password(password)
        password_hash = await self._passwords.hash(password)
        user = User(
            email=normalize_email(email),
            password_hash=password_hash,
            full_name=full_name,
            role=role.value,
            is_active=True,
            token_version=0,
        )
        session.add(user)
        try:
            await session.commit()
        except IntegrityError:
            await session.rollback()
            raise Conflict("An account with this e-mail address already exists.") from None
        return user

    async def get(self, session: AsyncSession, user_id: int) -> User:
        """The account with this id, or 404."""
        user = await session.get(User, user_id)
        if user is None:
            raise NotFound(f"No user with id {user_id}.")
        return user

    async def profile(self, user_id: int) -> UserOut:
        """The account as its owner sees it, from the account-state cache: ``/auth/me`` usually reads nothing.

        A change made on this worker is seen at once (the writer refreshes the cache); one made on another
        worker within ``PRINCIPAL_CACHE_TTL`` seconds, like a revocation.
        """
        state = await self._accounts.get(user_id)
        if state is None:
            raise NotFound(f"No user with id {user_id}.")
        return UserOut(
            id=user_id,
            email=state.email,
            full_name=state.full_name,
            role=state.role,
            is_active=state.is_active,
            created_at=state.created_at,
        )

    async def credentials(
        self, session: AsyncSession, *, email: str | None = None, user_id: int | None = None
    ) -> Credentials | None:
        """The credentials of the account with this e-mail address or id, read and released at once.

        The session's transaction is ended before returning, so its connection is back in the pool while the
        caller spends its time on argon2.
        """
        condition = User.id == user_id if email is None else User.email == normalize_email(email)
        row = (await session.execute(_CREDENTIALS.where(condition))).one_or_none()
        await session.rollback()
        if row is None:
            return None
        return Credentials(row.id, row.email, row.password_hash, row.is_active, row.token_version)

    async def lock_unchanged(self, session: AsyncSession, read: Credentials, *, sessions_too: bool) -> User:
        """Open the write transaction and the account's row, as it was when ``read`` was taken, or 409.

        The row is locked (``FOR UPDATE`` on PostgreSQL; SQLite's write transaction serialises writers), so a
        concurrent password change either finishes first and is seen here, or waits for this one.
        ``sessions_too`` also requires the same ``token_version`` (no logout everywhere meanwhile).
        """
        await begin_write(session)
        user = (
            await session.execute(
                select(User).where(User.id == read.user_id).with_for_update().execution_options(populate_existing=True)
            )
        ).scalar_one_or_none()
        if user is None:
            raise NotFound(f"No user with id {read.user_id}.")
        if user.password_hash != read.password_hash or (sessions_too and user.token_version != read.token_version):
            raise AccountChanged
        return user

    async def list(self, session: AsyncSession, *, limit: int, offset: int) -> tuple[list[User], int]:
        """A page of accounts ordered by id, with the total count."""
        total = (await session.execute(select(func.count()).select_from(User))).scalar_one()
        rows = await session.execute(select(User).order_by(User.id).limit(limit).offset(offset))
        return list(rows.scalars()), total

    async def update_self(self, session: AsyncSession, user_id: int, changes: UserSelfUpdate, address: str) -> User:
        """Apply a user's own changes; changing the password ends every other session.

        The current password is checked like a login from ``address`` (the same failure counts and 429), with
        no transaction open; the new one is hashed before the write transaction starts.
        """
        if changes.password is None:
            await begin_write(session)
            user = await self.get(session, user_id)
            if changes.full_name is not None:
                user.full_name = changes.full_name
            await session.commit()
            self._remember(user)
            return user
        if changes.current_password is None:
            raise Forbidden("The current password is required to set a new one, and it did not match.")
        self._check_password(changes.password)
        read = await self.credentials(session, user_id=user_id)
        if read is None:
            raise NotFound(f"No user with id {user_id}.")
        if not await self._checks.verify(read.email, address, read.password_hash, changes.current_password):
            raise Forbidden("The current password is required to set a new one, and it did not match.")
        new_hash = await self._passwords.hash(changes.password)
        user = await self.lock_unchanged(session, read, sessions_too=True)
        if changes.full_name is not None:
            user.full_name = changes.full_name
        user.password_hash = new_hash
        await self._end_sessions(session, user, reason="password_changed")
        await session.commit()
        self._remember(user)
        return user

    async def update_by_admin(
        self, session: AsyncSession, actor_id: int | None, user_id: int, changes: UserAdminUpdate
    ) -> User:
        """Apply an administrator's changes; administrators cannot demote or deactivate themselves."""
        await begin_write(session)
        user = await self.get(session, user_id)
        if actor_id == user_id and (
            (changes.role is not None and changes.role != user.role) or changes.is_active is False
        ):
            raise Conflict("Administrators cannot change their own role or deactivate themselves.")
        if changes.full_name is not None:
            user.full_name = changes.full_name
        revoke = False
        if changes.role is not None and changes.role != user.role:
            user.role = changes.role
            revoke = True
        if changes.is_active is not None and changes.is_active != user.is_active:
            user.is_active = changes.is_active
            revoke = True
        if revoke:
            await self._end_sessions(session, user, reason="account_changed")
        await session.commit()
        self._remember(user)
        return user

    async def end_all_sessions(self, session: AsyncSession, user_id: int) -> None:
        """Log a user out everywhere: issued access tokens stop working and refresh families are revoked."""
        await begin_write(session)
        user = await self.get(session, user_id)
        await self._end_sessions(session, user, reason="logout_all")
        await session.commit()
        self._remember(user)

    async def _end_sessions(self, session: AsyncSession, user: User, *, reason: str) -> None:
        user.token_version += 1
        await self._revoke_credentials(session, user.id, reason=reason)

    def _remember(self, user: User) -> None:
        self._accounts.remember(user.id, AccountState.of(user))
