"""``library-api client shutdown-test``: check a running server's graceful shutdown from its clients' side.

An operator points it at a server (``--url``) and either names the server's process (``--pid``, it then sends
``--signal`` itself) or sends the signal when asked. It connects ``--clients`` WebSocket clients, waits for
their ``welcome``, and after the signal records for each client when it got the ``shutdown`` notice; the first
``--leave`` of them then leave by themselves (close 1000, as a well-behaved client does), the others stay until
the server closes them (1001 expected, after ``SHUTDOWN_TIMEOUT``). It also tries one new connection once the
drain has begun (it must be refused) and watches the server stop: the process disappearing (``--pid``) or,
once every client is gone, the port no longer answering.

The report has one line per client (``shutdown`` at +t s, left at +t s or closed CODE at +t s) and a verdict;
the exit code is 0 when every client was told, every client that stayed was closed with 1001, the newcomer was
refused and the server stopped within ``--wait`` seconds, 1 otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import ssl
import time
from dataclasses import dataclass, field
from typing import Annotated, Any

import httpx
import orjson
import typer
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from library_api.cli.client_app import (
    DEFAULT_URL,
    EmailOption,
    PasswordOption,
    ServiceUrl,
    TokenOption,
    client_app,
)
from library_api.cli.common import EXIT_CONFIG, fail
from library_api.realtime.client import login_session, make_ssl_context

GOING_AWAY = 1001


@dataclass(slots=True)
class ClientRecord:
    """What happened to one client: seconds after the signal, or ``None`` when it did not happen."""

    client_id: str
    leaves: bool
    told_at: float | None = None
    left_at: float | None = None
    closed_at: float | None = None
    close_code: int | None = None
    close_reason: str = ""
    messages: list[str] = field(default_factory=list)

    def line(self) -> str:
        """The report line of this client."""
        told = "no shutdown message" if self.told_at is None else f"shutdown at +{self.told_at:.1f} s"
        if self.left_at is not None:
            end = f"left at +{self.left_at:.1f} s"
        elif self.closed_at is not None:
            end = f"closed {self.close_code} at +{self.closed_at:.1f} s" + (
                f" ({self.close_reason})" if self.close_reason else ""
            )
        else:
            end = "still open"
        return f"  {self.client_id}: {told}, {end}"

    @property
    def ok(self) -> bool:
        """Told, and then gone the way it should: left by itself, or closed by the server with 1001."""
        if self.told_at is None:
            return False
        return self.left_at is not None if self.leaves else self.close_code == GOING_AWAY


@dataclass(frozen=True, slots=True)
class CheckOptions:
    """What the command line asked for."""

    url: str
    token: str | None
    clients: int
    leave: int
    pid: int | None
    signal_name: str
    wait: float
    ssl_context: ssl.SSLContext | None


class ShutdownCheck:
    """Runs the check (see the module documentation); ``say`` prints a line of the report."""

    def __init__(self, options: CheckOptions, say: Any = print) -> None:
        self.options = options
        self.say = say
        scheme, _, rest = options.url.rstrip("/").partition("://")
        self.ws_base = f"{ {'http': 'ws', 'https': 'wss'}.get(scheme, scheme) }://{rest}/ws"
        self.records = [
            ClientRecord(f"shutdown-check-{os.getpid()}-{n}", leaves=n < options.leave) for n in range(options.clients)
        ]
        self.signalled_at: float | None = None
        self.draining = asyncio.Event()
        self.newcomer: str = "not tried"
        self.server_stopped_at: float | None = None

    def _since(self) -> float:
        return 0.0 if self.signalled_at is None else time.monotonic() - self.signalled_at

    def _connect(self, client_id: str) -> Any:
        headers = {"Authorization": f"Bearer {self.options.token}"} if self.options.token else None
        return connect(
            f"{self.ws_base}/{client_id}",
            additional_headers=headers,
            subprotocols=["library-api.v1"],  # type: ignore[list-item]
            ssl=self.options.ssl_context,
            open_timeout=15,
        )

    async def run(self) -> int:
        """Connect, signal, watch, report; the exit code."""
        connections = [await self._connect(record.client_id) for record in self.records]
        for connection in connections:
            welcome = orjson.loads(await asyncio.wait_for(connection.recv(), timeout=15))
            if welcome.get("type") != "welcome":
                raise RuntimeError(f"expected welcome, got {welcome.get('type')}")
        self.say(f"{len(connections)} client(s) connected to {self.ws_base}; {self.options.leave} will leave when told")
        watchers = [
            asyncio.create_task(self._watch(record, connection))
            for record, connection in zip(self.records, connections, strict=True)
        ]
        self._signal()
        stopped = asyncio.create_task(self._server_stop())
        newcomer = asyncio.create_task(self._try_newcomer())
        _, pending = await asyncio.wait([*watchers, stopped], timeout=self.options.wait)
        for task in (*pending, newcomer):
            task.cancel()
        for connection in connections:
            with contextlib.suppress(Exception):
                await connection.close()
        return self._report()

    def _signal(self) -> None:
        number = signal.Signals[f"SIG{self.options.signal_name}"]
        if self.options.pid is not None:
            os.kill(self.options.pid, number)
            self.say(f"sent {number.name} to process {self.options.pid}")
        else:
            self.say(f"now send {number.name} to the server (e.g. kill -{self.options.signal_name} <pid>)")
        self.signalled_at = time.monotonic()

    async def _watch(self, record: ClientRecord, connection: ClientConnection) -> None:
        try:
            async for raw in connection:
                message = orjson.loads(raw)
                kind = str(message.get("type"))
                record.messages.append(kind)
                if kind == "shutdown" and record.told_at is None:
                    record.told_at = self._since()
                    self.draining.set()
                    if record.leaves:
                        await connection.close(1000, "leaving as asked")
                        record.left_at = self._since()
                        return
        except ConnectionClosed:
            pass
        if record.left_at is None:
            record.closed_at = self._since()
            record.close_code = connection.close_code
            record.close_reason = connection.close_reason or ""

    async def _try_newcomer(self) -> None:
        await self.draining.wait()
        try:
            async with self._connect(f"shutdown-check-{os.getpid()}-late") as late:
                await late.recv()
                self.newcomer = "accepted (a draining server must refuse it)"
        except ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd is not None else None
            self.newcomer = f"refused with {code}" if code == GOING_AWAY else f"closed with {code}"
        except (InvalidStatus, InvalidHandshake, OSError, TimeoutError) as exc:
            self.newcomer = f"refused ({type(exc).__name__})"

    async def _server_stop(self) -> None:
        while not await self._stopped():  # noqa: ASYNC110 - another process: there is no event to wait on
            await asyncio.sleep(0.2)
        self.server_stopped_at = self._since()

    async def _stopped(self) -> bool:
        if self.options.pid is not None:
            try:
                os.kill(self.options.pid, 0)
            except ProcessLookupError:
                return True
        if not all(record.left_at is not None or record.closed_at is not None for record in self.records):
            return False
        try:
            async with httpx.AsyncClient(verify=self.options.ssl_context or True, timeout=2) as http:
                await http.get(f"{self.options.url.rstrip('/')}/health")
        except httpx.HTTPError:
            return True
        return False

    def _report(self) -> int:
        told = sum(record.told_at is not None for record in self.records)
        left = sum(record.left_at is not None for record in self.records)
        going_away = sum(record.close_code == GOING_AWAY for record in self.records)
        self.say(f"{told} of {len(self.records)} told to leave; {left} left; {going_away} closed with 1001")
        for record in self.records:
            self.say(record.line())
        self.say(f"new connection during the drain: {self.newcomer}")
        stopped = "did not stop" if self.server_stopped_at is None else f"stopped at +{self.server_stopped_at:.1f} s"
        self.say(f"server: {stopped} (waited up to {self.options.wait:.0f} s)")
        passed = all(record.ok for record in self.records) and self.newcomer.startswith("refused")
        passed = passed and self.server_stopped_at is not None
        self.say("PASS: a graceful shutdown" if passed else "FAIL: see the lines above")
        return 0 if passed else 1


@client_app.command("shutdown-test")
def client_shutdown_test(
    url: ServiceUrl = DEFAULT_URL,
    token: TokenOption = None,
    email: EmailOption = None,
    password: PasswordOption = None,
    clients: Annotated[int, typer.Option(min=1, max=1000, help="WebSocket clients to connect.")] = 4,
    leave: Annotated[
        int | None, typer.Option(min=0, help="How many leave by themselves when told (default: half).")
    ] = None,
    pid: Annotated[
        int | None, typer.Option(help="The server's process: send it the signal (else you are asked).")
    ] = None,
    signal_name: Annotated[str, typer.Option("--signal", help="TERM or INT.")] = "TERM",
    wait: Annotated[
        float, typer.Option(min=1, help="Seconds to wait for the outcome (cover SHUTDOWN_TIMEOUT when clients stay).")
    ] = 1900.0,
    cafile: Annotated[str | None, typer.Option(help="CA certificate to trust for https/wss.")] = None,
    cert: Annotated[str | None, typer.Option(help="Client certificate (mutual TLS).")] = None,
    key: Annotated[str | None, typer.Option(help="Private key of --cert.")] = None,
) -> None:
    """Check a running server's graceful shutdown: who is told, who leaves, who is closed with 1001, and when."""
    problems = [] if signal_name in {"TERM", "INT"} else ["--signal: TERM or INT"]
    if leave is not None and leave > clients:
        problems.append("--leave: at most --clients")
    if problems:
        raise fail(problems, EXIT_CONFIG)
    if email is not None and password is None:
        password = typer.prompt("Password", hide_input=True)
    ssl_context = make_ssl_context(cafile, cert, key)

    async def check() -> int:
        access = token
        if email is not None:
            access = (await login_session(url.rstrip("/"), email, password or "", ssl_context)).access_token
        options = CheckOptions(
            url.rstrip("/"),
            access,
            clients,
            clients // 2 if leave is None else leave,
            pid,
            signal_name,
            wait,
            ssl_context,
        )
        return await ShutdownCheck(options, typer.echo).run()

    try:
        code = asyncio.run(check())
    except (OSError, RuntimeError, TimeoutError) as exc:
        typer.echo(f"error: {exc}", err=True)
        code = 1
    raise typer.Exit(code)
