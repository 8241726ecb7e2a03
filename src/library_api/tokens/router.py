"""``/tokens``: issuing, listing and revoking API tokens for services (permission ``tokens:manage``)."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Path, status

from library_api.dependencies import ContextDep, ReadSessionDep, SessionDep
from library_api.dependencies.permissions import require
from library_api.problems.responses import problems
from library_api.security.permissions import Permission
from library_api.security.principal import Principal
from library_api.tokens.models import ApiToken
from library_api.tokens.schemas import ApiTokenCreate, ApiTokenIssued, ApiTokenOut

router = APIRouter(prefix="/tokens", tags=["tokens"])

Manager = Annotated[Principal, require(Permission.TOKENS_MANAGE)]
TokenId = Annotated[int, Path(ge=1, le=2**31 - 1)]


def describe(row: ApiToken) -> ApiTokenOut:
    """The listing form of a token row."""
    return ApiTokenOut(
        id=row.id,
        name=row.name,
        prefix=row.prefix,
        roles=row.role_list,
        created_at=row.created_at,
        expires_at=row.expires_at,
        revoked_at=row.revoked_at,
    )


@router.post("", status_code=status.HTTP_201_CREATED, responses=problems(401, 403, 422), summary="Issue an API token")
async def create_token(body: ApiTokenCreate, manager: Manager, session: SessionDep, ctx: ContextDep) -> ApiTokenIssued:
    """Issue a token with the given roles, none granting more than the caller holds (else 403).

    The answer is the only place the token ever appears.
    """
    lifetime = None if body.expires_in_days is None else timedelta(days=body.expires_in_days)
    row, token = await ctx.api_tokens.create(
        session, name=body.name, roles=body.roles, issuer=manager.permissions, lifetime=lifetime
    )
    return ApiTokenIssued(**describe(row).model_dump(), token=token)


@router.get("", responses=problems(401, 403), summary="List API tokens")
async def list_tokens(_: Manager, session: ReadSessionDep, ctx: ContextDep) -> list[ApiTokenOut]:
    """Every token issued, newest first, without their secrets."""
    return [describe(row) for row in await ctx.api_tokens.list(session)]


@router.delete(
    "/{token_id}", status_code=status.HTTP_204_NO_CONTENT, responses=problems(401, 403, 404, 422), summary="Revoke"
)
async def revoke_token(token_id: TokenId, _: Manager, session: SessionDep, ctx: ContextDep) -> None:
    """Revoke a token; every worker refuses it within ``PRINCIPAL_CACHE_TTL`` seconds."""
    await ctx.api_tokens.revoke(session, token_id)
