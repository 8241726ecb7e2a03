"""Errors reach Sentry when ``SENTRY_DSN`` is set: a real server, a real SDK, and a local HTTP endpoint standing in
for the Sentry ingest API (it receives the very envelopes the SDK would send to sentry.io)."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import sqlite3
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest

from tests.support.polling import wait_for
from tests.support.processes import TEST_ENVIRONMENT, ServerProcess

pytestmark = pytest.mark.e2e

SECRET_KEY = f"sentry-test-secret-{uuid.uuid4().hex}-{uuid.uuid4().hex}"


class Ingest(BaseHTTPRequestHandler):
    """Accepts envelopes like the Sentry API and keeps their decoded bodies."""

    received: ClassVar[list[tuple[str, bytes]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        Ingest.received.append((self.path, body))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, format: str, *args: object) -> None:
        return None


@pytest.fixture
def ingest() -> Iterator[tuple[str, list[tuple[str, bytes]]]]:
    Ingest.received = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Ingest)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://public0123456789abcdef@127.0.0.1:{server.server_address[1]}/42", Ingest.received
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


async def start_with_a_broken_catalogue(directory: Path, dsn: str) -> ServerProcess:
    """A server reporting to ``dsn`` whose database is at the code's revision but has lost its ``books`` table.

    A schema that is merely behind the code is a fault the service names (503 ``schema-behind``), not an error
    to report; a table gone from a database that claims to be current is the unexpected failure Sentry is for.
    """
    database = directory / "broken.db"
    server = ServerProcess(
        {**TEST_ENVIRONMENT, "DATABASE_URL": f"sqlite+aiosqlite:///{database}", "AUTO_MIGRATE": "false",
         "SENTRY_DSN": dsn, "SECRET_KEY": SECRET_KEY}, json_log=True)  # fmt: skip
    migrated = await asyncio.to_thread(server.run_cli, "migrate")
    assert migrated.returncode == 0, migrated.stdout + migrated.stderr
    with contextlib.closing(sqlite3.connect(database)) as connection:
        connection.execute("DROP TABLE books")
        connection.commit()
    await asyncio.to_thread(server.start)
    return server


async def test_an_unhandled_error_is_reported_without_secrets(
    ingest: tuple[str, list[tuple[str, bytes]]], tmp_path: Path
) -> None:
    dsn, received = ingest
    server = await start_with_a_broken_catalogue(tmp_path, dsn)
    try:
        async with httpx.AsyncClient(base_url=server.base_url) as http:
            failed = await http.get("/api/v1/books/1")
        assert failed.status_code == 500
        assert failed.json()["type"] == "urn:library-api:problem:internal-error"

        def reported() -> bool:
            return any(b'"exception"' in body for _, body in received)

        await asyncio.to_thread(wait_for, reported, 30, "the error to reach the Sentry endpoint")
    finally:
        assert await asyncio.to_thread(server.stop_cleanly)
    path, envelope = next((path, body) for path, body in received if b'"exception"' in body)
    assert path == "/api/42/envelope/"
    items = [json.loads(line) for line in envelope.splitlines() if line.startswith(b"{")]
    event = next(item for item in items if "exception" in item)
    assert event["environment"] == "development"
    assert event["release"] == "library-api@1.0.0"
    assert any("OperationalError" in value["type"] for value in event["exception"]["values"])
    assert SECRET_KEY.encode() not in envelope


def events_in(received: list[tuple[str, bytes]]) -> list[dict[str, Any]]:
    """The error events of every envelope received, in order (sessions and other items left out)."""
    events = []
    for _, body in received:
        lines = body.rstrip(b"\n").split(b"\n")
        items = lines[1:]  # after the envelope's header: an item header, then its payload, for every item
        for header, payload in zip(items[::2], items[1::2], strict=True):
            if json.loads(header).get("type") == "event":
                events.append(json.loads(payload))
    return events


async def test_client_errors_are_not_reported_and_the_next_server_error_is(
    ingest: tuple[str, list[tuple[str, bytes]]], tmp_path: Path
) -> None:
    """A 404, 401 or 422 is the client's mistake, not the operator's: not one event, though Sentry is on.

    Proven with a sentinel: after them, a request that fails on the server; its event arrives at the same
    endpoint through the same queue, after any event the earlier requests would have caused.
    """
    dsn, received = ingest
    server = await start_with_a_broken_catalogue(tmp_path, dsn)
    try:
        async with httpx.AsyncClient(base_url=server.base_url) as http:
            assert (await http.get("/api/v1/no-such-route")).status_code == 404
            assert (await http.get("/api/v1/auth/me")).status_code == 401
            assert (await http.get("/api/v1/books", params={"limit": "many"})).status_code == 422
            assert (await http.get("/api/v1/books/1")).status_code == 500  # the sentinel

        def sentinel_arrived() -> bool:
            return "OperationalError" in [kind(event) for event in events_in(received)]

        await asyncio.to_thread(wait_for, sentinel_arrived, 30, "the sentinel's event to reach the Sentry endpoint")
    finally:
        assert await asyncio.to_thread(server.stop_cleanly)
    assert "error reporting to Sentry is on" in server.log_text()
    assert [kind(event) for event in events_in(received)] == ["OperationalError"]


def kind(event: dict[str, Any]) -> str:
    """What an event reports: the type of its exception, or the message of the error logged."""
    if "exception" in event:
        return ",".join(sorted({value["type"].rpartition(".")[2] for value in event["exception"]["values"]}))
    return str(event.get("logentry", {}).get("message", ""))
