"""Every server (Uvicorn, Hypercorn, Gunicorn with two workers) in mTLS mode, as a real process with real TLS clients.

Each server gets one process for the module; every bad certificate must fail the handshake or be answered
401/403, the certificate's CN and roles must reach the route, and a certificate revoked after the server
started must be refused on the next connection.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from collections.abc import Iterator

import httpx
import pytest
import websockets

from tests.support.certs import PKI
from tests.support.factories import unique_isbn
from tests.support.processes import ServerProcess

# One xdist worker runs this module's tests, so its module-scoped servers start once (docs/testing.md).
pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("tls-servers")]

SERVERS = {
    "uvicorn": (),
    "hypercorn": ("--server", "hypercorn"),
    "gunicorn": ("--server", "gunicorn", "--workers", "2"),
}


@pytest.fixture(scope="module", params=sorted(SERVERS))
def mtls_server(
    request: pytest.FixtureRequest, pki: PKI, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    directory = tmp_path_factory.mktemp(f"mtls-{request.param}")
    args = ("--cert", str(pki.cert("server")), "--key", str(pki.key("server")), "--ca", str(pki.ca))
    args += ("--crl", str(pki.crl), *SERVERS[request.param])
    server = ServerProcess(
        database_url=f"sqlite+aiosqlite:///{directory}/library.db", directory=directory, args=args, scheme="https"
    ).launch()
    try:
        server.wait_ready(verify=pki.client_context("librarian"))
        yield server
    finally:
        server.stop()


def handshake_refused_or_denied(pki: PKI, server: ServerProcess, name: str) -> int | None:
    """The status a client holding ``name``'s certificate gets, or None when the handshake failed."""
    try:
        with pki.client(server.base_url, name) as client:
            return client.get("/api/v1/books").status_code
    except (httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError, ssl.SSLError):
        return None


def test_the_route_sees_the_certificate_cn_and_roles(pki: PKI, mtls_server: ServerProcess) -> None:
    with pki.client(mtls_server.base_url, "librarian") as client:
        response = client.get("/api/v1/auth/principal")
    assert response.status_code == 200
    assert response.json() == {
        "subject": "certificate:alice",
        "name": "alice",
        "credential": "certificate",
        "roles": ["librarian", "monitor"],
    }


def test_a_librarian_certificate_creates_a_book_and_a_reader_certificate_cannot(
    pki: PKI, mtls_server: ServerProcess
) -> None:
    book = {"isbn": unique_isbn(), "title": "Certificates in Practice", "authors": ["A. Writer"], "copies": 2}
    with pki.client(mtls_server.base_url, "reader") as client:
        refused = client.post("/api/v1/books", json=book)
    assert refused.status_code == 403
    assert refused.headers["content-type"] == "application/problem+json"
    with pki.client(mtls_server.base_url, "librarian") as client:
        created = client.post("/api/v1/books", json=book)
        assert created.status_code == 201, created.text
        assert client.get(f"/api/v1/books/{created.json()['id']}").json()["title"] == "Certificates in Practice"


def test_a_valid_certificate_with_no_known_role_gets_403_without_its_roles(
    pki: PKI, mtls_server: ServerProcess
) -> None:
    with pki.client(mtls_server.base_url, "unknown-role") as client:
        response = client.get("/api/v1/books")
    assert response.status_code == 403
    assert response.json()["type"] == "urn:library-api:problem:forbidden"
    assert "astronaut" not in response.text


@pytest.mark.parametrize(
    ("name", "outcome"),
    [
        ("expired", None),
        ("not-yet-valid", None),
        ("foreign", None),
        ("self-signed", None),
        ("server-auth-only", None),
        ("ca-as-leaf", None),
        # OpenSSL accepts a leaf without any extended key usage; the application refuses it.
        ("no-eku", 401),
    ],
)
def test_bad_certificates_fail_the_handshake_or_get_401(
    pki: PKI, mtls_server: ServerProcess, name: str, outcome: int | None
) -> None:
    assert handshake_refused_or_denied(pki, mtls_server, name) == outcome


def test_a_client_without_a_certificate_fails_the_handshake(pki: PKI, mtls_server: ServerProcess) -> None:
    with (
        pytest.raises((httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)),
        pki.client(mtls_server.base_url) as client,
    ):
        client.get("/api/v1/books")


def test_a_certificate_revoked_after_start_is_refused_on_the_next_connection(
    pki: PKI, mtls_server: ServerProcess
) -> None:
    name = "revoked"
    assert handshake_refused_or_denied(pki, mtls_server, name) == 200
    pki.revoke(name)
    try:
        deadline = time.monotonic() + 10
        results = set()
        # Gunicorn has two workers, each reloading on its own next handshake: try a few fresh connections.
        while time.monotonic() < deadline and len(results) < 6:
            results.add(handshake_refused_or_denied(pki, mtls_server, name) or 0)
            if results == {0}:
                break
        assert results == {0}
        assert handshake_refused_or_denied(pki, mtls_server, "librarian") == 200
    finally:
        pki.revoke()


@pytest.mark.parametrize(
    ("client", "alert"),
    [
        ({"maximum": ssl.TLSVersion.TLSv1_1}, "TLSV1_ALERT_PROTOCOL_VERSION"),
        ({"ciphers": "DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384"}, "SSLV3_ALERT_HANDSHAKE_FAILURE"),
    ],
    ids=["tls1.1", "dhe-only"],
)
def test_tls_1_1_and_dhe_only_clients_are_refused_by_the_server(
    pki: PKI, mtls_server: ServerProcess, client: dict[str, object], alert: str
) -> None:
    context = pki.client_context("librarian", **client)  # type: ignore[arg-type]
    with pytest.raises(httpx.ConnectError) as refused:
        httpx.get(mtls_server.base_url + "/health", verify=context, timeout=5)
    # The client did offer the handshake (a local refusal would say NO_PROTOCOLS/NO_CIPHERS_AVAILABLE); the
    # server answered with an alert or by closing the connection.
    assert alert in str(refused.value) or "UNEXPECTED_EOF_WHILE_READING" in str(refused.value), str(refused.value)


async def test_a_websocket_over_mtls_is_authenticated_by_its_certificate(pki: PKI, mtls_server: ServerProcess) -> None:
    url = mtls_server.base_url.replace("https://", "wss://") + "/ws/cert-client"
    async with websockets.connect(url, ssl=pki.client_context("librarian"), open_timeout=10) as socket:
        welcome = json.loads(await asyncio.wait_for(socket.recv(), timeout=10))
    assert welcome["type"] == "welcome"
    assert welcome["data"]["subject"] == "certificate:alice"
    assert welcome["data"]["roles"] == ["librarian", "monitor"]


def test_the_decision_is_logged(mtls_server: ServerProcess) -> None:
    assert "security mode mtls (auto: TLS_CA_FILE is set" in mtls_server.log_text()


@pytest.mark.parametrize("mtls_server", ["hypercorn"], indirect=True)
def test_hypercorn_speaks_http2_over_alpn_with_the_certificate_identity(pki: PKI, mtls_server: ServerProcess) -> None:
    with pki.client(mtls_server.base_url, "reader", http2=True) as client:
        response = client.get("/api/v1/auth/principal")
    assert response.http_version == "HTTP/2"
    assert response.json()["name"] == "bob"
