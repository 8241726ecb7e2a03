"""A client certificate revoked while its WebSocket is open, over a real mutual-TLS handshake with ``serve``.

``library-api serve`` runs in mTLS mode with a CRL (``--ca``, ``--crl``) as a real process. Two services hold
live connections with their own certificates (``dave``, to be revoked, and ``bob``), both following ``books``;
a librarian (``alice``, by certificate too) creates a book and both see it. The operator then publishes a CRL
that revokes dave's certificate (the file replaced atomically, as ``library-api certs revoke`` does): the
server's periodic credential check closes dave's socket with 4401, and a book created after the server has
decided so reaches bob (the sentinel) but never dave. A new handshake with dave's certificate is refused by the
TLS layer, logged with the reason and the client's port, and counted in ``tls_handshake_failures_total``.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.server.test_tls_handshake_failures import failures
from tests.support.certs import PKI, make_pki
from tests.support.factories import unique_isbn
from tests.support.polling import wait_for
from tests.support.processes import ServerProcess

pytestmark = pytest.mark.e2e

REVOKED_REASON = "The client certificate has been revoked."


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def server(pki: PKI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    directory = tmp_path_factory.mktemp("mtls-live")
    args = ("--cert", str(pki.cert("server")), "--key", str(pki.key("server")), "--ca", str(pki.ca))
    args += ("--crl", str(pki.crl))
    env = {"WS_CREDENTIAL_CHECK_INTERVAL": "0.2"}
    database_url = f"sqlite+aiosqlite:///{directory}/library.db"
    started = ServerProcess(env, database_url=database_url, directory=directory, args=args, scheme="https").launch()
    try:
        started.wait_ready(verify=pki.client_context("librarian"))
        yield started
    finally:
        started.stop()


def wss(server: ServerProcess, client_id: str) -> str:
    return server.base_url.replace("https://", "wss://") + f"/ws/{client_id}"


async def receive(client: ClientConnection, within: float = 10) -> dict[str, Any]:
    message: dict[str, Any] = orjson.loads(await asyncio.wait_for(client.recv(), timeout=within))
    return message


async def follow_books(client: ClientConnection) -> None:
    assert (await receive(client))["type"] == "welcome"
    await client.send('{"type": "subscribe", "topic": "books"}')
    while (await receive(client))["type"] != "subscribed":
        pass


async def create_book(pki: PKI, server: ServerProcess, title: str) -> None:
    async with httpx.AsyncClient(
        base_url=server.base_url, verify=pki.client_context("librarian"), timeout=10
    ) as librarian:
        body = {"isbn": unique_isbn(), "title": title, "authors": ["A. Writer"]}
        response = await librarian.post("/api/v1/books", json=body)
        assert response.status_code == 201, response.text


async def book_titles_until(client: ClientConnection, title: str) -> list[str]:
    """The titles of the book events read until the one with ``title``."""
    titles: list[str] = []
    while True:
        message = await receive(client)
        if message.get("type") == "book.created":
            titles.append(message["data"]["title"])
            if title in titles:
                return titles


async def read_to_close(client: ClientConnection, within: float = 10) -> tuple[list[dict[str, Any]], int | None, str]:
    """Every message until the server closes the connection, and the close code and reason."""
    messages: list[dict[str, Any]] = []
    try:
        async with asyncio.timeout(within):
            while True:
                messages.append(orjson.loads(await client.recv()))
    except ConnectionClosed:
        return messages, client.close_code, client.close_reason or ""


UPGRADE = (
    b"GET /ws/dave-again HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


def upgrade(context: ssl.SSLContext, raw: socket.socket) -> None:
    """A TLS handshake over ``raw`` and a WebSocket upgrade request; an answer-less close counts as a reset.

    Under TLS 1.3 the server's refusal of a client certificate reaches the client on its first read, after the
    upgrade request has been written.
    """
    with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        tls.sendall(UPGRADE)
        if not tls.recv(1024):
            raise ConnectionResetError("closed without an answer")


def refused_upgrade(pki: PKI, server: ServerProcess, name: str) -> int:
    """A WebSocket upgrade presenting ``name``'s certificate, which the TLS layer must refuse; the client's port."""
    port = int(server.base_url.rsplit(":", 1)[1])
    context = pki.client_context(name)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        client_port = int(raw.getsockname()[1])
        with pytest.raises((ssl.SSLError, ConnectionError)):
            upgrade(context, raw)
    return client_port


async def test_a_certificate_revoked_by_a_crl_reload_ends_its_live_socket_and_its_next_handshake(
    pki: PKI, server: ServerProcess
) -> None:
    async with (
        connect(wss(server, "dave-live"), ssl=pki.client_context("revoked"), open_timeout=10) as dave,
        connect(wss(server, "bob-live"), ssl=pki.client_context("reader"), open_timeout=10) as bob,
    ):
        await follow_books(dave)
        await follow_books(bob)
        await create_book(pki, server, "Before the revocation")
        assert await book_titles_until(dave, "Before the revocation") == ["Before the revocation"]
        assert await book_titles_until(bob, "Before the revocation") == ["Before the revocation"]

        before = failures(pki, server).get("certificate revoked", 0.0)
        pki.revoke("revoked")  # a new CRL file in place of the old one, as an operator publishes it
        decided = f"closing WebSocket client dave-live of certificate:dave: {REVOKED_REASON}"
        await asyncio.to_thread(wait_for, lambda: decided in server.log_text(), 10, "the server to close dave's socket")
        # Published after the server decided: the sentinel reaches bob, and nothing reaches dave.
        await create_book(pki, server, "After the revocation")
        assert await book_titles_until(bob, "After the revocation") == ["After the revocation"]
        messages, code, reason = await read_to_close(dave)
        assert (code, reason) == (4401, REVOKED_REASON)
        assert [m for m in messages if m.get("topic") == "books"] == []

    client_port = await asyncio.to_thread(refused_upgrade, pki, server, "revoked")
    line = f"TLS handshake from 127.0.0.1:{client_port} refused: certificate revoked"
    await asyncio.to_thread(wait_for, lambda: line in server.log_text(), 10, f"the log line {line!r}")
    assert failures(pki, server).get("certificate revoked", 0.0) == before + 1
    # The unrevoked certificate still connects.
    async with connect(wss(server, "bob-again"), ssl=pki.client_context("reader"), open_timeout=10) as again:
        assert (await receive(again))["type"] == "welcome"
