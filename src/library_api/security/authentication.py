"""Turn the credentials on a connection into a :class:`Principal`.

One authenticator serves HTTP requests and WebSocket handshakes alike. A bearer access token is verified
cryptographically and then against the account's live state (:mod:`library_api.security.accounts`). An API
token (``lib_...``, see :mod:`library_api.tokens.service`) is accepted as ``Authorization: Bearer`` or as
``X-API-Key`` and looked up by its digest; its roles go through the same permission table, so routes see one
kind of :class:`Principal`. No credential at all yields the anonymous principal, whose permissions the role
table decides. A credential that is present but wrong is always an error, never a silent downgrade to
anonymous.
"""

from __future__ import annotations

from starlette.requests import HTTPConnection

from library_api.http.problems import Unauthorized
from library_api.security.accounts import AccountStateCache
from library_api.security.permissions import PermissionPolicy, Role
from library_api.security.principal import CredentialKind, Principal
from library_api.security.tokens import InvalidToken, TokenService
from library_api.tokens.service import ApiTokenService, is_api_token

API_KEY_HEADER = "x-api-key"
"""The header a service may send its API token in instead of ``Authorization: Bearer``."""


class Authenticator:
    """Resolves the caller of each request from its credentials."""

    def __init__(
        self, policy: PermissionPolicy, tokens: TokenService, accounts: AccountStateCache, api_tokens: ApiTokenService
    ) -> None:
        self.policy = policy
        self.tokens = tokens
        self.accounts = accounts
        self.api_tokens = api_tokens
        anonymous_roles = frozenset({Role.ANONYMOUS.value})
        self.anonymous = Principal(
            subject="anonymous",
            credential=CredentialKind.ANONYMOUS,
            roles=anonymous_roles,
            permissions=policy.permissions_for(anonymous_roles),
        )

    async def authenticate(self, connection: HTTPConnection) -> Principal:
        """The principal behind ``connection``'s ``Authorization`` or ``X-API-Key`` header, or the anonymous one."""
        header = connection.headers.get("authorization")
        if header is None:
            api_key = connection.headers.get(API_KEY_HEADER)
            if api_key is None:
                return self.anonymous
            return await self.from_api_token(api_key.strip())
        scheme, _, credentials = header.partition(" ")
        credentials = credentials.strip()
        if scheme.lower() != "bearer" or not credentials:
            raise Unauthorized("Send credentials as 'Authorization: Bearer <token>'.", error="invalid_request")
        return await self.from_bearer(credentials)

    async def from_bearer(self, token: str) -> Principal:
        """The user behind an access token (or the service behind an API token) if it is valid and still honoured."""
        if is_api_token(token):
            return await self.from_api_token(token)
        try:
            claims = self.tokens.verify_access(token)
        except InvalidToken as exc:
            raise Unauthorized(f"The {exc}.", error="invalid_token") from None
        state = await self.accounts.get(claims.user_id)
        if state is None or not state.is_active or state.token_version != claims.token_version:
            raise Unauthorized("The access token has been revoked.", error="invalid_token")
        roles = frozenset({state.role})
        return Principal(
            subject=f"user:{claims.user_id}",
            credential=CredentialKind.ACCESS_TOKEN,
            roles=roles,
            permissions=self.policy.permissions_for(roles),
            user_id=claims.user_id,
        )

    async def from_api_token(self, token: str) -> Principal:
        """The service behind an API token, if the token exists and is neither revoked nor expired."""
        state = await self.api_tokens.resolve(token) if is_api_token(token) else None
        if state is None:
            raise Unauthorized("The API token is unknown, revoked or expired.", error="invalid_token")
        return Principal(
            subject=f"token:{state.token_id}",
            credential=CredentialKind.API_TOKEN,
            roles=state.roles,
            permissions=self.policy.permissions_for(state.roles),
            name=state.name,
        )
