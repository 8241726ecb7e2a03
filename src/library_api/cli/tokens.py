"""``library-api tokens``: issue, list and revoke the API tokens of services."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from library_api.cli.common import EXIT_CONFIG, fail, run_with_context, settings_from

tokens_app = typer.Typer(help="Manage API tokens for services.", no_args_is_help=True)


@tokens_app.command("create")
def tokens_create(
    ctx: typer.Context,
    name: Annotated[str, typer.Option(help="What the token is for (shown in 'tokens list').")],
    role: Annotated[list[str], typer.Option("--role", help="A role from the permission table (repeatable).")],
    expires_in_days: Annotated[
        int | None, typer.Option(min=1, max=3650, help="Lifetime in days (default: until revoked).")
    ] = None,
) -> None:
    """Issue a token and print it once; only its SHA-256 digest is stored."""
    from datetime import timedelta

    from library_api.problems import ProblemError

    settings = settings_from(ctx)
    lifetime = None if expires_in_days is None else timedelta(days=expires_in_days)
    if not name.strip() or len(name.strip()) > 100:
        raise fail(["--name must be 1 to 100 characters"], EXIT_CONFIG)

    async def job(context: Any, session: Any) -> tuple[Any, str]:
        # An operator (database and configuration in hand) may issue any role: no issuer to stay within.
        result: tuple[Any, str] = await context.api_tokens.create(
            session, name=name.strip(), roles=role, issuer=None, lifetime=lifetime
        )
        return result

    try:
        row, token = run_with_context(settings, job)
    except ProblemError as exc:
        raise fail([exc.detail or exc.title], EXIT_CONFIG) from None
    typer.echo(f"created API token {row.id} ({row.name}) with roles {' '.join(row.role_list)}", err=True)
    typer.echo("store it now: it is shown only this once", err=True)
    typer.echo(token)


@tokens_app.command("list")
def tokens_list(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """List issued tokens (never their secrets), newest first."""
    from library_api.tokens.router import describe

    settings = settings_from(ctx)

    async def job(context: Any, session: Any) -> list[Any]:
        return [describe(row) for row in await context.api_tokens.list(session)]

    rows = run_with_context(settings, job)
    if as_json:
        typer.echo(json.dumps([row.model_dump(mode="json") for row in rows], indent=2))
        return
    typer.echo(f"{'ID':>5}  {'PREFIX':<10}  {'STATE':<8}  {'ROLES':<24}  NAME")
    for row in rows:
        state = "revoked" if row.revoked_at else "active"
        typer.echo(f"{row.id:>5}  {row.prefix:<10}  {state:<8}  {' '.join(row.roles):<24}  {row.name}")


@tokens_app.command("revoke")
def tokens_revoke(
    ctx: typer.Context,
    token_id: Annotated[int, typer.Argument(min=1, help="The id shown by 'tokens list'.")],
) -> None:
    """Revoke a token; running workers refuse it within PRINCIPAL_CACHE_TTL seconds."""
    from library_api.problems import ProblemError

    settings = settings_from(ctx)

    async def job(context: Any, session: Any) -> Any:
        return await context.api_tokens.revoke(session, token_id)

    try:
        row = run_with_context(settings, job)
    except ProblemError as exc:
        raise fail([exc.detail or exc.title]) from None
    typer.echo(f"revoked API token {row.id} ({row.name})")
