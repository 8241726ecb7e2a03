"""``library-api client ws``: watch the live event stream, or load it with many clients and measure it.

Three modes share one reconnecting client (:class:`library_api.realtime.client.LiveClient`):

* interactive (the default): print every message; type ``sub TOPIC``, ``unsub TOPIC``, ``ping``, a raw JSON
  command, or ``quit``;
* ``--clients N``: N connections, a summary line every ``--report-every`` seconds and per-client totals;
* ``--stress``: 10 clients for 5 minutes (``--clients`` and ``--duration`` change either), optionally
  publishing ``--rate`` broadcasts per second (needs a librarian's credentials) so that delivery latency is
  measured under load.

Every mode ends with the received counts, reconnects and delivery latency p50/p99.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import typer

from library_api.realtime.client import (
    ClientStats,
    ClientStopped,
    LiveClient,
    TokenSession,
    login_session,
    make_ssl_context,
    run_clients,
)


@dataclass(frozen=True, slots=True)
class ClientOptions:
    """What the command line asked for."""

    url: str
    token: str | None
    client_id: str
    topics: list[str]
    clients: int
    duration: float | None
    rate: float
    report_every: float
    stress: bool
    quiet: bool
    cafile: str | None
    certfile: str | None
    keyfile: str | None


def default_client_id() -> str:
    """A readable id unique enough per run: host, process and a counter suffix for many clients."""
    host = "".join(char if char.isalnum() else "-" for char in socket.gethostname())[:32] or "client"
    return f"{host}-{os.getpid()}"


def render(message: dict[str, Any]) -> str:
    """One line per message for people watching a terminal."""
    ident = "" if message.get("id") is None else f" #{message['id']}"
    stamp = str(message.get("ts", ""))[11:23]
    data = orjson.dumps(message.get("data")).decode()
    return f"{stamp} {message.get('type')} [{message.get('topic')}{ident}] {data}"


async def interactive(client: LiveClient, stop: asyncio.Event) -> None:
    """Read commands from standard input until ``quit`` or end of input."""
    while not stop.is_set():
        line = await asyncio.to_thread(sys.stdin.readline)
        if not line or line.strip() in {"quit", "exit"}:
            stop.set()
            return
        words = line.split()
        if not words:
            continue
        if words[0] in {"sub", "subscribe"} and len(words) == 2:
            await client.subscribe(words[1])
        elif words[0] in {"unsub", "unsubscribe"} and len(words) == 2:
            await client.unsubscribe(words[1])
        elif words[0] == "ping":
            await client.send({"type": "ping"})
        elif line.lstrip().startswith("{"):
            try:
                await client.send(orjson.loads(line))
            except orjson.JSONDecodeError as exc:
                typer.echo(f"not JSON: {exc}", err=True)
        else:
            typer.echo("commands: sub TOPIC | unsub TOPIC | ping | {json} | quit", err=True)


async def broadcaster(options: ClientOptions, stop: asyncio.Event, ssl_context: Any) -> int:
    """Publish ``options.rate`` broadcasts per second until ``stop``; how many were accepted."""
    sent = 0
    interval = 1 / options.rate
    headers = {"Authorization": f"Bearer {options.token}"} if options.token else {}
    async with httpx.AsyncClient(base_url=options.url, headers=headers, verify=ssl_context or True, timeout=10) as http:
        next_at = time.monotonic()
        while not stop.is_set():
            response = await http.post("/api/v1/broadcast", json={"message": f"stress {sent}"})
            if response.status_code != 202:
                raise ClientStopped(f"broadcast refused ({response.status_code}): {response.json().get('detail')}")
            sent += 1
            next_at += interval
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=max(next_at - time.monotonic(), 0))
    return sent


async def reporter(stats: list[ClientStats], every: float, stop: asyncio.Event) -> None:
    """Print the running totals every ``every`` seconds."""
    started = time.monotonic()
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=every)
        total = ClientStats()
        for one in stats:
            total.merge(one)
        typer.echo(f"[{time.monotonic() - started:6.1f} s] {total.summary()}")


async def run(options: ClientOptions, session: TokenSession | None = None) -> int:
    """Run the chosen mode (renewing the access token through ``session`` when given); the process exit code."""
    ssl_context = make_ssl_context(options.cafile, options.certfile, options.keyfile)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    single = options.clients == 1 and not options.stress
    printer = None if options.quiet or not single else (lambda message: typer.echo(render(message)))
    clients = [
        LiveClient(
            options.url,
            options.client_id if single else f"{options.client_id}-{n}",
            options.token,
            options.topics,
            on_message=printer,
            ssl_context=ssl_context,
            renew=None if session is None else session.renew,
        )
        for n in range(options.clients)
    ]
    helpers: list[asyncio.Task[Any]] = []
    if options.stress:
        typer.echo(f"stress: {options.clients} clients for {options.duration or 0:.0f} s (Ctrl+C stops earlier)")
    if options.duration is not None:
        helpers.append(asyncio.create_task(_stop_after(options.duration, stop)))
    if single and not options.quiet:
        helpers.append(asyncio.create_task(interactive(clients[0], stop)))
    if not single:
        helpers.append(asyncio.create_task(reporter([c.stats for c in clients], options.report_every, stop)))
    sending = asyncio.create_task(broadcaster(options, stop, ssl_context)) if options.rate > 0 else None
    started = time.monotonic()
    outcomes = await run_clients(clients, stop)
    stop.set()
    broadcasts = 0
    failures = [str(outcome) for outcome in outcomes if outcome is not None]
    if sending is not None:
        try:
            broadcasts = await sending
        except (ClientStopped, httpx.HTTPError) as exc:
            failures.append(str(exc))
    for helper in helpers:
        helper.cancel()
    _print_totals(clients, time.monotonic() - started, broadcasts)
    for failure in sorted(set(failures)):
        typer.echo(f"error: {failure}", err=True)
    return 1 if failures else 0


async def _stop_after(seconds: float, stop: asyncio.Event) -> None:
    await asyncio.sleep(seconds)
    stop.set()


def _print_totals(clients: list[LiveClient], elapsed: float, broadcasts: int) -> None:
    total = ClientStats()
    for client in clients:
        total.merge(client.stats)
    if len(clients) > 1:
        workers = {client.worker for client in clients if client.worker}
        typer.echo(f"{len(clients)} clients on {len(workers)} worker(s) for {elapsed:.1f} s")
        for client in clients[:20]:
            typer.echo(f"  {client.client_id}: {client.stats.summary()}")
        if len(clients) > 20:
            typer.echo(f"  ... and {len(clients) - 20} more")
    if broadcasts:
        typer.echo(f"published {broadcasts} broadcast(s)")
    typer.echo(f"total: {total.summary()}")


def main(options: ClientOptions, email: str | None, password: str | None) -> int:
    """Log in when asked to, then run; exit code 1 on a failure the client cannot recover from."""

    async def start() -> int:
        if email is None:
            return await run(options)
        ssl_context = make_ssl_context(options.cafile, options.certfile, options.keyfile)
        session = await login_session(options.url, email, password or "", ssl_context)
        return await run(dataclasses.replace(options, token=session.access_token), session)

    try:
        return asyncio.run(start())
    except (ClientStopped, httpx.HTTPError, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        return 1
