"""``library-api client``: clients of a running service (``client ws``: the live event stream).

The client itself (:mod:`library_api.cli.client`) is imported when the command runs, so ``--help`` stays fast.
"""

from __future__ import annotations

from typing import Annotated

import typer

client_app = typer.Typer(help="Clients of a running service.", no_args_is_help=True)

DEFAULT_URL = "http://127.0.0.1:8000"
ServiceUrl = Annotated[str, typer.Option("--url", help="Base URL of the service (http(s)://host:port).")]
TokenOption = Annotated[
    str | None, typer.Option("--token", envvar="LIBRARY_API_TOKEN", help="Access or API token [LIBRARY_API_TOKEN].")
]
EmailOption = Annotated[str | None, typer.Option("--email", help="Log in with this account instead of --token.")]
PasswordOption = Annotated[
    str | None,
    typer.Option("--password", envvar="LIBRARY_API_PASSWORD", help="Password for --email (prompted if omitted)."),
]
"""The options every client command shares: where the service is and how to sign in."""

STRESS_SECONDS = 300.0
"""How long ``client ws --stress`` runs without ``--duration``: the brief's 5 minutes (with its 10 clients)."""


@client_app.command("ws")
def client_ws(
    url: ServiceUrl = DEFAULT_URL,
    token: TokenOption = None,
    email: EmailOption = None,
    password: PasswordOption = None,
    client_id: Annotated[str | None, typer.Option(help="Connection id (default: host and process id).")] = None,
    topic: Annotated[list[str] | None, typer.Option("--topic", "-t", help="Topic to follow (repeatable).")] = None,
    clients: Annotated[int, typer.Option(min=1, max=20_000, help="Number of concurrent connections.")] = 1,
    stress: Annotated[
        bool,
        typer.Option(help="Load mode: the brief's 10 clients for 5 minutes unless --clients/--duration say otherwise."),
    ] = False,
    duration: Annotated[
        float | None, typer.Option(min=0.1, help="Stop after this many seconds (--stress: 300).")
    ] = None,
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

    if email is not None and password is None:
        password = typer.prompt("Password", hide_input=True)
    options = ClientOptions(
        url=url.rstrip("/"),
        token=token,
        client_id=client_id or default_client_id(),
        topics=topic or ["books"],
        clients=10 if stress and clients == 1 else clients,
        duration=STRESS_SECONDS if stress and duration is None else duration,
        rate=rate,
        report_every=report_every,
        stress=stress,
        quiet=quiet,
        cafile=cafile,
        certfile=cert,
        keyfile=key,
    )
    raise typer.Exit(run_client(options, email, password))
