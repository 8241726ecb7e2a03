"""Access JWTs and opaque refresh tokens.

Access tokens are short-lived HMAC JWTs with the algorithm pinned (never read from the token header), and
``iss``, ``aud``, ``exp``, ``iat``, ``sub`` and ``jti`` required. They carry the user's role and
``token_version`` so that a request can be authorised without reading the user row; revocation works by
bumping the version (see :mod:`library_api.users.accounts`). Refresh tokens are random strings stored only
as SHA-256 digests.

Verifying a JWT costs tens of microseconds of parsing and HMAC per request, and a client sends the same token
for its whole lifetime; the service therefore remembers the claims of tokens it has verified (a bounded map
keyed by the complete token string, so only the very same bytes hit it) and checks only their expiry again.
"""

from __future__ import annotations

import hashlib
import secrets
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import jwt

from library_api.config import Settings
from library_api.db.base import utcnow

API_TOKEN_PREFIX = "lib_"  # noqa: S105 - the public marker of the token format, not a secret
"""How every API token starts; JWTs start with ``eyJ``, so the two never collide."""


def is_api_token(credential: str) -> bool:
    """Whether a presented credential has the API token format (rather than a JWT's)."""
    return credential.startswith(API_TOKEN_PREFIX)


ACCESS_TOKEN_TYPE = "access"  # noqa: S105 - a claim value, not a secret
_REQUIRED_CLAIMS = ["exp", "iat", "iss", "aud", "sub", "jti"]
_LEEWAY_SECONDS = 5
_VERIFIED_CACHE_SIZE = 10_000


class InvalidToken(Exception):
    """The token is malformed, forged, expired, or meant for someone else."""


@dataclass(frozen=True, slots=True)
class AccessClaims:
    """What a verified access token says about its bearer."""

    user_id: int
    role: str
    token_version: int
    jti: str
    expires_at: int


@dataclass(frozen=True, slots=True)
class IssuedAccessToken:
    """A freshly signed access token and its lifetime in seconds."""

    token: str
    expires_in: int


class TokenService:
    """Signs and verifies access tokens with the configured secret, algorithm, issuer and audience.

    ``clock`` (epoch seconds, ``time.time`` by default) decides when a token verified once and remembered has
    expired; a test passes one it moves instead of waiting for the expiry.
    """

    def __init__(self, settings: Settings, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._key = settings.secret_key.get_secret_value()
        self._algorithm = settings.algorithm
        self._issuer = settings.jwt_issuer
        self._audience = settings.jwt_audience
        self._lifetime = timedelta(minutes=settings.access_token_expire_minutes)
        self._verified: OrderedDict[str, AccessClaims] = OrderedDict()

    def issue_access(
        self, *, user_id: int, role: str, token_version: int, now: datetime | None = None
    ) -> IssuedAccessToken:
        """A signed access token for a user as they are now."""
        issued = now or utcnow()
        claims: dict[str, Any] = {
            "sub": str(user_id),
            "role": role,
            "ver": token_version,
            "typ": ACCESS_TOKEN_TYPE,
            "iss": self._issuer,
            "aud": self._audience,
            "iat": int(issued.timestamp()),
            "exp": int((issued + self._lifetime).timestamp()),
            "jti": uuid.uuid4().hex,
        }
        token = jwt.encode(claims, self._key, algorithm=self._algorithm)
        return IssuedAccessToken(token=token, expires_in=int(self._lifetime.total_seconds()))

    def verify_access(self, token: str) -> AccessClaims:
        """Check signature, algorithm, issuer, audience and times; raise :class:`InvalidToken` on any failure."""
        known = self._verified.get(token)
        if known is not None:
            if known.expires_at + _LEEWAY_SECONDS <= self._clock():
                del self._verified[token]
                raise InvalidToken("access token expired")
            return known
        claims = self._decode(token)
        self._verified[token] = claims
        if len(self._verified) > _VERIFIED_CACHE_SIZE:
            self._verified.popitem(last=False)
        return claims

    def _decode(self, token: str) -> AccessClaims:
        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=[self._algorithm],
                audience=self._audience,
                issuer=self._issuer,
                options={"require": _REQUIRED_CLAIMS},
                leeway=_LEEWAY_SECONDS,
            )
        except jwt.ExpiredSignatureError as exc:
            raise InvalidToken("access token expired") from exc
        except jwt.PyJWTError as exc:
            raise InvalidToken("access token invalid") from exc
        try:
            if claims.get("typ") != ACCESS_TOKEN_TYPE:
                raise InvalidToken("not an access token")
            return AccessClaims(
                user_id=int(claims["sub"]),
                role=str(claims["role"]),
                token_version=int(claims["ver"]),
                jti=str(claims["jti"]),
                expires_at=int(claims["exp"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidToken("access token claims invalid") from exc


def new_refresh_token() -> str:
    """A fresh opaque refresh token (256 bits of randomness)."""
    return secrets.token_urlsafe(32)


def digest_token(token: str) -> str:
    """The SHA-256 hex digest under which an opaque token is stored and looked up."""
    return hashlib.sha256(token.encode()).hexdigest()
