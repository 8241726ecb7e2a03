"""The JavaScript client examples (``examples/``) under Node.js, against a real server.

The Node watcher (``examples/node/watch.mjs`` on the shared ``examples/live-client/liveClient.mjs``, the same
logic the React hook uses) must get every broadcast once and in order across a disconnection made by the
server, the missed one replayed when it resumes from its last id, and a position of another epoch must be
answered with ``resync``. It runs as a user runs it: its dependencies installed by ``npm ci`` from its lock
file (``tests.support.npm``), with plain ``node`` and no flag, so under Node 18 to 21 (no global WebSocket) it
uses the ``ws`` package and under Node 22+ the built-in WebSocket. Skips without Node.js and npm locally;
fails in CI, where ``.ci/run`` installs them.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from library_api.dependencies.context import AppContext
from library_api.realtime.topics import Subscription
from library_api.security.permissions import Role
from tests.realtime.conftest import SQLITE_ONLY, StartLive
from tests.support.factories import create_user, token_for
from tests.support.npm import node_major, stage, tool
from tests.support.polling import wait_until

pytestmark = [pytest.mark.parametrize(**SQLITE_ONLY)]


@pytest.fixture(scope="module")
def watch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``watch.mjs`` staged with the ``ws`` package its lock file pins (Node 18 or later)."""
    if node_major() < 18:
        pytest.skip("the examples need Node.js 18 or later")
    return stage("node", tmp_path_factory.mktemp("node-example")) / "watch.mjs"


class Watcher:
    """The Node watcher as a process whose JSON lines the test reads as they come."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.lines: list[dict[str, Any]] = []

    async def until(self, accept: Callable[[dict[str, Any]], bool], within: float = 30) -> dict[str, Any]:
        assert self.process.stdout is not None
        while True:
            raw = await asyncio.wait_for(self.process.stdout.readline(), timeout=within)
            assert raw, f"the watcher ended: {self.lines}"
            line = json.loads(raw)
            self.lines.append(line)
            if accept(line):
                return line

    def events(self, topic: str) -> list[tuple[int, str]]:
        return [
            (line["id"], line["data"]["message"])
            for line in self.lines
            if line["kind"] == "event" and line.get("topic") == topic
        ]


async def watcher(watch: Path, live_http: str, token: str, client_id: str, *extra: str) -> AsyncIterator[Watcher]:
    process = await asyncio.create_subprocess_exec(
        tool("node"), str(watch), "--url", live_http, "--token", token, "--client-id", client_id,
        "--topic", "broadcast", *extra,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        yield Watcher(process)
    finally:
        if process.returncode is None:
            process.terminate()
            await process.wait()


async def broadcast(ctx: AppContext, message: str) -> None:
    await ctx.hub.publish("broadcast", [Subscription("broadcast", "broadcast")], {"message": message, "sender": "t"})


def following(ctx: AppContext, client_id: str) -> bool:
    return any(c.client_id == client_id and "broadcast" in c.topics.values() for c in ctx.hub.connections())


async def test_the_node_client_resumes_after_a_disconnection_without_loss_or_duplicates(
    start_live: StartLive, watch: Path
) -> None:
    live, ctx = await start_live()
    token = token_for(ctx, await create_user(ctx, Role.READER))
    async for node in watcher(watch, live.http, token, "node-resume"):
        starting = await node.until(lambda line: line.get("state") == "starting")
        assert starting["websocket"] == ("global" if node_major() >= 22 else "ws")  # Node 18-21: the ws package
        await node.until(lambda line: line.get("state") == "subscribed")
        await broadcast(ctx, "one")
        await broadcast(ctx, "two")
        await node.until(lambda line: line.get("data", {}).get("message") == "two")
        (connection,) = [c for c in ctx.hub.connections() if c.client_id == "node-resume"]
        ctx.hub.end(connection, 1012, "restarting")
        await node.until(lambda line: line.get("state") == "reconnecting")
        await broadcast(ctx, "three")  # while the client is away: replayed when it resumes
        await node.until(lambda line: line.get("state") == "subscribed")
        await wait_until(lambda: following(ctx, "node-resume"), within=10, what="the resubscription")
        await broadcast(ctx, "four")
        await node.until(lambda line: line.get("data", {}).get("message") == "four")
        ids = [event_id for event_id, _ in node.events("broadcast")]
        assert [message for _, message in node.events("broadcast")] == ["one", "two", "three", "four"]
        assert ids == sorted(set(ids))
        replayed = [line for line in node.lines if line.get("state") == "subscribed"][-1]
        assert replayed["replayed"] == 1


async def test_a_position_of_another_epoch_gets_resync_and_the_client_carries_on(
    start_live: StartLive, watch: Path
) -> None:
    live, ctx = await start_live()
    token = token_for(ctx, await create_user(ctx, Role.READER))
    async for node in watcher(watch, live.http, token, "node-stale", "--resume", "broadcast:5:stale-epoch"):
        resync = await node.until(lambda line: line.get("kind") == "resync")
        assert resync["topic"] == "broadcast"
        assert resync["reason"] == "epoch"
        await wait_until(lambda: following(ctx, "node-stale"), within=10, what="the subscription")
        await broadcast(ctx, "after resync")
        event = await node.until(lambda line: line.get("kind") == "event")
        assert event["data"]["message"] == "after resync"


async def test_a_refused_token_stops_the_node_client(start_live: StartLive, watch: Path) -> None:
    live, _ = await start_live()
    async for node in watcher(watch, live.http, "forged", "node-forged"):
        stopped = await node.until(lambda line: line.get("state") == "stopped")
        assert stopped["code"] == 4401
        assert await asyncio.wait_for(node.process.wait(), timeout=10) == 1
