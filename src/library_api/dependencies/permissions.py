"""Permission checks as declared route dependencies: the one place where authorisation is decided.

Every route states what it needs: ``require(Permission.BOOKS_WRITE)`` or ``public()`` for the few routes that
serve anyone (health probes, login, registration). The check itself lives only here: an anonymous caller
without the permission gets 401 (authenticate and try again); an authenticated one gets 403, whose body does
not list the caller's roles. Both markers carry the permission on the dependency object so that a test can
walk the routes and prove none was forgotten.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import OAuth2PasswordBearer
from fastapi.security.base import SecurityBase

from library_api.dependencies.context import get_context
from library_api.problems import Forbidden, Unauthorized
from library_api.security.permissions import Permission
from library_api.security.principal import PRINCIPAL_SCOPE_KEY, Principal

PERMISSION_ATTRIBUTE = "__library_permission__"
PUBLIC = "public"

oauth2_scheme = OAuth2PasswordBearer(tokenUrl="/api/v1/auth/login", auto_error=False)


async def resolve_principal(request: Request) -> Principal:
    """The caller of this request, authenticated once and kept on the scope for the rest of the request."""
    principal: Principal | None = request.scope.get(PRINCIPAL_SCOPE_KEY)
    if principal is None:
        principal = await get_context(request).authenticator.authenticate(request)
        request.scope[PRINCIPAL_SCOPE_KEY] = principal
    return principal


class Gate(SecurityBase):
    """One route's admission check, declared as a dependency and documented as the bearer scheme.

    FastAPI documents a dependency as a security requirement when the dependency object is a security scheme,
    so the gate carries the OAuth2 password-flow model itself rather than depending on a separate bearer
    dependency. The check therefore costs FastAPI one dependency level per request instead of two, and the
    OpenAPI document is the same. ``permission`` ``None`` admits every caller (anonymous included).
    """

    def __init__(self, permission: Permission | None) -> None:
        self.model = oauth2_scheme.model
        self.scheme_name = oauth2_scheme.scheme_name
        self.permission = permission
        if permission is not None:
            setattr(self, PERMISSION_ATTRIBUTE, permission.value)

    async def __call__(self, request: Request) -> Principal:
        """The caller, once it has been shown to hold the permission (401 or 403 otherwise)."""
        principal = await resolve_principal(request)
        return principal if self.permission is None else check(principal, self.permission)


CurrentPrincipal = Annotated[Principal, Depends(Gate(None))]
"""The caller, authenticated or anonymous; routes that use it still declare a permission."""


def check(principal: Principal, permission: Permission) -> Principal:
    """Return ``principal`` if it holds ``permission``; raise 401 for anonymous callers and 403 otherwise."""
    if principal.can(permission):
        return principal
    if not principal.is_authenticated:
        raise Unauthorized("This operation needs an authenticated caller.")
    raise Forbidden(f"This operation needs the '{permission}' permission.")


def require(permission: Permission) -> Any:
    """A dependency that admits only callers holding ``permission`` and yields their principal."""
    return Depends(Gate(permission))


def public() -> Any:
    """A marker dependency for routes anyone may call; it does no work on the request path."""

    async def dependency() -> None:
        return None

    setattr(dependency, PERMISSION_ATTRIBUTE, PUBLIC)
    dependency.__name__ = "public"
    return Depends(dependency)
