"""Issuing, listing, revoking and recognising API tokens.

A token is ``lib_`` followed by 256 random bits (``secrets.token_urlsafe(32)``). Only its SHA-256 digest is
stored: with that much entropy nobody can search the token space for a digest, so a slow password hash would
add cost to every request and no protection, while a plain digest can be looked up through a unique index.
The prefix lets the authenticator tell an API token from a JWT without trying to parse it.

Recognising a token costs one indexed read, and then nothing for ``PRINCIPAL_CACHE_TTL`` seconds: each worker
keeps what it learned per digest for that long (1 s by default), so a revocation reaches every worker within
that time while a busy service token costs one statement per worker per second.

A token never outranks whoever issues it: through the API, every permission of the requested roles must be one
the caller holds (else 403), so ``tokens:manage`` alone is not a way to every other permission, whichever roles
``ROLE_PERMISSIONS`` gives it to. An operator at the command line (``library-api tokens create``) holds the
database and the configuration already, and issues any role.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from library_api.cache.local import TimedCache
from library_api.db.base import utcnow
from library_api.problems import Forbidden, InvalidInput, NotFound
from library_api.security.permissions import PermissionPolicy, Role, grants
from library_api.security.tokens import API_TOKEN_PREFIX, digest_token
from library_api.tokens.models import ApiToken

_SHOWN_PREFIX_LENGTH = 10


@dataclass(frozen=True, slots=True)
class ApiTokenState:
    """What a live token grants: its identity, roles and, if any, the end of its lifetime."""

    token_id: int
    name: str
    roles: frozenset[str]
    expires_at: datetime | None

    def expired(self, now: datetime) -> bool:
        """Whether the token's lifetime is over at ``now``."""
        return self.expires_at is not None and self.expires_at <= now


class ApiTokenService:
    """API tokens of one application: management operations and the cached lookup on the request path."""

    def __init__(
        self,
        policy: PermissionPolicy,
        reader: async_sessionmaker[AsyncSession],
        ttl: float,
        max_entries: int = 10_000,
    ) -> None:
        self._policy = policy
        self._reader = reader
        self._cache: TimedCache[str, ApiTokenState | None] = TimedCache(ttl, max_entries)

    def check_roles(self, roles: list[str]) -> list[str]:
        """The roles without duplicates, each known to the permission table; unknown ones are a 422."""
        unknown = [role for role in roles if role not in self._policy.roles or role == Role.ANONYMOUS]
        if unknown:
            known = ", ".join(sorted(role for role in self._policy.roles if role != Role.ANONYMOUS))
            raise InvalidInput(f"Unknown role(s) {', '.join(unknown)}; known roles: {known}.", field="body.roles")
        return list(dict.fromkeys(roles))

    def check_within(self, roles: list[str], held: frozenset[str]) -> None:
        """Refuse (403) roles granting any permission outside ``held``, the permissions of the token's issuer."""
        beyond = [
            role for role in roles if not all(grants(held, wanted) for wanted in self._policy.permissions_for([role]))
        ]
        if beyond:
            raise Forbidden(
                f"A token cannot hold permissions its issuer lacks; role(s) {', '.join(beyond)} grant more than "
                "this credential holds."
            )

    async def create(
        self,
        session: AsyncSession,
        *,
        name: str,
        roles: list[str],
        issuer: frozenset[str] | None,
        lifetime: timedelta | None = None,
    ) -> tuple[ApiToken, str]:
        """Store a new token's digest and return the row with the token, which is never retrievable again.

        ``issuer`` holds the permissions of the caller issuing the token, which the token's roles may not exceed;
        ``None`` is an operator at the command line, trusted with every role.
        """
        roles = self.check_roles(roles)
        if issuer is not None:
            self.check_within(roles, issuer)
        token = API_TOKEN_PREFIX + secrets.token_urlsafe(32)
        now = utcnow()
        row = ApiToken(
            name=name,
            token_hash=digest_token(token),
            prefix=token[:_SHOWN_PREFIX_LENGTH],
            roles=" ".join(roles),
            created_at=now,
            expires_at=None if lifetime is None else now + lifetime,
        )
        session.add(row)
        await session.commit()
        return row, token

    async def list(self, session: AsyncSession) -> list[ApiToken]:
        """Every token ever issued, newest first (revoked ones included, for the record)."""
        rows = await session.execute(select(ApiToken).order_by(ApiToken.id.desc()))
        return list(rows.scalars())

    async def revoke(self, session: AsyncSession, token_id: int) -> ApiToken:
        """Revoke a token (idempotent: revoking a revoked token keeps its first revocation time)."""
        row = await session.get(ApiToken, token_id)
        if row is None:
            raise NotFound(f"No API token with id {token_id}.")
        await session.execute(
            update(ApiToken)
            .where(ApiToken.id == token_id, ApiToken.revoked_at.is_(None))
            .values(revoked_at=utcnow())
            .execution_options(synchronize_session=False)
        )
        await session.commit()
        await session.refresh(row)
        self._cache.forget(row.token_hash)
        return row

    async def resolve(self, token: str) -> ApiTokenState | None:
        """The live state of a presented token, or ``None`` when it is unknown, revoked or expired."""
        digest = digest_token(token)
        state = await self._cache.get(digest, lambda: self._load(digest))
        if state is None or state.expired(utcnow()):
            return None
        return state

    async def _load(self, digest: str) -> ApiTokenState | None:
        async with self._reader() as session:
            row = (
                await session.execute(
                    select(ApiToken.id, ApiToken.name, ApiToken.roles, ApiToken.expires_at).where(
                        ApiToken.token_hash == digest, ApiToken.revoked_at.is_(None)
                    )
                )
            ).one_or_none()
        if row is None:
            return None
        return ApiTokenState(
            token_id=row.id, name=row.name, roles=frozenset(row.roles.split()), expires_at=row.expires_at
        )

    def forget(self, token: str) -> None:
        """Drop what this worker knows about a token, so that its next use reads the database."""
        self._cache.forget(digest_token(token))
