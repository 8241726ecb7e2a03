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
    warnings: list[str] = []
    try:
        settings = load_settings(overrides, env_file=state.env_file, config_file=state.config_file, warnings=warnings)
    except ConfigError as exc:
        raise fail(exc.problems, EXIT_CONFIG) from None
    for line in warnings:
        typer.echo(f"warning: {line}", err=True)
    return settings


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
    from library_api.security.certificates import check_tls_files

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


certs_app = typer.Typer(help="A small certificate authority for mutual TLS.", no_args_is_help=True)
app.add_typer(certs_app, name="certs")

CertsDir = Annotated[Path, typer.Option("--dir", help="The authority's directory (ca.pem, ca-key.pem, crl.pem).")]


def _authority(directory: Path) -> Any:
    from library_api.security.issuing import Authority, IssuingError

    try:
        return Authority.load(directory)
    except IssuingError as exc:
        raise fail([str(exc)]) from None


def _write_pair(directory: Path, name: str, pair: Any) -> None:
    from library_api.security.issuing import write_certificate, write_key

    certificate, key = pair
    write_certificate(directory / f"{name}.pem", certificate)
    write_key(directory / f"{name}-key.pem", key)
    typer.echo(f"wrote {directory / f'{name}.pem'} and {directory / f'{name}-key.pem'} (0600)")


@certs_app.command("init-ca")
def certs_init_ca(
    directory: CertsDir = Path("certs"),
    cn: Annotated[str, typer.Option(help="The CA's common name.")] = "Library API CA",
    days: Annotated[int, typer.Option(min=1, max=7300, help="Lifetime in days.")] = 3650,
    key_type: Annotated[str, typer.Option(help="ec (P-256) or rsa (3072 bits).")] = "ec",
    force: Annotated[bool, typer.Option(help="Replace an existing CA.")] = False,
) -> None:
    """Create a certificate authority and an empty revocation list."""
    from library_api.security.issuing import Authority, write_revocation_list

    if key_type not in {"ec", "rsa"}:
        raise fail([f"--key-type must be ec or rsa (got {key_type!r})"], EXIT_CONFIG)
    if (directory / "ca.pem").exists() and not force:
        raise fail([f"{directory / 'ca.pem'} exists; pass --force to replace the authority"])
    authority = Authority.create(cn, days, key_type)  # type: ignore[arg-type]
    authority.save(directory)
    write_revocation_list(authority, directory, [])
    typer.echo(f"created CA {cn!r} in {directory} (ca.pem, ca-key.pem 0600, crl.pem)")


@certs_app.command("server")
def certs_server(
    host: Annotated[list[str], typer.Option("--host", help="A DNS name or IP address (repeatable).")],
    directory: CertsDir = Path("certs"),
    days: Annotated[int, typer.Option(help="Lifetime in days, at most 366.")] = 365,
    name: Annotated[str, typer.Option(help="File name stem.")] = "server",
) -> None:
    """Issue a server certificate (serverAuth) for the given hosts."""
    from library_api.security.issuing import IssuingError

    try:
        pair = _authority(directory).issue_server(host, days)
    except IssuingError as exc:
        raise fail([str(exc)], EXIT_CONFIG) from None
    _write_pair(directory, name, pair)


@certs_app.command("client")
def certs_client(
    cn: Annotated[str, typer.Option(help="The client's identity (subject CN).")],
    role: Annotated[
        list[str] | None, typer.Option("--role", help="A role, written as an O attribute (repeatable).")
    ] = None,
    directory: CertsDir = Path("certs"),
    days: Annotated[int, typer.Option(min=1, max=3650, help="Lifetime in days.")] = 365,
    uri_roles: Annotated[bool, typer.Option(help="Also write the roles as urn:library-api:role: URI SANs.")] = False,
    name: Annotated[str | None, typer.Option(help="File name stem (default: the CN).")] = None,
) -> None:
    """Issue a client certificate (clientAuth) carrying roles."""
    from library_api.security.issuing import IssuingError

    try:
        pair = _authority(directory).issue_client(cn, role or [], days, uri_roles=uri_roles)
    except IssuingError as exc:
        raise fail([str(exc)], EXIT_CONFIG) from None
    stem = name or "".join(char if char.isalnum() or char in "-_." else "-" for char in cn)
    _write_pair(directory, stem, pair)


@certs_app.command("revoke")
def certs_revoke(
    file: Annotated[Path, typer.Argument(help="The certificate to revoke.")],
    directory: CertsDir = Path("certs"),
) -> None:
    """Revoke a certificate and rewrite crl.pem (running servers pick it up on their next handshake)."""
    from cryptography import x509

    from library_api.security.certificates import signed_by
    from library_api.security.issuing import revoked_serials, write_revocation_list

    authority = _authority(directory)
    try:
        certificate = x509.load_pem_x509_certificate(file.read_bytes())
    except (OSError, ValueError) as exc:
        raise fail([f"{file} holds no PEM certificate: {exc}"]) from None
    if not signed_by(certificate, authority.certificate):
        raise fail([f"{file} was not issued by the CA in {directory}"])
    path = write_revocation_list(authority, directory, [*revoked_serials(directory), certificate.serial_number])
    typer.echo(f"revoked serial {certificate.serial_number:x}; wrote {path}")


@certs_app.command("crl")
def certs_crl(directory: CertsDir = Path("certs")) -> None:
    """Sign a fresh crl.pem with the revocations so far (run it before the list's next update, weekly)."""
    from library_api.security.issuing import revoked_serials, write_revocation_list

    serials = revoked_serials(directory)
    path = write_revocation_list(_authority(directory), directory, serials)
    typer.echo(f"wrote {path} ({len(serials)} revoked)")


@certs_app.command("show")
def certs_show(file: Annotated[Path, typer.Argument(help="A PEM certificate.")]) -> None:
    """Print a certificate's subject, issuer, validity, roles and usages."""
    from library_api.security.issuing import IssuingError, describe

    try:
        lines = describe(file)
    except IssuingError as exc:
        raise fail([str(exc)]) from None
    for line in lines:
        typer.echo(line)


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


# ----- API tokens -----

tokens_app = typer.Typer(help="Manage API tokens for services.", no_args_is_help=True)
app.add_typer(tokens_app, name="tokens")


def _with_api_tokens(settings: Settings, job: Any) -> Any:
    """Run ``job(context, session)`` on a fresh application context and return its result."""
    from library_api.app import build_context
    from library_api.db.engine import create_database

    async def run() -> Any:
        database = create_database(settings)
        context = build_context(settings, database)
        try:
            async with database.sessionmaker() as session:
                return await job(context, session)
        finally:
            await database.dispose()

    return asyncio.run(run())


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

    from library_api.http.problems import ProblemError

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
        row, token = _with_api_tokens(settings, job)
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

    rows = _with_api_tokens(settings, job)
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
    from library_api.http.problems import ProblemError

    settings = settings_from(ctx)

    async def job(context: Any, session: Any) -> Any:
        return await context.api_tokens.revoke(session, token_id)

    try:
        row = _with_api_tokens(settings, job)
    except ProblemError as exc:
        raise fail([exc.detail or exc.title]) from None
    typer.echo(f"revoked API token {row.id} ({row.name})")


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


# Command groups kept in modules of their own register themselves on ``app`` when imported.
from library_api.cli import mail as _mail  # noqa: E402

__all__ = ["_mail", "app", "main"]


def main() -> None:
    """Console-script entry point."""
    app(prog_name="library-api")


if __name__ == "__main__":  # pragma: no cover
    main()
    sys.exit(0)
