"""The deployment kit run for real on this machine: PostgreSQL and Redis, the service under Gunicorn with two
workers using deploy/gunicorn.conf.py and the production settings of .env.production.example, the real nginx
with deploy/nginx in front (TLS, WebSocket), and the real Prometheus with deploy/prometheus scraping it.

Every step that needs a piece still being built elsewhere checks for it in the code (a route, a worker class)
and skips with the reason until it is there: the WebSocket endpoint, /metrics, the startup probe, the Gunicorn
worker of library_api.server. The rest runs now.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import websockets.sync.client
import yaml

from tests.deploy.processes import (
    NginxSite,
    nginx_running,
    on_service_port,
    prepare_nginx,
    running,
)
from tests.deploy.support import (
    DEPLOY,
    ROOT,
    VENV_BIN,
    parse_exposition,
    tool,
)
from tests.support.databases import scratch_postgres_database
from tests.support.factories import unique_email, unique_isbn
from tests.support.measure import unmeasured
from tests.support.polling import wait_answering, wait_for
from tests.support.ports import listening_socket, port_of
from tests.support.services import (
    REDIS_URL,
    require_postgres,
    require_redis,
)

# One xdist worker runs this module's tests, so its module-scoped servers start once (docs/testing.md).
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.postgres,
    pytest.mark.redis,
    pytest.mark.slow,
    pytest.mark.xdist_group("deploy-stack"),
    pytest.mark.timeout(180),  # the first test sets the whole stack up; the drain test starts a second Gunicorn
]

PASSWORD = "correct-horse-battery-staple"
SHUTDOWN_TIMEOUT = 10


def production_environment(**overrides: str) -> dict[str, str]:
    """The service's environment as Compose gives it: .env.production.example's values, then the stack's."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("LIBRARY_API_", "WEB_"))}
    for line in (ROOT / ".env.production.example").read_text().splitlines():
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            env[key] = value
    env.update(overrides)
    return env


@dataclass
class Stack:
    """The running pieces and what a client needs to reach them."""

    work: Path
    database_url: str
    env: dict[str, str]
    api_port: int
    site: NginxSite
    gunicorn: subprocess.Popen[bytes]
    prometheus_port: int
    librarian_email: str
    admin_token: str

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.site.url(""), verify=self.tls(), timeout=30)

    def tls(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.site.ca_file)


def cli(env: dict[str, str], *arguments: str, cwd: Path) -> str:
    result = subprocess.run(
        [str(VENV_BIN / "library-api"), *arguments],
        env=unmeasured(env),  # the commands are measured in tests/cli; here they only set the stack up
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def login(http: httpx.Client, email: str) -> str:
    response = http.post("/api/v1/auth/login", data={"username": email, "password": PASSWORD})
    assert response.status_code == 200, response.text
    token: str = response.json()["access_token"]
    return token


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@contextmanager
def gunicorn(env: dict[str, str], listener: socket.socket, work: Path) -> Iterator[subprocess.Popen[bytes]]:
    """The service as the image runs it: Gunicorn with deploy/gunicorn.conf.py, two workers, on ``listener``.

    Gunicorn serves on the listening socket bound here (``--bind fd://N``); this copy is closed once it has
    started, so only Gunicorn can answer on the port.
    """
    port = port_of(listener)
    command = [str(VENV_BIN / "gunicorn"), "--config", str(DEPLOY / "gunicorn.conf.py")]
    command += ["--bind", f"fd://{listener.fileno()}"]
    # What the stack runs is measured by the tests of each part (tests/server, tests/deploy/test_gunicorn_conf.py);
    # unmeasured, the service runs here as it does in production.
    process_env = unmeasured({**env, "PORT": str(port), "WEB_CONCURRENCY": "2"})
    log = work / f"gunicorn-{port}.log"
    with listener, running(command, log=log, env=process_env, cwd=work, pass_fds=(listener.fileno(),)) as process:
        listener.close()
        wait_answering(f"http://127.0.0.1:{port}/health/ready", process, 120)
        yield process


def prometheus_config(work: Path, api_port: int, token: str) -> Path:
    """deploy/prometheus as deployed, pointed at this stack: static target, scrape token, fast intervals."""
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    config["global"]["scrape_interval"] = "1s"
    config["global"]["scrape_timeout"] = "1s"
    config["global"]["evaluation_interval"] = "1s"
    job = config["scrape_configs"][0]
    assert job["job_name"] == "library-api"
    assert job.pop("dns_sd_configs") == [{"names": ["api"], "type": "A", "port": 8000, "refresh_interval": "30s"}]
    job["static_configs"] = [{"targets": [f"127.0.0.1:{api_port}"]}]
    token_file = work / "scrape-token"
    token_file.write_text(token)
    job["authorization"]["credentials_file"] = str(token_file)
    (work / "prometheus").mkdir()
    (work / "prometheus" / "alerts.yml").write_text((DEPLOY / "prometheus" / "alerts.yml").read_text())
    path = work / "prometheus" / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def database(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    require_postgres()
    require_redis()
    tool("psql")
    with scratch_postgres_database("deploy_e2e") as url:
        yield url


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, database: str) -> Iterator[Stack]:
    tool("nginx")
    tool("prometheus")
    work = tmp_path_factory.mktemp("deploy-stack")
    metrics = work / "prometheus-multiproc"
    metrics.mkdir()
    env = production_environment(
        SECRET_KEY="e2e-" + uuid.uuid4().hex + uuid.uuid4().hex,
        DATABASE_URL=database,
        REDIS_URL=REDIS_URL,
        HOST="127.0.0.1",
        UPLOAD_DIR=str(work / "uploads"),
        PROMETHEUS_MULTIPROC_DIR=str(metrics),
        SHUTDOWN_TIMEOUT=str(SHUTDOWN_TIMEOUT),
        TRUSTED_PROXIES="127.0.0.1/32",
        # the names this test reaches the service by (nginx forwards the client's Host); the example's are real domains
        ALLOWED_HOSTS="localhost,127.0.0.1",
        # its own Redis keys (cache and rate-limit counts), whatever else uses the same Redis at the same time
        CACHE_KEY_PREFIX=f"e2e{uuid.uuid4().hex[:8]}_",
        REALTIME_REDIS_PREFIX=f"e2e-{uuid.uuid4().hex[:8]}:realtime",
        # every test here logs in from the same address (nginx on loopback); production's 10 logins a minute
        # per address would refuse the later ones
        RATE_LIMIT_ROUTES=json.dumps({"POST /api/v1/auth/login": "1000/minute"}),
        PYTHONWARNINGS="ignore::DeprecationWarning",
    )
    cli(env, "migrate", cwd=work)
    librarian = unique_email("librarian")
    admin = unique_email("admin")
    cli(env, "users", "create", "--email", librarian, "--role", "librarian", "--password", PASSWORD, cwd=work)
    cli(env, "users", "create", "--email", admin, "--role", "admin", "--password", PASSWORD, cwd=work)

    api = listening_socket()
    api_port = port_of(api)
    # nginx verifies client certificates (optional ones) and is the one peer the service believes for them
    site = prepare_nginx(work / "nginx", upstream_port=api_port, client_certificates=True)
    env.update(FORWARDED_CERT_PROXIES="127.0.0.1/32", TLS_CA_FILE=str(site.client_ca_file))
    with ExitStack() as stack_:
        process = stack_.enter_context(gunicorn(env, api, work))
        stack_.enter_context(nginx_running(site))
        with httpx.Client(base_url=site.url(""), verify=ssl.create_default_context(cafile=site.ca_file)) as http:
            admin_token = login(http, admin)
        config = prometheus_config(work, api_port, admin_token)
        _, prometheus_port = stack_.enter_context(
            on_service_port(
                lambda port: [
                    tool("prometheus"),
                    f"--config.file={config}",
                    f"--storage.tsdb.path={work / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                ],
                log=lambda port: work / f"prometheus-{port}.log",
                what="Prometheus",
            )
        )
        wait_for(
            lambda: httpx.get(f"http://127.0.0.1:{prometheus_port}/-/ready", timeout=2).status_code == 200,
            30,
            "Prometheus did not become ready",
        )
        yield Stack(work, database, env, api_port, site, process, prometheus_port, librarian, admin_token)


def book_a_copy(http: httpx.Client, stack: Stack) -> dict[str, Any]:
    """A librarian adds a book; a new reader registers, logs in and books it. Everything over HTTPS via nginx."""
    librarian = bearer(login(http, stack.librarian_email))
    created = http.post(
        "/api/v1/books", json={"isbn": unique_isbn(), "title": "Deployed", "authors": ["Ops"]}, headers=librarian
    )
    assert created.status_code == 201, created.text
    reader_email = unique_email("reader")
    registered = http.post(
        "/api/v1/auth/register", json={"email": reader_email, "password": PASSWORD, "full_name": "Dee Ployed"}
    )
    assert registered.status_code == 201, registered.text
    reader = bearer(login(http, reader_email))
    start = datetime.now(UTC) + timedelta(hours=1)
    booking = http.post(
        "/api/v1/bookings",
        json={
            "book_id": created.json()["id"],
            "start": start.isoformat(),
            "end": (start + timedelta(days=3)).isoformat(),
        },
        headers=reader,
    )
    assert booking.status_code == 201, booking.text
    assert booking.headers["x-request-id"]
    assert booking.headers.get_list("strict-transport-security") == ["max-age=63072000"]
    body: dict[str, Any] = booking.json()
    return body


def test_a_client_logs_in_and_books_over_https_through_nginx(stack: Stack) -> None:
    with stack.client() as http:
        booking = book_a_copy(http, stack)
        assert booking["status"] == "active"
        assert http.get("/api/v1/bookings", headers={}).status_code == 401
        redirected = httpx.get(f"http://127.0.0.1:{stack.site.http_port}/api/v1/books", headers={"Host": "localhost"})
        assert redirected.status_code == 301


def test_prometheus_runs_the_deployed_configuration_and_rules(stack: Stack) -> None:
    rules = httpx.get(f"http://127.0.0.1:{stack.prometheus_port}/api/v1/rules", timeout=5).json()
    loaded = {rule["name"] for group in rules["data"]["groups"] for rule in group["rules"]}
    assert {"LibraryApiInstanceDown", "LibraryApiHighErrorRatio", "LibraryApiNotReady"} <= loaded

    def scraped() -> set[str]:
        targets = httpx.get(f"http://127.0.0.1:{stack.prometheus_port}/api/v1/targets", timeout=5).json()
        return {target["scrapeUrl"] for target in targets["data"]["activeTargets"]}

    wait_for(
        lambda: f"http://127.0.0.1:{stack.api_port}/metrics" in scraped(),
        30,
        "Prometheus does not scrape the configured target",
    )


def test_prometheus_scrapes_the_service_and_sees_the_booking_route(stack: Stack) -> None:
    with stack.client() as http:
        book_a_copy(http, stack)
    api = f"http://127.0.0.1:{stack.prometheus_port}/api/v1"

    def target_up() -> bool:
        targets = httpx.get(f"{api}/targets", timeout=5).json()["data"]["activeTargets"]
        return any(t["labels"]["job"] == "library-api" and t["health"] == "up" for t in targets)

    wait_for(target_up, 30, "Prometheus never scraped the service successfully")
    query = 'sum by (status) (http_requests_total{job="library-api", method="POST", endpoint="/api/v1/bookings"})'

    def booked() -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = httpx.get(f"{api}/query", params={"query": query}, timeout=5).json()["data"][
            "result"
        ]
        return result

    wait_for(lambda: any(r["metric"]["status"] == "201" for r in booked()), 30, "no booking request in Prometheus")
    created = next(r for r in booked() if r["metric"]["status"] == "201")
    assert float(created["value"][1]) >= 1


def test_a_websocket_through_nginx_receives_an_event(stack: Stack) -> None:
    with stack.client() as http:
        librarian = login(http, stack.librarian_email)
        url = f"wss://localhost:{stack.site.https_port}/ws/deploy-e2e-{uuid.uuid4().hex[:8]}"
        with websockets.sync.client.connect(
            url, ssl=stack.tls(), additional_headers=bearer(librarian), open_timeout=10
        ) as connection:
            assert json.loads(connection.recv(timeout=10))["type"] == "welcome"
            connection.send(json.dumps({"type": "subscribe", "topic": "books"}))
            isbn = unique_isbn()
            created = http.post(
                "/api/v1/books", json={"isbn": isbn, "title": "Live", "authors": ["Ops"]}, headers=bearer(librarian)
            )
            assert created.status_code == 201, created.text
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                message = json.loads(connection.recv(timeout=max(deadline - time.monotonic(), 0.1)))
                if message.get("topic") == "books" and isbn in json.dumps(message.get("data")):
                    assert {"id", "type", "topic", "ts", "data"} <= set(message)
                    return
            pytest.fail("the book's event never arrived through nginx")


def test_certificate_headers_a_client_sends_never_pass_nginx(stack: Stack) -> None:
    """A client without a TLS client certificate sends nginx's own headers, carrying a genuine certificate of the
    client CA (certificates are public): nginx replaces them, so the service sees an anonymous caller. Had
    they passed, the service, which believes nginx for certificates, would have taken the caller for an admin."""
    genuine = stack.site.client_ca.issue_cert("mallory", common_name="mallory", organization_name="admin")
    headers = {"ssl-client-cert": quote(genuine.cert_chain_pems[0].bytes().decode()), "ssl-client-verify": "SUCCESS"}
    with stack.client() as http:
        whoami = http.get("/api/v1/auth/principal", headers=headers)
        users = http.get("/api/v1/users", headers=headers)
    assert whoami.status_code == 200, whoami.text
    assert whoami.json()["credential"] == "anonymous"
    assert users.status_code == 401


def test_a_client_certificate_verified_by_nginx_reaches_the_service(stack: Stack, tmp_path: Path) -> None:
    """The same certificate presented in the TLS handshake: nginx verifies it, forwards it, the service verifies
    it again against the same CA and reads its roles."""
    holder = stack.site.client_ca.issue_cert("erin", common_name="erin", organization_name="librarian")
    holder.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "erin.pem"))
    tls = stack.tls()
    tls.load_cert_chain(str(tmp_path / "erin.pem"))
    with httpx.Client(base_url=stack.site.url(""), verify=tls, timeout=30) as http:
        whoami = http.get("/api/v1/auth/principal")
    assert whoami.json() == {
        "subject": "certificate:erin",
        "name": "erin",
        "credential": "certificate",
        "roles": ["librarian"],
    }


def deploy_script(stack: Stack, command: str, *, path: str = "", **settings: str) -> subprocess.CompletedProcess[str]:
    """``deploy/deploy.sh COMMAND`` against the stack's entry point (``path`` appended), as an operator runs it."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("HEALTH_", "DEPLOY_"))}
    env.update(
        HEALTH_BASE_URL=f"https://localhost:{stack.site.https_port}{path}",
        HEALTH_CA_FILE=str(stack.site.ca_file),
        **settings,
    )
    return subprocess.run(
        [str(DEPLOY / "deploy.sh"), command], env=env, capture_output=True, text=True, timeout=120, check=False
    )


def test_deploy_health_passes_against_the_stack(stack: Stack) -> None:
    result = deploy_script(stack, "health", HEALTH_TOKEN=stack.admin_token, HEALTH_TIMEOUT="30")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "all health checks passed" in result.stdout


def test_the_release_check_passes_against_the_stack(stack: Stack) -> None:
    """``deploy.sh e2e``, the check the workflow runs on staging before production, against the real stack."""
    result = deploy_script(stack, "e2e", HEALTH_TIMEOUT="30")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "/api/v1/auth/me names the new reader" in result.stdout
    assert "end-to-end check passed" in result.stdout


def test_the_release_check_fails_where_no_service_answers(stack: Stack) -> None:
    """The same check against an entry point where no service answers fails, says why, and reports no success."""
    result = deploy_script(stack, "e2e", path="/nowhere", HEALTH_TIMEOUT="1")
    assert result.returncode != 0
    assert "end-to-end check passed" not in result.stdout
    assert "/health/ready did not answer 200" in result.stderr


def in_progress(port: int, token: str, endpoint: str) -> float:
    response = httpx.get(f"http://127.0.0.1:{port}/metrics", headers=bearer(token), timeout=5)
    assert response.status_code == 200, response.text
    assert "http_requests_in_progress" in parse_exposition(response.text)
    total = 0.0
    for line in response.text.splitlines():
        if line.startswith("http_requests_in_progress{") and f'endpoint="{endpoint}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_sigterm_drains_through_nginx_with_no_5xx_for_requests_in_flight(stack: Stack) -> None:
    """Slow requests (logins: argon2id at production cost) are in progress in both workers when Gunicorn gets
    SIGTERM; every one of them completes through nginx with 200, and Gunicorn exits 0."""
    listener = listening_socket()
    port = port_of(listener)
    # A costlier password hash keeps every login in flight for seconds, so all of them are surely in progress
    # (counted by the service itself) when the signal arrives.
    # Every login hashes at once (no queue for a hashing slot to time out in), and each request may take as long
    # as that costs on a loaded machine: the drain is what is tested here, not the hashing limits.
    env = {
        **stack.env,
        "PASSWORD_HASH_TIME_COST": "12",
        "PASSWORD_HASH_CONCURRENCY": "6",
        "PASSWORD_HASH_QUEUE_TIMEOUT": "120",
    }
    with ExitStack() as context:
        master = context.enter_context(gunicorn(env, listener, stack.work))
        site = prepare_nginx(stack.work / f"nginx-drain-{port}", upstream_port=port)
        context.enter_context(nginx_running(site))
        readers = []
        with httpx.Client(base_url=site.url(""), verify=ssl.create_default_context(cafile=site.ca_file)) as http:
            for _ in range(6):
                email = unique_email("drain")
                response = http.post(
                    "/api/v1/auth/register",
                    json={"email": email, "password": PASSWORD, "full_name": "In Flight"},
                    timeout=60,
                )
                assert response.status_code == 201, response.text
                readers.append(email)

        results: list[int] = []
        lock = threading.Lock()

        def log_in(email: str) -> None:
            with httpx.Client(base_url=site.url(""), verify=ssl.create_default_context(cafile=site.ca_file)) as c:
                status = c.post(
                    "/api/v1/auth/login", data={"username": email, "password": PASSWORD}, timeout=60
                ).status_code
            with lock:
                results.append(status)

        threads = [threading.Thread(target=log_in, args=(email,)) for email in readers]
        for thread in threads:
            thread.start()
        wait_for(
            lambda: in_progress(port, stack.admin_token, "/api/v1/auth/login") >= len(readers),
            20,
            "the logins were never all in progress at once",
        )
        master.send_signal(signal.SIGTERM)
        for thread in threads:
            thread.join(timeout=SHUTDOWN_TIMEOUT + 60)
        assert sorted(results) == [200] * len(readers), f"requests in flight answered {sorted(results)}"
        assert master.wait(timeout=SHUTDOWN_TIMEOUT + 60) == 0
