"""The caller as every route sees it, whatever proved who they are.

A :class:`Principal` is the identity (who) with its roles and resolved permissions; how it was proven (a
JWT, an API token, a client certificate, or nothing) is recorded in ``credential`` but routes never branch
on it: they ask :meth:`Principal.can`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from library_api.security.permissions import Permission, grants

PRINCIPAL_SCOPE_KEY = "library.principal"
"""Scope key holding the request's principal once authenticated, so that it is resolved once per request
(the rate limiter, the route's permission check and the access log all read it)."""


class CredentialKind(StrEnum):
    """How a principal proved its identity."""

    ANONYMOUS = "anonymous"
    ACCESS_TOKEN = "access_token"  # noqa: S105 - a credential kind, not a secret
    API_TOKEN = "api_token"  # noqa: S105 - a credential kind, not a secret
    CERTIFICATE = "certificate"


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated (or anonymous) caller with the permissions its roles grant."""

    subject: str
    credential: CredentialKind
    roles: frozenset[str]
    permissions: frozenset[str]
    user_id: int | None = None
    name: str | None = None

    @property
    def is_authenticated(self) -> bool:
        """Whether any credential was presented and verified."""
        return self.credential is not CredentialKind.ANONYMOUS

    def can(self, permission: Permission | str) -> bool:
        """Whether this caller holds ``permission`` (directly or through a wildcard)."""
        return grants(self.permissions, str(permission))
