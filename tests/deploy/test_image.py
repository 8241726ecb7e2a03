"""The image, built and run for real: the repository's Dockerfile on debian:bookworm-slim, as users build it.

Against this machine's PostgreSQL and Redis over host networking: the container runs as uid 10001 on a
read-only root with no capabilities and ``no-new-privileges``; ``library-api migrate`` and the default command
work; the HEALTHCHECK turns healthy in http, https and mtls; ``docker stop`` tells a connected WebSocket client,
logs the drain, closes it with 1001 and exits 0 with nothing at error level in the log.

The image is built once for the module and one http container serves every test that only reads, until the
stop test stops it; the https and mtls containers then boot side by side, each removed when its test is done.
Containers share the host's network and cannot inherit a socket: each binds a port of this xdist worker's own
range (:func:`tests.support.ports.service_port`), and the module runs on one worker (its ``xdist_group``).
"""

from __future__ import annotations

import asyncio
import json
import ssl
import threading
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import redis
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from library_api.security.issuing import Authority, write_certificate, write_key
from tests.deploy.containers import UID, Container, Docker, build_image, find_docker, run_once, service
from tests.support.databases import drop_postgres_database
from tests.support.ports import refused_port, service_port
from tests.support.services import (
    POSTGRES_ADMIN_DSN,
    POSTGRES_HOST,
    POSTGRES_PORT,
    REDIS_URL,
    require_postgres,
    require_redis,
)

# One xdist worker runs this module, so its module-scoped servers start once (docs/testing.md).
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.postgres,
    pytest.mark.redis,
    pytest.mark.slow,
    pytest.mark.xdist_group("image"),
]

PASSWORD = "correct-horse-battery-staple"
SHUTDOWN_TIMEOUT = 3
STOP_GRACE = 60
"""``docker stop --time``: far above the drain, so the drain ends by itself and Docker never kills."""


@pytest.fixture(scope="module")
def docker() -> Docker:
    return find_docker()


@pytest.fixture(scope="module")
def image(docker: Docker) -> str:
    return build_image(docker)


@pytest.fixture(scope="module")
def database() -> Iterator[str]:
    require_postgres()
    require_redis()
    name = f"image_{uuid.uuid4().hex[:10]}"

    async def create() -> None:
        connection = await asyncpg.connect(POSTGRES_ADMIN_DSN)
        try:
            await connection.execute(f'CREATE DATABASE "{name}"')
        finally:
            await connection.close()

    asyncio.run(create())
    try:
        yield name
    finally:
        asyncio.run(drop_postgres_database(name))


@pytest.fixture(scope="module")
def environment(database: str) -> Iterator[dict[str, str]]:
    """The production settings of one deployment: its own database and its own Redis keys."""
    prefix = f"image{uuid.uuid4().hex[:8]}"
    yield {
        "DATABASE_URL": f"postgresql+asyncpg://postgres@{POSTGRES_HOST}:{POSTGRES_PORT}/{database}",
        "REDIS_URL": REDIS_URL,
        "SECRET_KEY": uuid.uuid4().hex + uuid.uuid4().hex,
        "HOST": "127.0.0.1",
        # the names the tests reach the container by (production refuses '*')
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "WEB_CONCURRENCY": "2",
        "SHUTDOWN_TIMEOUT": str(SHUTDOWN_TIMEOUT),
        "SHUTDOWN_PROGRESS_INTERVAL": "1",
        "BROADCAST_INTERVAL": "0",
        "CACHE_KEY_PREFIX": f"{prefix}_",
        "REALTIME_REDIS_PREFIX": f"{prefix}:realtime",
    }
    client = redis.Redis.from_url(REDIS_URL)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@pytest.fixture(scope="module")
def migrated(docker: Docker, image: str, environment: dict[str, str]) -> dict[str, str]:
    # As Compose runs it: a one-off container of the image, the deployment's settings (no TLS of its own).
    result = run_once(docker, image, {**environment, "ALLOW_HTTP_BEHIND_PROXY": "true"}, "library-api", "migrate")
    assert result.returncode == 0, result.stdout + result.stderr
    return environment


@pytest.fixture(scope="module")
def http_service(docker: Docker, image: str, migrated: dict[str, str]) -> Iterator[Container]:
    """The default command in plain HTTP (TLS is a proxy's job here: ALLOW_HTTP_BEHIND_PROXY, as in Compose)."""
    with service(docker, image, {**migrated, "ALLOW_HTTP_BEHIND_PROXY": "true"}, service_port()) as container:
        container.wait_healthy()
        yield container


def test_migrate_creates_the_schema(migrated: dict[str, str], database: str) -> None:
    async def tables() -> set[str]:
        connection = await asyncpg.connect(POSTGRES_ADMIN_DSN.rsplit("/", 1)[0] + f"/{database}")
        try:
            rows = await connection.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
            version = await connection.fetchval("SELECT version_num FROM alembic_version")
        finally:
            await connection.close()
        assert version
        return {row["tablename"] for row in rows}

    assert {"users", "books", "bookings", "alembic_version"} <= asyncio.run(tables())


def test_runs_as_a_fixed_unprivileged_user_on_a_read_only_root(docker: Docker, http_service: Container) -> None:
    assert docker.inspect(http_service.name, "{{.Config.User}}") == f"{UID}:{UID}"
    assert http_service.exec("id", "-u").stdout.strip() == str(UID)
    assert http_service.exec("id", "-g").stdout.strip() == str(UID)
    for path in ("/probe", "/app/probe", "/opt/venv/probe"):
        written = http_service.exec("touch", path)
        assert written.returncode != 0
        assert "Read-only file system" in written.stderr
    assert http_service.exec("touch", "/tmp/probe").returncode == 0
    status = dict(
        line.split(":\t", 1) for line in http_service.exec("cat", "/proc/1/status").stdout.splitlines() if ":\t" in line
    )
    assert int(status["CapEff"], 16) == 0
    assert int(status["CapPrm"], 16) == 0
    assert int(status["CapBnd"], 16) == 0
    assert status["NoNewPrivs"].strip() == "1"
    assert status["Uid"].split()[:2] == [str(UID), str(UID)]


def register_and_login(base_url: str, **options: Any) -> str:
    """A real account: registration and an OAuth2 password login over HTTP; returns the access token."""
    email = f"image-{uuid.uuid4().hex[:10]}@example.org"
    with httpx.Client(base_url=base_url, timeout=30, **options) as http:
        created = http.post(
            "/api/v1/auth/register", json={"email": email, "password": PASSWORD, "full_name": "Image Reader"}
        )
        assert created.status_code == 201, created.text
        login = http.post("/api/v1/auth/login", data={"username": email, "password": PASSWORD})
        assert login.status_code == 200, login.text
        token: str = login.json()["access_token"]
        me = http.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {token}"})
        assert me.status_code == 200, me.text
        assert me.json()["email"] == email
    return token


def test_serves_health_and_the_api(http_service: Container) -> None:
    base = f"http://127.0.0.1:{http_service.port}"
    assert httpx.get(f"{base}/health", timeout=10).json()["status"] == "ok"
    assert httpx.get(f"{base}/health/ready", timeout=10).status_code == 200
    assert register_and_login(base)
    books = httpx.get(f"{base}/api/v1/books", timeout=10)
    assert books.status_code == 200, books.text


def test_the_healthcheck_probes_the_service_itself(http_service: Container) -> None:
    assert http_service.health() == "healthy"
    probe = http_service.exec("python", "/app/healthcheck.py", "/health/ready")
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.strip() == f"healthy: http://127.0.0.1:{http_service.port}/health/ready"
    elsewhere = http_service.exec("python", "/app/healthcheck.py", env={"PORT": str(refused_port())})
    assert elsewhere.returncode == 1
    assert "Connection refused" in elsewhere.stderr


def make_certificates(directory: Path) -> Path:
    """A CA, a server certificate for 127.0.0.1 and a client certificate for probes (role monitor).

    The container's user reads them through a supplementary group (``--group-add``): keys are 0640, since the
    service refuses a key every user may read.
    """
    directory.mkdir(mode=0o750)
    authority = Authority.create("Image Test CA")
    write_certificate(directory / "ca.pem", authority.certificate)
    for name, (certificate, key) in {
        "server": authority.issue_server(["127.0.0.1", "localhost"]),
        "probe": authority.issue_client("healthcheck", ["monitor"]),
    }.items():
        write_certificate(directory / f"{name}.pem", certificate)
        write_key(directory / f"{name}-key.pem", key)
    for path in directory.iterdir():
        path.chmod(0o640)
    directory.chmod(0o750)
    return directory


def error_lines(container: Container) -> list[str]:
    """Log lines at error level or above, lines that are not JSON, and Gunicorn's socket-closing complaint."""
    return [
        json.dumps(record)
        for record in container.records()
        if str(record.get("level", "")).lower() in {"error", "critical", "unparsed"}
        or "Bad file descriptor" in str(record.get("message", ""))
    ]


def test_docker_stop_drains_websocket_clients_and_exits_cleanly(docker: Docker, http_service: Container) -> None:
    """Last of the tests on the shared container: it stops it."""
    token = register_and_login(f"http://127.0.0.1:{http_service.port}")
    with connect(
        f"ws://127.0.0.1:{http_service.port}/ws/image-client",
        additional_headers={"Authorization": f"Bearer {token}"},
        open_timeout=30,
    ) as client:
        assert json.loads(client.recv(timeout=30))["type"] == "welcome"
        stopping = threading.Thread(target=stop_in_background, args=(docker, http_service.name), daemon=True)
        stopping.start()
        notice = next_message_of_type(client, "shutdown", within=30)
        assert 0 < notice["data"]["seconds_left"] <= SHUTDOWN_TIMEOUT
        wait_for_close(client, within=SHUTDOWN_TIMEOUT + 30)
        assert client.close_code == 1001
        assert client.close_reason == "server shutting down; reconnect later"
    stopping.join(timeout=STOP_GRACE + 30)
    assert not stopping.is_alive()
    assert http_service.exit_code() == 0, http_service.logs()
    messages = [str(record.get("message", "")) for record in http_service.records()]
    assert any(m.startswith("shutdown started: 1 connection(s) open") for m in messages), messages
    assert any(m.startswith("shutdown progress: 1 connection(s) open") for m in messages), messages
    assert "shutdown: closing 1 remaining connection(s) (timeout reached)" in messages, messages
    assert messages.count("Application shutdown complete.") == 2, messages
    assert "Shutting down: Master" in messages, messages
    assert error_lines(http_service) == [], http_service.logs()


def stop_in_background(docker: Docker, name: str) -> None:
    """``docker stop`` as an operator runs it; it returns when the container has exited."""
    docker("stop", "--time", str(STOP_GRACE), name, timeout=STOP_GRACE + 30)


def wait_for_close(client: ClientConnection, within: float) -> None:
    """Read until the server closes the connection (fails on a timeout)."""
    try:
        while True:
            client.recv(timeout=within)
    except ConnectionClosed:
        return


def next_message_of_type(client: ClientConnection, kind: str, within: float) -> dict[str, Any]:
    """Skip messages until one of type ``kind`` arrives (fails on a timeout or a closed connection)."""
    while True:
        message: dict[str, Any] = json.loads(client.recv(timeout=within))
        if message["type"] == kind:
            return message


def test_the_build_secret_stays_out_of_the_image(docker: Docker, image: str, http_service: Container) -> None:
    """The ``ca`` secret served the downloads of the build only: no file, no setting of it reaches the image."""
    assert http_service.exec("test", "-e", "/run/secrets/ca").returncode == 1
    settings = json.loads(docker.inspect(image, "{{json .Config.Env}}"))
    assert not [item for item in settings if item.split("=", 1)[0] in {"SSL_CERT_FILE", "PIP_CERT", "UV_NATIVE_TLS"}]
    history = docker("history", "--no-trunc", "--format", "{{.CreatedBy}}", image).stdout
    assert "BEGIN CERTIFICATE" not in history


@pytest.fixture(scope="module")
def tls_services(
    docker: Docker, image: str, migrated: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, tuple[Container, Path]]]:
    """An https and an mtls container, started together (one worker each) so that they boot side by side."""
    certs = make_certificates(tmp_path_factory.mktemp("image-tls") / "certs")
    tls = {"TLS_CERT_FILE": "/certs/server.pem", "TLS_KEY_FILE": "/certs/server-key.pem", "WEB_CONCURRENCY": "1"}
    modes = {
        "https": {**migrated, **tls, "SECURITY_MODE": "https"},
        "mtls": {**migrated, **tls, "SECURITY_MODE": "mtls", "TLS_CA_FILE": "/certs/ca.pem"},
    }
    mount = [f"--volume={certs}:/certs:ro", f"--group-add={certs.stat().st_gid}"]
    with ExitStack() as stack:
        yield {
            mode: (stack.enter_context(service(docker, image, env, service_port(), options=mount)), certs)
            for mode, env in modes.items()
        }


def test_the_healthcheck_turns_healthy_over_https(tls_services: dict[str, tuple[Container, Path]]) -> None:
    container, certs = tls_services["https"]
    container.wait_healthy()
    base = f"https://127.0.0.1:{container.port}"
    probe = container.exec("python", "/app/healthcheck.py")
    assert probe.stdout.strip() == f"healthy: {base}/health", probe.stderr
    trust = ssl.create_default_context(cafile=str(certs / "ca.pem"))
    assert httpx.get(f"{base}/health", verify=trust, timeout=10).json()["status"] == "ok"
    assert error_lines(container) == [], container.logs()
    container.remove()


def test_the_healthcheck_turns_healthy_over_mtls(tls_services: dict[str, tuple[Container, Path]]) -> None:
    container, certs = tls_services["mtls"]
    container.wait_healthy()
    base = f"https://127.0.0.1:{container.port}"
    trust = ssl.create_default_context(cafile=str(certs / "ca.pem"))
    with pytest.raises((ssl.SSLError, httpx.TransportError)):
        httpx.get(f"{base}/health", verify=trust, timeout=10)
    # Without a certificate of its own, the image's probe checks the handshake; with one, the route itself.
    handshake = container.exec("python", "/app/healthcheck.py")
    assert handshake.stdout.strip() == f"healthy: mtls handshake with 127.0.0.1:{container.port}", handshake.stderr
    probe_certificate = {"HEALTHCHECK_CERT_FILE": "/certs/probe.pem", "HEALTHCHECK_KEY_FILE": "/certs/probe-key.pem"}
    full = container.exec("python", "/app/healthcheck.py", "/health/ready", env=probe_certificate)
    assert full.stdout.strip() == f"healthy: {base}/health/ready", full.stderr
    trust.load_cert_chain(str(certs / "probe.pem"), str(certs / "probe-key.pem"))
    assert httpx.get(f"{base}/health", verify=trust, timeout=10).json()["status"] == "ok"
    assert error_lines(container) == [], container.logs()
    container.remove()
