"""Permission checks as declared route dependencies: the one place where authorisation is decided.

Every route states what it needs: ``require(Permission.BOOKS_WRITE)`` or ``public()`` for the few routes that
serve anyone (health probes, login, registration). The check itself lives only here: an anonymous caller
without the permission gets 401 (authenticate and try again); an authenticated one gets 403, whose body does
not list the caller's roles. Both markers carry the permission on the dependency function so that a test can
walk the routes and prove none was forgotten.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request, Security
from fastapi.security import OAuth2PasswordBearer

from library_api.context import get_context
from library_api.http.problems import Forbidden, Unauthorized
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


async def get_principal(request: Request, _token: Annotated[str | None, Security(oauth2_scheme)]) -> Principal:
    """The caller, as a dependency; ``_token`` only declares the bearer scheme in the OpenAPI document."""
    return await resolve_principal(request)


CurrentPrincipal = Annotated[Principal, Depends(get_principal)]
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

    async def dependency(request: Request, _token: Annotated[str | None, Security(oauth2_scheme)]) -> Principal:
        # One dependency level rather than two (FastAPI solves each level on every request).
        return check(await resolve_principal(request), permission)

    setattr(dependency, PERMISSION_ATTRIBUTE, permission.value)
    dependency.__name__ = f"require_{permission.value.replace(':', '_')}"
    return Depends(dependency)


def public() -> Any:
    """A marker dependency for routes anyone may call; it does no work on the request path."""

    async def dependency() -> None:
        return None

    setattr(dependency, PERMISSION_ATTRIBUTE, PUBLIC)
    dependency.__name__ = "public"
    return Depends(dependency)
