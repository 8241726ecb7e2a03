"""The http, https and token modes on every server, as real processes on loopback with real (TLS) clients."""

from __future__ import annotations

import ssl
import uuid
from pathlib import Path

import httpx
import pytest

from tests.support.certs import PKI
from tests.support.processes import ServerProcess

pytestmark = pytest.mark.e2e

SERVERS = {
    "uvicorn": (),
    "hypercorn": ("--server", "hypercorn"),
    "gunicorn": ("--server", "gunicorn", "--workers", "2"),
}


def serve(pki: PKI, directory: object, server: str, *args: str, scheme: str = "http") -> ServerProcess:
    path = Path(str(directory))
    process = ServerProcess(
        database_url=f"sqlite+aiosqlite:///{path}/library.db",
        directory=path,
        args=(*args, *SERVERS[server]),
        scheme=scheme,
    ).launch()
    process.wait_ready(verify=pki.client_context() if scheme == "https" else True)
    return process


@pytest.mark.parametrize("server", sorted(SERVERS))
def test_http_mode_serves_anonymous_readers_over_plain_http(pki: PKI, tmp_path: object, server: str) -> None:
    process = serve(pki, tmp_path, server)
    try:
        with httpx.Client(base_url=process.base_url) as client:
            assert client.get("/api/v1/books").status_code == 200
            principal = client.get("/api/v1/auth/principal").json()
        assert principal["credential"] == "anonymous"
        assert "security mode http (auto: no TLS_CERT_FILE/TLS_KEY_FILE" in process.log_text()
    finally:
        assert process.stop() == 0


@pytest.mark.parametrize("server", sorted(SERVERS))
def test_https_mode_speaks_tls_only_without_asking_for_a_certificate(pki: PKI, tmp_path: object, server: str) -> None:
    args = ("--mode", "https", "--cert", str(pki.cert("server")), "--key", str(pki.key("server")))
    process = serve(pki, tmp_path, server, *args, scheme="https")
    try:
        with httpx.Client(base_url=process.base_url, verify=pki.client_context()) as client:
            response = client.get("/api/v1/books")
            principal = client.get("/api/v1/auth/principal").json()
        assert response.status_code == 200
        assert response.headers["strict-transport-security"].startswith("max-age=")
        assert principal["credential"] == "anonymous"
        with pytest.raises(httpx.HTTPError):
            httpx.get(process.base_url.replace("https://", "http://") + "/health", timeout=5)
        insecure = pki.client_context()
        insecure.maximum_version = ssl.TLSVersion.TLSv1_2
        assert httpx.get(process.base_url + "/health", verify=insecure).status_code == 200
    finally:
        process.stop()


@pytest.mark.parametrize("server", sorted(SERVERS))
def test_token_mode_requires_credentials_except_on_public_routes(pki: PKI, tmp_path: object, server: str) -> None:
    args = ("--mode", "token", "--cert", str(pki.cert("server")), "--key", str(pki.key("server")), "--ca", str(pki.ca))
    process = serve(pki, tmp_path, server, *args, scheme="https")
    try:
        with httpx.Client(base_url=process.base_url, verify=pki.client_context()) as client:
            refused = client.get("/api/v1/books")
            assert refused.status_code == 401
            assert refused.headers["content-type"] == "application/problem+json"
            assert client.get("/health").status_code == 200
            assert client.get("/docs").status_code == 200
            # public routes are declared one by one: /auth/login is public, /auth/me beside it is not
            assert client.get("/api/v1/auth/me").status_code == 401
            email = f"{uuid.uuid4().hex[:8]}@example.com"
            password = "correct horse battery"
            assert (
                client.post(
                    "/api/v1/auth/register", json={"email": email, "password": password, "full_name": "Token User"}
                ).status_code
                == 201
            )
            token = client.post("/api/v1/auth/login", data={"username": email, "password": password}).json()
            headers = {"Authorization": f"Bearer {token['access_token']}"}
            assert client.get("/api/v1/books", headers=headers).status_code == 200
        # a verified client certificate is a credential in token mode too
        with pki.client(process.base_url, "reader") as client:
            assert client.get("/api/v1/books").status_code == 200
    finally:
        process.stop()


def test_hypercorn_with_two_forked_workers_serves_tls_and_stops_on_sigterm(pki: PKI, tmp_path: object) -> None:
    args = ("--mode", "https", "--cert", str(pki.cert("server")), "--key", str(pki.key("server")))
    path = Path(str(tmp_path))
    process = ServerProcess(
        database_url=f"sqlite+aiosqlite:///{path}/library.db",
        directory=path,
        args=(*args, "--server", "hypercorn", "--workers", "2"),
        scheme="https",
        bind_itself=True,
    ).launch()
    try:
        process.wait_ready(verify=pki.client_context())
        with httpx.Client(base_url=process.base_url, verify=pki.client_context()) as client:
            statuses = {client.get("/api/v1/books").status_code for _ in range(4)}
        assert statuses == {200}
    finally:
        assert process.stop() == 0
    assert process.log_text().count("hypercorn stopped") == 2
    assert "hypercorn started 2 workers" in process.log_text()
