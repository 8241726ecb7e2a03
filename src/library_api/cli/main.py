"""Typer commands of ``library-api``.

Each loads the settings (reporting every problem, one line each, exit code 2) and then does one job with the
same factories the server uses.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from library_api.cli.certs import certs_app
from library_api.cli.client_app import client_app
from library_api.cli.common import EXIT_CONFIG, EXIT_FAILURE, CliState, fail, settings_from
from library_api.cli.mail import mail_app
from library_api.cli.tokens import tokens_app
from library_api.cli.users import users_app
from library_api.config import ConfigError, Settings, public_view

app = typer.Typer(
    name="library-api",
    help="The Library API service and its operator tools.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def root(
    ctx: typer.Context,
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="A TOML or YAML file of settings (below env and .env).")
    ] = None,
    env_file: Annotated[Path, typer.Option("--env-file", help="The .env file to read, if it exists.")] = Path(".env"),
) -> None:
    """The Library API service and its operator tools."""
    ctx.obj = CliState(config_file=config, env_file=env_file)


@app.command()
def serve(
    ctx: typer.Context,
    host: Annotated[str | None, typer.Option(help="Address to listen on [HOST].")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on [PORT].")] = None,
    workers: Annotated[int | None, typer.Option(help="Worker processes [WORKERS].")] = None,
    reload: Annotated[bool | None, typer.Option("--reload/--no-reload", help="Restart on code changes.")] = None,
    mode: Annotated[str | None, typer.Option(help="auto, http, https, mtls or token [SECURITY_MODE].")] = None,
    cert: Annotated[Path | None, typer.Option(help="Server certificate, PEM [TLS_CERT_FILE].")] = None,
    key: Annotated[Path | None, typer.Option(help="Private key of --cert, PEM [TLS_KEY_FILE].")] = None,
    ca: Annotated[Path | None, typer.Option(help="CA of client certificates, PEM [TLS_CA_FILE].")] = None,
    crl: Annotated[Path | None, typer.Option(help="Revocation list of --ca, PEM [TLS_CRL_FILE].")] = None,
    server: Annotated[str | None, typer.Option(help="uvicorn, hypercorn or gunicorn [SERVER].")] = None,
    fd: Annotated[
        int | None,
        typer.Option(help="Serve on this inherited, listening socket instead of binding --host/--port."),
    ] = None,
) -> None:
    """Run the HTTP server (validating the whole configuration before any port is opened)."""
    from library_api.server.listener import ListenerError, inherited_listener
    from library_api.server.runner import run

    flags = {
        "host": host,
        "port": port,
        "workers": workers,
        "reload": reload,
        **security_flags(mode=mode, cert=cert, key=key, ca=ca, crl=crl, server=server),
    }
    settings = settings_from(ctx, **flags)
    listener = None
    if fd is not None:
        if settings.reload:
            raise fail(["--fd: reload binds a socket of its own; leave out --reload"], EXIT_CONFIG)
        try:
            listener = inherited_listener(fd)
        except ListenerError as exc:
            raise fail([str(exc)], EXIT_CONFIG) from None
    state: CliState = ctx.obj
    overrides = {key: value for key, value in flags.items() if value is not None}
    if state.config_file is not None:
        overrides["config_file"] = str(state.config_file)
    try:
        exit_code = run(settings, overrides, listener)
    except ConfigError as exc:  # a server's own keys, checked as it starts (e.g. Gunicorn's TIMEOUT)
        raise fail(exc.problems, EXIT_CONFIG) from None
    if exit_code:
        raise typer.Exit(exit_code)


@app.command()
def migrate(
    ctx: typer.Context,
    revision: Annotated[str, typer.Argument(help="Target revision.")] = "head",
) -> None:
    """Bring the database schema up to date (safe to run from several places at once)."""
    from library_api.db import migrate as migrations
    from library_api.db.engine import create_engine

    settings = settings_from(ctx)

    async def run() -> str | None:
        engine = create_engine(settings)
        try:
            await migrations.upgrade(engine, revision)
            return await migrations.current_revision(engine)
        finally:
            await engine.dispose()

    try:
        current = asyncio.run(run())
    except Exception as exc:
        raise fail([f"migration failed: {exc}"]) from None
    typer.echo(f"database is at revision {current}")


@app.command()
def seed(
    ctx: typer.Context,
    file: Annotated[Path | None, typer.Option(help="A JSON catalogue (default: the shipped sample).")] = None,
) -> None:
    """Add the books of a catalogue file that are not catalogued yet (idempotent)."""
    from library_api.books.seed import SeedError, load_catalogue, seed_catalogue
    from library_api.db.engine import create_engine

    settings = settings_from(ctx)
    try:
        books = load_catalogue(file)
    except SeedError as exc:
        raise fail([str(exc)]) from None

    async def run() -> int:
        engine = create_engine(settings)
        try:
            async with engine.begin() as connection:
                return await seed_catalogue(connection, books)
        finally:
            await engine.dispose()

    try:
        added = asyncio.run(run())
    except Exception as exc:
        raise fail([f"seeding failed: {exc}"]) from None
    typer.echo(f"added {added} of {len(books)} books ({len(books) - added} already catalogued)")


@app.command("import")
def import_command(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="A CSV (with a header) or JSON Lines file of books.")],
    file_format: Annotated[
        str | None, typer.Option("--format", help="csv or jsonl (default: from the file name).")
    ] = None,
) -> None:
    """Add the books of a CSV or JSON Lines file, validating every row; re-running skips what is catalogued.

    Rejected rows are listed on stderr with their line numbers (exit 1 when there are any; the valid rows are
    imported all the same).
    """
    from library_api.books.importer import ImportFileError, count_lines, detect_format, import_books, read_rows
    from library_api.db.engine import create_engine

    settings = settings_from(ctx)
    if file_format not in (None, "csv", "jsonl"):
        raise fail([f"unknown format {file_format!r}: use csv or jsonl"], EXIT_CONFIG)
    try:
        kind = detect_format(file, file_format)  # type: ignore[arg-type]
        lines = count_lines(file)
    except (ImportFileError, OSError) as exc:
        raise fail([str(exc)]) from None

    async def run() -> Any:
        engine = create_engine(settings)
        try:
            with typer.progressbar(length=lines, label="importing", file=sys.stderr) as bar:
                done = 0

                def advance(line: int) -> None:
                    nonlocal done
                    bar.update(line - done)
                    done = line

                return await import_books(engine, read_rows(file, kind), advance)
        finally:
            await engine.dispose()

    try:
        report = asyncio.run(run())
    except ImportFileError as exc:
        raise fail([str(exc)]) from None
    for rejected in report.rejected:
        typer.echo(f"line {rejected.line}: {rejected.reason}", err=True)
    typer.echo(
        f"imported {report.imported} books, {report.already} already catalogued, {len(report.rejected)} rejected"
    )
    if report.rejected:
        raise typer.Exit(EXIT_FAILURE)


@app.command("check-config")
def check_config(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of KEY=value lines.")] = False,
) -> None:
    """Validate the configuration and print the effective values with secrets masked."""
    settings = settings_from(ctx)
    view = public_view(settings)
    security = security_summary(settings)
    if as_json:
        typer.echo(json.dumps({**view, "security": security}, indent=2, default=str))
        return
    for key, value in view.items():
        shown = json.dumps(value, default=str) if isinstance(value, list | dict) else value
        typer.echo(f"{key}={'' if shown is None else shown}")
    typer.echo(f"# security mode: {security['mode']} ({security['reason']})")
    for line in security["certificates"]:
        typer.echo(f"# {line}")
    for line in security["warnings"]:
        typer.echo(f"warning: {line}", err=True)


# ===== security modes and certificates =====


def security_flags(**flags: Any) -> dict[str, Any]:
    """The ``serve`` security flags under their setting names (``--mode`` is ``SECURITY_MODE`` and so on)."""
    names = {"mode": "security_mode", "cert": "tls_cert_file", "key": "tls_key_file", "ca": "tls_ca_file"}
    names |= {"crl": "tls_crl_file", "server": "server"}
    return {names[flag]: str(value) if isinstance(value, Path) else value for flag, value in flags.items()}


def security_summary(settings: Settings) -> dict[str, Any]:
    """The decided security mode with its reason, and a summary and warnings of the TLS files."""
    from library_api.config.tls_files import check_tls_files

    decision = settings.security
    report = check_tls_files(settings.tls_cert_file, settings.tls_key_file, settings.tls_ca_file, settings.tls_crl_file)
    return {
        "mode": decision.mode,
        "reason": decision.reason,
        "tls": decision.tls,
        "client_certificates": decision.client_certificates,
        "certificates": report.summary,
        "warnings": report.warnings,
    }


# Each command group lives in a module of its own; the root application gathers them.
app.add_typer(certs_app, name="certs")
app.add_typer(users_app, name="users")
app.add_typer(tokens_app, name="tokens")
app.add_typer(mail_app, name="mail")
app.add_typer(client_app, name="client")

# ``users reset-password`` lives beside the flows it drives and registers itself on the users group.
from library_api.cli import passwords as _passwords  # noqa: E402
from library_api.cli import shutdown_check as _shutdown_check  # noqa: E402

__all__ = ["_passwords", "_shutdown_check", "app", "main"]


def main() -> None:
    """Console-script entry point."""
    app(prog_name="library-api")


if __name__ == "__main__":  # pragma: no cover
    main()
    sys.exit(0)
