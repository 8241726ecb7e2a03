"""``/users``: account administration (permission ``users:manage``)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query

from library_api.dependencies import ContextDep, ReadSessionDep, SessionDep
from library_api.dependencies.permissions import require
from library_api.http.links import Link
from library_api.problems.responses import problems
from library_api.security.permissions import Permission
from library_api.security.principal import Principal
from library_api.users.schemas import UserAdminUpdate, UserOut, UserPage

router = APIRouter(prefix="/users", tags=["users"])

Manager = Annotated[Principal, require(Permission.USERS_MANAGE)]
UserId = Annotated[int, Path(ge=1, le=2**31 - 1)]

_NEW_USER = {"user_id": "$response.body#/id"}
LINKS = (
    Link("GetUser", ("POST", "/auth/register"), 201, ("GET", "/users/{user_id}"), _NEW_USER),
    Link("UpdateUser", ("POST", "/auth/register"), 201, ("PATCH", "/users/{user_id}"), _NEW_USER),
)
"""A registered account can be read and changed by an administrator."""


@router.get("", responses=problems(401, 403, 422), summary="List accounts")
async def list_users(
    _: Manager,
    session: ReadSessionDep,
    ctx: ContextDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> UserPage:
    """Accounts ordered by id, with the total count."""
    users, total = await ctx.users.list(session, limit=limit, offset=offset)
    return UserPage(items=[UserOut.model_validate(u) for u in users], total=total, limit=limit, offset=offset)


@router.get("/{user_id}", responses=problems(401, 403, 404, 422), summary="One account")
async def get_user(user_id: UserId, _: Manager, session: ReadSessionDep, ctx: ContextDep) -> UserOut:
    """An account by id."""
    return UserOut.model_validate(await ctx.users.get(session, user_id))


@router.patch("/{user_id}", responses=problems(401, 403, 404, 409, 422), summary="Change an account")
async def update_user(
    user_id: UserId, body: UserAdminUpdate, principal: Manager, session: SessionDep, ctx: ContextDep
) -> UserOut:
    """Change an account's name, role or activity; a role change or deactivation ends its sessions."""
    user = await ctx.users.update_by_admin(session, principal.user_id, user_id, body)
    return UserOut.model_validate(user)
