"""Typer commands of ``library-api``.

Each loads the settings (reporting every problem, one line each, exit code 2) and then does one job with the
same factories the server uses.
"""

from __future__ import annotations

import asyncio
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from library_api.config import ConfigError, Settings, load_settings, public_view

app = typer.Typer(
    name="library-api",
    help="The Library API service and its operator tools.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

EXIT_CONFIG = 2
EXIT_FAILURE = 1


@dataclass(slots=True)
class CliState:
    """Options of the root command that every subcommand's settings depend on."""

    config_file: Path | None
    env_file: Path


def fail(lines: list[str], code: int = EXIT_FAILURE) -> typer.Exit:
    """Print each line to stderr as an error and return the exit to raise."""
    for line in lines:
        typer.echo(f"error: {line}", err=True)
    return typer.Exit(code)


def settings_from(ctx: typer.Context, **flags: Any) -> Settings:
    """Load settings with this command's flags on top; exit 2 listing every problem when they are invalid."""
    state: CliState = ctx.obj
    overrides = {key: value for key, value in flags.items() if value is not None}
    try:
        return load_settings(overrides, env_file=state.env_file, config_file=state.config_file)
    except ConfigError as exc:
        raise fail(exc.problems, EXIT_CONFIG) from None


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
) -> None:
    """Run the HTTP server (validating the whole configuration before any port is opened)."""
    from library_api.server.runner import run

    flags = {"host": host, "port": port, "workers": workers, "reload": reload}
    settings = settings_from(ctx, **flags)
    state: CliState = ctx.obj
    overrides = {key: value for key, value in flags.items() if value is not None}
    if state.config_file is not None:
        overrides["config_file"] = str(state.config_file)
    run(settings, overrides)


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


@app.command("check-config")
def check_config(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of KEY=value lines.")] = False,
) -> None:
    """Validate the configuration and print the effective values with secrets masked."""
    settings = settings_from(ctx)
    view = public_view(settings)
    if as_json:
        typer.echo(json.dumps(view, indent=2, default=str))
        return
    for key, value in view.items():
        shown = json.dumps(value, default=str) if isinstance(value, list | dict) else value
        typer.echo(f"{key}={'' if shown is None else shown}")


users_app = typer.Typer(help="Manage user accounts.", no_args_is_help=True)
app.add_typer(users_app, name="users")


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
    from library_api.app import build_context
    from library_api.db.engine import create_database
    from library_api.http.problems import ProblemError
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

    async def run() -> tuple[int, str]:
        database = create_database(settings)
        context = build_context(settings, database)
        try:
            async with database.sessionmaker() as session:
                user = await context.users.create(
                    session,
                    email=address,
                    password=password,
                    full_name=full_name or address.split("@")[0],
                    role=Role(role),
                )
                return user.id, user.email
        finally:
            await database.dispose()

    try:
        user_id, stored_email = asyncio.run(run())
    except ProblemError as exc:
        raise fail([exc.detail or exc.title]) from None
    typer.echo(f"created {role} {stored_email} with id {user_id}")


client_app = typer.Typer(help="Clients of a running service.", no_args_is_help=True)
app.add_typer(client_app, name="client")


@client_app.command("ws")
def client_ws(
    url: Annotated[str, typer.Option(help="Base URL of the service (http(s)://host:port).")] = "http://127.0.0.1:8000",
    token: Annotated[
        str | None, typer.Option(envvar="LIBRARY_API_TOKEN", help="Access or API token [LIBRARY_API_TOKEN].")
    ] = None,
    email: Annotated[str | None, typer.Option(help="Log in with this account instead of --token.")] = None,
    password: Annotated[
        str | None, typer.Option(envvar="LIBRARY_API_PASSWORD", help="Password for --email (prompted if omitted).")
    ] = None,
    client_id: Annotated[str | None, typer.Option(help="Connection id (default: host and process id).")] = None,
    topic: Annotated[list[str] | None, typer.Option("--topic", "-t", help="Topic to follow (repeatable).")] = None,
    clients: Annotated[int, typer.Option(min=1, max=20_000, help="Number of concurrent connections.")] = 1,
    stress: Annotated[bool, typer.Option(help="Load mode: 10 clients unless --clients says otherwise.")] = False,
    duration: Annotated[float | None, typer.Option(min=0.1, help="Stop after this many seconds.")] = None,
    rate: Annotated[float, typer.Option(min=0, help="Broadcasts per second to publish (needs broadcast:send).")] = 0,
    report_every: Annotated[float, typer.Option(min=0.5, help="Seconds between summary lines.")] = 5.0,
    quiet: Annotated[bool, typer.Option(help="Do not print messages or read commands.")] = False,
    cafile: Annotated[str | None, typer.Option(help="CA certificate to trust for wss://.")] = None,
    cert: Annotated[str | None, typer.Option(help="Client certificate (mutual TLS).")] = None,
    key: Annotated[str | None, typer.Option(help="Private key of --cert.")] = None,
) -> None:
    """Watch live events, or load the server with many clients and measure delivery latency."""
    from library_api.cli.client import ClientOptions, default_client_id
    from library_api.cli.client import main as run_client

    if stress and duration is None:
        raise fail(["--stress needs --duration SECONDS"], EXIT_CONFIG)
    if email is not None and password is None:
        password = typer.prompt("Password", hide_input=True)
    options = ClientOptions(
        url=url.rstrip("/"),
        token=token,
        client_id=client_id or default_client_id(),
        topics=topic or ["books"],
        clients=10 if stress and clients == 1 else clients,
        duration=duration,
        rate=rate,
        report_every=report_every,
        stress=stress,
        quiet=quiet,
        cafile=cafile,
        certfile=cert,
        keyfile=key,
    )
    raise typer.Exit(run_client(options, email, password))


def main() -> None:
    """Console-script entry point."""
    app(prog_name="library-api")


if __name__ == "__main__":  # pragma: no cover
    main()
    sys.exit(0)
