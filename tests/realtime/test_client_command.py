"""``library-api client ws`` as a real process against a live server."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
import time
from collections.abc import Callable

import pytest

from library_api.realtime.topics import Subscription
from library_api.security.permissions import Role
from tests.realtime.conftest import SQLITE_ONLY, StartLive
from tests.support.factories import PASSWORD, create_book, create_user, token_for
from tests.support.polling import wait_until

pytestmark = pytest.mark.parametrize(**SQLITE_ONLY)


async def client_command(*args: str, stdin: bytes | None = None, within: float = 60) -> tuple[int, str, str]:
    env = {**os.environ}
    env.pop("LIBRARY_API_TOKEN", None)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "library_api",
        "client",
        "ws",
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    out, err = await asyncio.wait_for(process.communicate(stdin), timeout=within)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


REPORT = re.compile(r"^\[\s*(\d+\.\d) s\] received (\d+), ")


async def start_command(*args: str) -> asyncio.subprocess.Process:
    """``library-api client ws`` as a process whose output the test reads as it comes."""
    env = {**os.environ}
    env.pop("LIBRARY_API_TOKEN", None)
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "library_api", "client", "ws", *args,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip


async def lines_until(process: asyncio.subprocess.Process, accept: Callable[[str], bool], within: float = 60) -> str:
    """The output up to and including the first line ``accept`` takes (fails if the process ends first)."""
    assert process.stdout is not None
    lines: list[str] = []
    while not lines or not accept(lines[-1]):
        line = await asyncio.wait_for(process.stdout.readline(), timeout=within)
        if not line:
            raise AssertionError("the command ended first:\n" + "".join(lines))
        lines.append(line.decode())
    return "".join(lines)


async def interrupt(process: asyncio.subprocess.Process) -> tuple[int, str, str]:
    """Ctrl+C, as a user stops the command: its exit code, the rest of its output and its errors."""
    process.send_signal(signal.SIGINT)
    out, err = await asyncio.wait_for(process.communicate(), timeout=30)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def received_in_report(total: int) -> Callable[[str], bool]:
    """A running-total line that reports at least ``total`` messages received."""

    def accept(line: str) -> bool:
        match = REPORT.match(line)
        return match is not None and int(match.group(2)) >= total

    return accept


async def test_many_clients_report_counts_and_latency(start_live: StartLive) -> None:
    live, ctx = await start_live()
    token = token_for(ctx, await create_user(ctx, Role.READER))
    process = await start_command("--url", live.http, "--token", token, "--clients", "4", "--report-every", "0.5")

    def subscribed() -> bool:
        connections = ctx.hub.connections()
        replayed = all(position.held is None for c in connections for position in c.streams.values())
        return len(connections) == 4 and replayed and all("books" in c.topics.values() for c in connections)

    await wait_until(subscribed, within=30, what="four clients following books")
    for _ in range(3):
        await create_book(ctx)
    reported = await lines_until(process, received_in_report(12))
    code, out, err = await interrupt(process)
    assert code == 0, err
    assert "4 clients on 1 worker(s)" in out
    assert "total: received 12, reconnects 0, resyncs 0, gaps 0, duplicates 0; latency p50 " in out
    assert out.count("received 3, reconnects 0") == 4
    stamps = [float(match.group(1)) for line in reported.splitlines() if (match := REPORT.match(line))]
    assert stamps == sorted(set(stamps)), reported  # one line per period, stamped with the time since the start


async def test_stress_publishes_broadcasts_and_measures_them(start_live: StartLive) -> None:
    live, ctx = await start_live()
    librarian = await create_user(ctx, Role.LIBRARIAN)
    process = await start_command(
        "--url", live.http, "--email", librarian.email, "--password", PASSWORD,
        "--stress", "--duration", "600", "--rate", "5", "--report-every", "0.5",
    )  # fmt: skip
    await lines_until(process, received_in_report(50))  # five broadcasts' worth, whoever got them
    code, out, err = await interrupt(process)
    assert code == 0, err
    assert "10 clients on 1 worker(s)" in out
    published = int(out.split("published ")[1].split(" ")[0])
    received = int(out.split("total: received ")[1].split(",")[0])
    assert 50 <= received <= published * 10  # each client gets each broadcast at most once
    assert "gaps 0, duplicates 0" in out


async def test_stress_defaults_to_the_brief_s_ten_clients_for_five_minutes(start_live: StartLive) -> None:
    live, ctx = await start_live()
    token = token_for(ctx, await create_user(ctx, Role.READER))
    process = await start_command("--url", live.http, "--token", token, "--stress", "--report-every", "0.5")
    first = await lines_until(process, lambda line: line.startswith("stress: "))
    assert first.splitlines()[-1] == "stress: 10 clients for 300 s (Ctrl+C stops earlier)"
    await wait_until(lambda: ctx.hub.active() == 10, within=30, what="ten connections")
    code, out, err = await interrupt(process)
    assert code == 0, err
    assert "10 clients on 1 worker(s)" in out


async def test_interactive_mode_prints_messages_and_takes_commands(start_live: StartLive) -> None:
    live, ctx = await start_live()
    token = token_for(ctx, await create_user(ctx, Role.READER))
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "library_api", "client", "ws", "--url", live.http, "--token", token,
        "--client-id", "terminal",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert process.stdin is not None

    def topics() -> set[str]:
        return {topic for connection in ctx.hub.connections() for topic in connection.topics.values()}

    await wait_until(lambda: "books" in topics(), within=30, what="the client's subscription")
    process.stdin.write(b"sub book:1\nunsub books\n")
    await process.stdin.drain()
    await wait_until(lambda: topics() == {"book:1", "broadcast", "heartbeat"}, within=10, what="the commands")
    book = await create_book(ctx, title="Seen in the terminal")
    assert book.id == 1  # a fresh database: the client follows this very book
    printed = await lines_until(process, lambda line: "book.created [book:1" in line)
    process.stdin.write(b'ping\n{"type": "ping"}\n{bad\nnonsense\n\nquit\n')
    await process.stdin.drain()
    rest, err = (part.decode() for part in await asyncio.wait_for(process.communicate(), timeout=30))
    out = printed + rest
    assert process.returncode == 0, err
    assert '"client_id":"terminal"' in out
    assert "subscribed [system] " in out
    assert "unsubscribed [system] " in out
    assert out.count("pong [system]") == 2
    assert "not JSON" in err
    assert "commands: sub TOPIC" in err
    assert 'book.created [book:1 #1] {"id":1,"isbn"' in out
    assert "total: received 1," in out


async def test_login_failure_and_a_forged_token_are_errors(start_live: StartLive) -> None:
    live, ctx = await start_live()
    user = await create_user(ctx, Role.READER)
    code, _, err = await client_command("--url", live.http, "--email", user.email, "--password", "wrong-password")
    assert code == 1
    assert "error: login failed (401)" in err
    code, _, err = await client_command("--url", live.http, "--token", "forged", "--quiet", "--duration", "5")
    assert code == 1
    assert "closed 4401: authentication failed" in err
    code, _, err = await client_command(
        "--url", live.http, "--token", token_for(ctx, user), "--quiet", "--duration", "3", "--rate", "1"
    )
    assert code == 1
    assert "broadcast refused (403)" in err


async def test_broadcasts_reach_a_quiet_client(start_live: StartLive) -> None:
    live, ctx = await start_live()
    token = token_for(ctx, await create_user(ctx, Role.READER))
    process = await start_command("--url", live.http, "--token", token, "--quiet")
    await wait_until(lambda: ctx.hub.active() == 1, within=30, what="the client")
    await ctx.hub.publish("broadcast", [Subscription("broadcast", "broadcast")], {"message": "hello"})
    # The drain notice follows the broadcast on the same connection: once the client has left, it has read both.
    await ctx.hub.begin_drain(time.time() + 3600)
    await wait_until(lambda: ctx.hub.active() == 0, within=30, what="the client to leave the draining server")
    code, out, err = await interrupt(process)
    assert code == 0, err
    assert "total: received 1," in out
