"""Turn the credentials on a connection into a :class:`Principal`.

One authenticator serves HTTP requests and WebSocket handshakes alike. A bearer access token is verified
cryptographically and then against the account's live state (:mod:`library_api.users.accounts`). An API
token (``lib_...``, see :mod:`library_api.tokens.service`) is accepted as ``Authorization: Bearer`` or as
``X-API-Key`` and looked up by its digest. Without either, a verified client certificate (the ASGI TLS
extension ``scope["extensions"]["tls"]``, set by the server adapters in :mod:`library_api.server` or, from a
peer in ``FORWARDED_CERT_PROXIES`` and after full verification, by the request origin) identifies the
caller: its CN is the identity and its roles are read by
:class:`~library_api.security.certificates.CertificateReader`; roles the role table does not know grant
nothing, so a certificate with no known role is authenticated but gets 403 everywhere. Every kind of caller
becomes one :class:`Principal` whose roles go through the same permission table. No credential at all yields
the anonymous principal, whose permissions the role table decides, except in ``token`` and ``mtls`` modes
where it holds none (every non-public route then needs credentials). A credential that is present but wrong
is always an error, never a silent downgrade to anonymous: that includes a forwarded certificate the request
context refused (the extension then carries ``client_cert_error`` and no certificate).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from starlette.requests import HTTPConnection

from library_api.problems import Unauthorized
from library_api.security.certificates import CertificateReader
from library_api.security.permissions import PermissionPolicy, Role
from library_api.security.principal import CredentialKind, Principal
from library_api.security.tokens import InvalidToken, TokenService, is_api_token

API_KEY_HEADER = "x-api-key"
"""The header a service may send its API token in instead of ``Authorization: Bearer``."""


class AccountFacts(Protocol):
    """What decides whether an access token still counts: the account's role, activity and token version."""

    @property
    def role(self) -> str:
        """The account's current role."""

    @property
    def is_active(self) -> bool:
        """Whether the account may sign in at all."""

    @property
    def token_version(self) -> int:
        """The version every honoured access token must carry (bumped by logout everywhere)."""


class AccountLookup(Protocol):
    """The live state of user accounts (:class:`library_api.users.accounts.AccountStateCache` in the service).

    Security sits below the domain, so it names what it needs rather than the users package that provides it.
    """

    async def get(self, user_id: int, /) -> AccountFacts | None:
        """The account's current state, or ``None`` when it does not exist."""

    async def refresh(self, user_ids: Iterable[int], /) -> None:
        """Make the state of all these accounts fresh at once (reading the stale ones together)."""


class ApiTokenFacts(Protocol):
    """What a live API token grants: its identity and roles."""

    @property
    def token_id(self) -> int:
        """The token's id, the caller's subject."""

    @property
    def name(self) -> str:
        """The token's name, shown as the caller's name."""

    @property
    def roles(self) -> frozenset[str]:
        """The roles the token was issued with."""


class ApiTokenLookup(Protocol):
    """Looks up presented API tokens (:class:`library_api.tokens.service.ApiTokenService` in the service)."""

    async def resolve(self, token: str, /) -> ApiTokenFacts | None:
        """The live state of a presented token, or ``None`` when it is unknown, revoked or expired."""


class Authenticator:
    """Resolves the caller of each request from its credentials."""

    def __init__(
        self,
        policy: PermissionPolicy,
        tokens: TokenService,
        accounts: AccountLookup,
        api_tokens: ApiTokenLookup,
        *,
        certificates: CertificateReader | None = None,
        anonymous_allowed: bool = True,
    ) -> None:
        self.policy = policy
        self.tokens = tokens
        self.accounts = accounts
        self.certificates = certificates or CertificateReader()
        self._certificate_principals: dict[str, Principal] = {}
        self.api_tokens = api_tokens
        anonymous_roles = frozenset({Role.ANONYMOUS.value})
        self.anonymous = Principal(
            subject="anonymous",
            credential=CredentialKind.ANONYMOUS,
            roles=anonymous_roles if anonymous_allowed else frozenset(),
            permissions=policy.permissions_for(anonymous_roles) if anonymous_allowed else frozenset(),
        )

    async def authenticate(self, connection: HTTPConnection) -> Principal:
        """The principal behind ``connection``'s ``Authorization`` or ``X-API-Key`` header, or the anonymous one."""
        header = connection.headers.get("authorization")
        if header is None:
            api_key = connection.headers.get(API_KEY_HEADER)
            if api_key is not None:
                return await self.from_api_token(api_key.strip())
            tls = connection.scope.get("extensions", {}).get("tls")
            if tls:
                if tls.get("client_cert_chain"):
                    return self.from_certificate(tls["client_cert_chain"][0])
                if tls.get("client_cert_error"):
                    raise Unauthorized(str(tls["client_cert_error"]))
            return self.anonymous
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

    async def refresh_accounts(self, tokens: Iterable[str]) -> None:
        """Read together the accounts behind these access tokens that are not fresh in the cache.

        For callers about to resolve many tokens at once (the live-event credential check): the resolutions
        that follow then find every account cached. Tokens that are not valid access tokens are left to them.
        """
        user_ids = []
        for token in tokens:
            if not is_api_token(token):
                try:
                    user_ids.append(self.tokens.verify_access(token).user_id)
                except InvalidToken:
                    continue
        await self.accounts.refresh(user_ids)

    def from_certificate(self, pem: str) -> Principal:
        """The caller named by a verified client certificate (PEM); the answer is kept per certificate."""
        principal = self._certificate_principals.get(pem)
        if principal is not None:
            return principal
        identity = self.certificates.identity(pem)
        if identity.problem is not None:
            raise Unauthorized(identity.problem)
        roles = self.policy.known(identity.roles)
        principal = Principal(
            subject=f"certificate:{identity.common_name}",
            credential=CredentialKind.CERTIFICATE,
            roles=roles,
            permissions=self.policy.permissions_for(roles),
            name=identity.common_name,
        )
        if len(self._certificate_principals) >= self.certificates.capacity:
            self._certificate_principals.clear()
        self._certificate_principals[pem] = principal
        return principal

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
