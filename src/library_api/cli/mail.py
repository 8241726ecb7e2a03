"""``library-api mail``: the e-mail outbox for operators: list mails (failed ones above all) and requeue them.

After a long SMTP outage (longer than ``EMAIL_MAX_AGE_HOURS``) or a fixed configuration, failed mails are
sent again with ``library-api mail requeue --all-failed``; a running service picks them up at its next poll.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer

from library_api.cli.common import EXIT_CONFIG, EXIT_FAILURE, fail, run_with_database, settings_from

mail_app = typer.Typer(help="The e-mail outbox: list and requeue mails.", no_args_is_help=True)


@mail_app.command("list")
def mail_list(
    ctx: typer.Context,
    failed: Annotated[bool, typer.Option("--failed", help="Only mails that failed for good.")] = False,
    pending: Annotated[bool, typer.Option("--pending", help="Only mails still to be sent.")] = False,
    limit: Annotated[int, typer.Option(min=1, max=10_000, help="At most this many, newest first.")] = 100,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """List outbox mails, newest first, with their state, attempts and last error."""
    from library_api.notifications.models import EmailStatus
    from library_api.notifications.outbox import list_emails

    if failed and pending:
        raise fail(["choose one of --failed and --pending"], EXIT_CONFIG)
    status = EmailStatus.FAILED if failed else EmailStatus.PENDING if pending else None
    settings = settings_from(ctx)
    rows = run_with_database(settings, lambda database: list_emails(database, status=status, limit=limit))
    if as_json:
        fields = ("id", "kind", "booking_id", "recipient", "status", "attempts", "refusals", "message_id")
        records = [
            {
                **{name: getattr(row, name) for name in fields},
                "created_at": row.created_at.isoformat(),
                "last_error": row.last_error,
            }
            for row in rows
        ]
        typer.echo(json.dumps(records, indent=2))
        return
    typer.echo(f"{'ID':>6}  {'STATUS':<8}  {'ATTEMPTS':>8}  {'KIND':<20}  {'RECIPIENT':<32}  LAST ERROR")
    for row in rows:
        typer.echo(
            f"{row.id:>6}  {row.status:<8}  {row.attempts:>8}  {row.kind:<20}  {row.recipient:<32}  "
            f"{row.last_error or ''}"
        )


@mail_app.command("requeue")
def mail_requeue(
    ctx: typer.Context,
    ids: Annotated[list[int] | None, typer.Argument(help="Ids shown by 'mail list --failed'.")] = None,
    all_failed: Annotated[bool, typer.Option("--all-failed", help="Requeue every failed mail.")] = False,
) -> None:
    """Make failed mails pending again; a running service sends them at its next poll."""
    from library_api.notifications.outbox import requeue

    if bool(ids) == all_failed:
        raise fail(["give mail ids or --all-failed (not both)"], EXIT_CONFIG)
    settings = settings_from(ctx)
    result = run_with_database(settings, lambda database: requeue(database, None if all_failed else ids))
    typer.echo(
        f"requeued {len(result.requeued)} mail(s){': ' if result.requeued else ''}"
        + " ".join(str(i) for i in result.requeued)
    )
    for email_id, reason in result.refused.items():
        typer.echo(f"error: mail {email_id}: {reason}", err=True)
    if result.refused:
        raise typer.Exit(EXIT_FAILURE)
