"""``library-api users``: manage user accounts from the operator's side (the first administrator, above all)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from library_api.cli.common import fail, run_with_context, settings_from

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from library_api.dependencies.context import AppContext

users_app = typer.Typer(help="Manage user accounts.", no_args_is_help=True)


@users_app.command("create")
def users_create(
    ctx: typer.Context,
    email: Annotated[str, typer.Option(help="The account's e-mail address.")],
    role: Annotated[str, typer.Option(help="reader, librarian or admin.")] = "reader",
    full_name: Annotated[str | None, typer.Option(help="Display name (default: the e-mail's local part).")] = None,
    password: Annotated[
        str | None, typer.Option(help="The password; prompted for (hidden, twice) when omitted.")
    ] = None,
) -> None:
    """Create an account with any role: how the first administrator comes to exist."""
    from library_api.problems import ProblemError
    from library_api.security.permissions import USER_ROLES, Role
    from library_api.users.schemas import normalise_email

    settings = settings_from(ctx)
    if role not in {r.value for r in USER_ROLES}:
        raise fail([f"--role must be one of {', '.join(r.value for r in USER_ROLES)} (got {role!r})"])
    try:
        address = normalise_email(email)
    except ValueError:
        raise fail([f"--email is not a valid e-mail address: {email!r}"]) from None
    if password is None:
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)

    async def job(context: AppContext, session: AsyncSession) -> tuple[int, str]:
        user = await context.users.create(
            session,
            email=address,
            password=password,
            full_name=full_name or address.split("@")[0],
            role=Role(role),
        )
        return user.id, user.email

    try:
        user_id, stored_email = run_with_context(settings, job)
    except ProblemError as exc:
        raise fail([exc.detail or exc.title]) from None
    typer.echo(f"created {role} {stored_email} with id {user_id}")
