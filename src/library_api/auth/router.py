"""``/auth``: registration, OAuth2 password login, refresh, logout and the caller's own account."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Request, status

from library_api.auth.schemas import (
    PasswordResetAccepted,
    PasswordResetConfirm,
    PasswordResetRequest,
    PrincipalOut,
    RefreshRequest,
    TokenPair,
)
from library_api.dependencies import ContextDep, SessionDep
from library_api.dependencies.permissions import CurrentPrincipal, public, require
from library_api.http.fast_path import FastPathRoute, fast_path
from library_api.http.links import Link
from library_api.http.request_origin import client_address
from library_api.problems import Forbidden
from library_api.problems.responses import problems
from library_api.security.permissions import Permission
from library_api.security.principal import Principal
from library_api.users.schemas import UserCreate, UserOut, UserSelfUpdate

router = APIRouter(prefix="/auth", tags=["auth"], route_class=FastPathRoute)

SignedIn = Annotated[Principal, require(Permission.ACCOUNT_SELF)]

_REFRESH_TOKEN = {"refresh_token": "$response.body#/refresh_token"}
LINKS = tuple(
    Link(
        f"{verb}After{source.title()}",
        ("POST", f"/auth/{source}"),
        200,
        ("POST", f"/auth/{target}"),
        request_body=_REFRESH_TOKEN,
    )
    for source in ("login", "refresh")
    for verb, target in (("Refresh", "refresh"), ("Logout", "logout"))
)
"""The refresh token of a login or refresh answer is what the next refresh or logout spends."""


def _user_id(principal: Principal) -> int:
    if principal.user_id is None:
        raise Forbidden("This operation is for user accounts; this credential does not belong to one.")
    return principal.user_id


@router.post(
    "/register",
    status_code=status.HTTP_201_CREATED,
    dependencies=[public()],
    responses=problems(409, 422),
    summary="Register a reader account",
)
async def register(body: UserCreate, session: SessionDep, ctx: ContextDep) -> UserOut:
    """Create an account with the reader role; the role cannot be chosen here."""
    user = await ctx.users.create(session, email=str(body.email), password=body.password, full_name=body.full_name)
    ctx.metrics.users_registered.inc()
    return UserOut.model_validate(user)


@router.post(
    "/login",
    dependencies=[public()],
    responses=problems(401, 403, 409, 422, 429, 503),
    summary="Log in (OAuth2 password)",
)
async def login(
    request: Request,
    username: Annotated[str, Form(min_length=1, max_length=320, description="The account's e-mail address")],
    password: Annotated[str, Form(min_length=1, max_length=1024)],
    session: SessionDep,
    ctx: ContextDep,
) -> TokenPair:
    """Exchange an e-mail address (``username``) and password for an access and a refresh token.

    The OAuth2 password grant's form fields; ``grant_type``, ``scope`` and client credentials are accepted and
    ignored, since scopes are not how this service grants permissions (roles are). Failed attempts are counted
    per account and client address: a guesser gets 429, the account's owner elsewhere is never locked out.
    """
    return await ctx.auth.login(session, username, password, client_address(request.scope))


@router.post("/refresh", dependencies=[public()], responses=problems(401, 422), summary="Rotate a refresh token")
async def refresh(body: RefreshRequest, session: SessionDep, ctx: ContextDep) -> TokenPair:
    """Spend a refresh token for a new pair; presenting a spent token revokes its whole family."""
    return await ctx.auth.refresh(session, body.refresh_token)


@router.post(
    "/logout",
    status_code=status.HTTP_204_NO_CONTENT,
    dependencies=[public()],
    responses=problems(422),
    summary="Log out this session",
)
async def logout(body: RefreshRequest, session: SessionDep, ctx: ContextDep) -> None:
    """Revoke the refresh token's family; the access token expires on its own shortly after."""
    await ctx.auth.logout(session, body.refresh_token)


@router.post(
    "/logout-all",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=problems(401, 403),
    summary="Log out everywhere",
)
async def logout_all(principal: SignedIn, session: SessionDep, ctx: ContextDep) -> None:
    """End every session of the caller: all refresh families and, within a second, all access tokens."""
    await ctx.users.end_all_sessions(session, _user_id(principal))


@fast_path
@router.get("/me", responses=problems(401, 403), summary="The caller's account")
async def me(principal: SignedIn, ctx: ContextDep) -> UserOut:
    """The account behind the access token."""
    return await ctx.users.profile(_user_id(principal))


@router.patch("/me", responses=problems(401, 403, 409, 422, 429, 503), summary="Change the caller's name or password")
async def update_me(
    request: Request, body: UserSelfUpdate, principal: SignedIn, session: SessionDep, ctx: ContextDep
) -> UserOut:
    """Change one's own name or password (with the current one); role and id cannot be changed here.

    A wrong ``current_password`` counts as a failed login for the account from the client's address, and is
    refused with 429 as a login would be: a stolen access token does not buy more guesses than the login does.
    """
    user = await ctx.users.update_self(session, _user_id(principal), body, client_address(request.scope))
    return UserOut.model_validate(user)


@router.post(
    "/password-reset",
    status_code=status.HTTP_202_ACCEPTED,
    dependencies=[public()],
    responses=problems(422, 429, 503),
    summary="Ask for a password-reset link by e-mail",
)
async def request_password_reset(body: PasswordResetRequest, ctx: ContextDep) -> PasswordResetAccepted:
    """Mail a single-use link to the account with this address, if there is one; the answer never says.

    Every address gets the same answer, headers and timing: the account is looked up after the response. A
    new link ends the account's older ones. 429 comes from the per-address limit of this route or from
    ``RATE_LIMIT_PASSWORD_RESET_ACCOUNT``, counted per e-mail address whether or not it has an account; 503
    when reset by e-mail is not configured (``SMTP_HOST`` and ``PASSWORD_RESET_URL``).
    """
    await ctx.password_resets.request(body.email)
    return PasswordResetAccepted(
        detail="If an account has this address, a link to choose a new password is on its way to it.",
        expires_in=int(ctx.password_resets.lifetime.total_seconds()),
    )


@router.post(
    "/password-reset/confirm",
    status_code=status.HTTP_204_NO_CONTENT,
    dependencies=[public()],
    responses=problems(400, 403, 404, 410, 422, 429),
    summary="Set a new password with a reset link's token",
)
async def confirm_password_reset(body: PasswordResetConfirm, session: SessionDep, ctx: ContextDep) -> None:
    """Spend the link's token to set a new password, and end every session of the account everywhere.

    400 ``invalid-reset-token`` for a token never issued; 410 ``reset-token-used``, ``reset-token-expired`` or
    ``reset-token-revoked`` (a newer link was asked for, or the account's sessions ended) for one that can no
    longer be used; 422 for a password the registration policy refuses (the token is then still usable); 403
    for a deactivated account.
    """
    await ctx.password_resets.confirm(session, body.token, body.password)


@fast_path
@router.get("/principal", dependencies=[public()], summary="Who the service takes the caller to be")
async def principal(caller: CurrentPrincipal) -> PrincipalOut:
    """The caller's identity and known roles, whatever proved them (token, client certificate, or none).

    Public, so that a client can check how it is seen (a certificate's CN and roles, for one) before it calls
    anything else; it shows callers only themselves.
    """
    return PrincipalOut(
        subject=caller.subject,
        name=caller.name,
        credential=caller.credential.value,
        roles=sorted(caller.roles),
    )
