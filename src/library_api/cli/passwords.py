"""``library-api users reset-password``: an operator's way to reset a forgotten password.

Three ways, one of them per call:

* by default, the account's owner is sent a reset link through the e-mail outbox, exactly as
  ``POST /api/v1/auth/password-reset`` would send it (a running service delivers it at its next poll); it needs
  ``SMTP_HOST`` and ``PASSWORD_RESET_URL``;
* ``--print-link`` issues the link and prints it instead, for the operator to hand over by another channel
  (``PASSWORD_RESET_URL`` only; nothing is mailed);
* ``--password-stdin`` sets the password read from the first line of standard input (never from the command
  line, which other users of the machine can see).

Each ends the account's older links; the third also ends every session of the account on every worker, as the
link does when it is used. Unlike the API, the command says when no account has the address: its operator
holds the database already.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Annotated, Any

import typer

from library_api.cli.common import EXIT_CONFIG, EXIT_FAILURE, fail, settings_from
from library_api.cli.users import users_app


@users_app.command("reset-password")
def users_reset_password(
    ctx: typer.Context,
    email: Annotated[str, typer.Argument(help="The account's e-mail address.")],
    print_link: Annotated[
        bool, typer.Option("--print-link", help="Print the reset link instead of mailing it.")
    ] = False,
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Set the password read from standard input's first line.")
    ] = False,
) -> None:
    """Mail the owner a reset link (default), print one, or set a new password; every way ends older links."""
    from library_api.app import build_context
    from library_api.db.engine import create_database
    from library_api.problems import ProblemError

    settings = settings_from(ctx)
    if print_link and password_stdin:
        raise fail(["choose one of --print-link and --password-stdin"], EXIT_CONFIG)
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    elif print_link and settings.password_reset_url is None:
        raise fail(["PASSWORD_RESET_URL: needed to make a reset link"], EXIT_CONFIG)
    elif not print_link and not settings.password_reset_enabled:
        raise fail(
            ["mailing a reset link needs SMTP_HOST and PASSWORD_RESET_URL; use --print-link or --password-stdin"],
            EXIT_CONFIG,
        )

    async def run() -> Any:
        database = create_database(settings)
        try:
            resets = build_context(settings, database).password_resets
            if password_stdin:
                return await resets.set_password(email, password)
            return await resets.issue(email, mail=not print_link)
        finally:
            await database.dispose()

    try:
        outcome = asyncio.run(run())
    except ProblemError as exc:
        raise fail([exc.detail or exc.title]) from None
    if outcome is None:
        raise fail([f"no active account has the e-mail address {email!r}"], EXIT_FAILURE)
    if password_stdin:
        typer.echo(f"set a new password for {outcome.email}; every session of the account has ended")
    elif print_link:
        typer.echo(outcome.link)
        typer.echo(f"the link works once, until {outcome.expires_at.isoformat()}", err=True)
    else:
        typer.echo(f"queued a reset link for {outcome.email}; it works once, until {outcome.expires_at.isoformat()}")
