"""Refused TLS handshakes leave a trace under every server: a log line with OpenSSL's reason and the peer, a metric.

Each server (Uvicorn, Hypercorn, Gunicorn with two workers) runs in mTLS mode as a real process; real clients
present a certificate without an Authority Key Identifier (refused by OpenSSL's strict checks), an expired one,
one of another CA, none at all, and plain HTTP on the TLS port. Each refusal must appear in the log with the
client's own address and in ``tls_handshake_failures_total{reason}``; a good certificate still gets through.
"""

from __future__ import annotations

import datetime as dt
import re
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from library_api.security.issuing import new_key, write_certificate, write_key
from tests.support.certs import PKI, make_pki
from tests.support.polling import wait_for
from tests.support.processes import ServerProcess

pytestmark = [pytest.mark.e2e, pytest.mark.children_unmeasured]

SERVERS = {
    "uvicorn": (),
    "hypercorn": ("--server", "hypercorn"),
    "gunicorn": ("--server", "gunicorn", "--workers", "2"),
}


def issue_without_authority_key_identifier(pki: PKI, name: str) -> None:
    """A client certificate of the test CA that lacks the Authority Key Identifier extension."""
    key = new_key()
    now = dt.datetime.now(dt.UTC)
    authority = pki.authority
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "oscar")]))
        .issuer_name(authority.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=10))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(authority.key, hashes.SHA256())
    )
    write_certificate(pki.cert(name), certificate)
    write_key(pki.key(name), key)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    made = make_pki(tmp_path_factory.mktemp("pki"))
    issue_without_authority_key_identifier(made, "no-aki")
    return made


@pytest.fixture(scope="module", params=sorted(SERVERS))
def server(
    request: pytest.FixtureRequest, pki: PKI, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    directory = tmp_path_factory.mktemp(f"handshakes-{request.param}")
    args: tuple[str, ...] = ("--cert", str(pki.cert("server")), "--key", str(pki.key("server")), "--ca", str(pki.ca))
    args += ("--crl", str(pki.crl), *SERVERS[request.param])
    env = {"PROMETHEUS_MULTIPROC_DIR": str(directory / "metrics")} if request.param == "gunicorn" else {}
    started = ServerProcess(
        database_url=f"sqlite+aiosqlite:///{directory}/library.db",
        directory=directory,
        args=args,
        env=env,
        scheme="https",
    ).launch()
    try:
        started.wait_ready(verify=pki.client_context("librarian"))
        yield started
    finally:
        started.stop()


def port_of(server: ServerProcess) -> int:
    return int(server.base_url.rsplit(":", 1)[1])


def exchange(context: ssl.SSLContext, raw: socket.socket) -> None:
    """A handshake and one request over ``raw``; an answer-less close counts as a reset."""
    with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        tls.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        if not tls.recv(1024):
            raise ConnectionResetError("closed without an answer")


def tls_attempt(pki: PKI, server: ServerProcess, name: str | None) -> int:
    """Make one TLS handshake holding ``name``'s certificate and a request; the client's own port.

    The handshake must fail on the client side too (TLS 1.3 reports a refused client certificate on the first
    read, hence the request).
    """
    context = pki.client_context(name)
    with socket.create_connection(("127.0.0.1", port_of(server)), timeout=10) as raw:
        local_port = int(raw.getsockname()[1])
        with pytest.raises((ssl.SSLError, ConnectionError)):
            exchange(context, raw)
    return local_port


def plain_http_attempt(server: ServerProcess) -> int:
    """Send plain HTTP to the TLS port; the client's own port."""
    with socket.create_connection(("127.0.0.1", port_of(server)), timeout=10) as raw:
        raw.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        try:
            while raw.recv(1024):
                pass
        except ConnectionError:
            pass
        return int(raw.getsockname()[1])


def failures(pki: PKI, server: ServerProcess) -> dict[str, float]:
    """``tls_handshake_failures_total`` by reason, scraped with the monitor's certificate."""
    with pki.client(server.base_url, "monitor") as client:
        text = client.get("/metrics").text
    found: dict[str, float] = {}
    for reason, value in re.findall(r'^tls_handshake_failures_total\{reason="([^"]+)"\} (\S+)$', text, re.MULTILINE):
        found[reason] = found.get(reason, 0.0) + float(value)
    return found


CASES = {
    "no-aki": "Missing Authority Key Identifier",
    "expired": "certificate has expired",
    "foreign": "unable to get local issuer certificate",
    None: "peer did not return a certificate",
}


@pytest.mark.parametrize("name", list(CASES), ids=str)
def test_a_refused_certificate_is_logged_with_the_reason_and_the_peer_and_counted(
    pki: PKI, server: ServerProcess, name: str | None
) -> None:
    reason = CASES[name]
    before = failures(pki, server).get(reason, 0.0)
    client_port = tls_attempt(pki, server, name)
    line = f"TLS handshake from 127.0.0.1:{client_port} refused: {reason}"
    wait_for(lambda: line in server.log_text(), 10, f"the log line {line!r}", interval=0.05)
    wait_for(lambda: failures(pki, server).get(reason, 0.0) == before + 1, 10, f"the {reason!r} count", interval=0.1)
    with pki.client(server.base_url, "librarian") as client:
        assert client.get("/api/v1/auth/principal").json()["subject"] == "certificate:alice"


def test_plain_http_on_the_tls_port_is_counted_and_logged(pki: PKI, server: ServerProcess) -> None:
    before = failures(pki, server).get("http request", 0.0)
    client_port = plain_http_attempt(server)
    line = f"TLS handshake from 127.0.0.1:{client_port} refused: http request"
    wait_for(lambda: line in server.log_text(), 10, f"the log line {line!r}", interval=0.05)
    assert failures(pki, server)["http request"] == before + 1


def test_a_client_that_closes_before_its_handshake_is_counted_not_logged(pki: PKI, server: ServerProcess) -> None:
    reason = "connection lost during handshake"
    before = failures(pki, server).get(reason, 0.0)
    with socket.create_connection(("127.0.0.1", port_of(server)), timeout=10) as raw:
        raw.sendall(b"\x16\x03\x01")  # the start of a ClientHello, then nothing
        client_port = int(raw.getsockname()[1])
    wait_for(lambda: failures(pki, server).get(reason, 0.0) == before + 1, 10, "the count", interval=0.1)
    assert f"127.0.0.1:{client_port}" not in server.log_text()


def test_the_certificate_helper_lacks_the_extension(pki: PKI) -> None:
    certificate = x509.load_pem_x509_certificate(Path(pki.cert("no-aki")).read_bytes())
    with pytest.raises(x509.ExtensionNotFound):
        certificate.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier)
