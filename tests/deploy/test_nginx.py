"""nginx, the real Debian binary, with the repository's configuration: `nginx -t`, then its behaviour in front of
an echo upstream: redirect, TLS profile, forwarded headers, client certificates, WebSocket upgrade, limits,
gzip, cover images, its own errors as problems."""

from __future__ import annotations

import json
import math
import re
import socket
import ssl
import sys
import time
import urllib.parse
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme
import websockets.sync.client

from library_api.config import Settings
from library_api.server.gunicorn_settings import process_options
from tests.deploy.processes import NginxSite, answers, nginx_running, prepare_nginx, running
from tests.deploy.support import DEPLOY, run, tool
from tests.support.measure import unmeasured
from tests.support.polling import wait_for
from tests.support.ports import listening_socket, port_of, refused_port

# One xdist worker runs this module's tests, so its module-scoped servers start once (docs/testing.md).
pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("nginx")]

COVER_NAME = "0123456789abcdef0123456789abcdef.png"


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    log = tmp_path_factory.mktemp("upstream") / "uvicorn.log"
    root = Path(__file__).resolve().parents[2]
    with listening_socket() as listener:  # the upstream serves on it; no stranger can answer nginx instead
        fd = listener.fileno()
        command = [
            sys.executable,
            "-m",
            "uvicorn",
            "tests.deploy.echo_upstream:app",
            "--fd",
            str(fd),
            "--no-access-log",
        ]
        # none of the service's code runs in the echo upstream: it is not measured
        with running(command, log=log, cwd=root, env=unmeasured(), pass_fds=(fd,)) as process:
            port = port_of(listener)
            wait_for(
                lambda: answers(f"http://127.0.0.1:{port}/", process), 30, f"the echo upstream:\n{log.read_text()}"
            )
            yield port


def start_site(tmp_path_factory: pytest.TempPathFactory, upstream_port: int, *, mtls: bool = False) -> NginxSite:
    tool("nginx")
    return prepare_nginx(tmp_path_factory.mktemp("nginx"), upstream_port=upstream_port, client_certificates=mtls)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, upstream: int) -> Iterator[NginxSite]:
    prepared = start_site(tmp_path_factory, upstream)
    (prepared.uploads / "covers").mkdir()
    (prepared.uploads / "covers" / COVER_NAME).write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
    (prepared.uploads / "covers" / f".{COVER_NAME}.part").write_bytes(b"partial")
    with nginx_running(prepared):
        yield prepared


@pytest.fixture(scope="module")
def mtls_site(tmp_path_factory: pytest.TempPathFactory, upstream: int) -> Iterator[NginxSite]:
    prepared = start_site(tmp_path_factory, upstream, mtls=True)
    with nginx_running(prepared):
        yield prepared


@pytest.fixture
def client(site: NginxSite) -> Iterator[httpx.Client]:
    with httpx.Client(verify=ssl.create_default_context(cafile=site.ca_file), timeout=10) as http:
        yield http


def echoed(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


# ----- the configuration as nginx reads it -----


def test_nginx_accepts_the_configuration(tmp_path: Path) -> None:
    tool("nginx")
    plain = prepare_nginx(tmp_path / "plain", upstream_port=refused_port())
    result = run(*plain.command("-t"))
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr


def test_nginx_accepts_the_configuration_with_client_certificates(tmp_path: Path) -> None:
    tool("nginx")
    mutual = prepare_nginx(tmp_path / "mtls", upstream_port=refused_port(), client_certificates=True)
    result = run(*mutual.command("-t"))
    assert result.returncode == 0, result.stderr


def test_nginx_rejects_a_broken_configuration(tmp_path: Path) -> None:
    tool("nginx")
    broken = prepare_nginx(tmp_path / "broken", upstream_port=refused_port())
    servers = broken.config.parent / "library-api.conf"
    servers.write_text(servers.read_text().replace("proxy_read_timeout 1900s;", "proxy_read_timeout 1900s"))
    assert run(*broken.command("-t")).returncode != 0


def directive(text: str, name: str, within: str | None = None) -> str:
    if within is not None:
        text = text[text.index(within) :]
    match = re.search(rf"^\s*{name}\s+([^;]+);", text, re.MULTILINE)
    assert match is not None, f"no {name} directive"
    return match.group(1).strip()


def seconds(value: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600}
    return float(value[:-1]) * units[value[-1]] if value[-1] in units else float(value)


def test_limits_and_timeouts_agree_with_the_service_and_gunicorn() -> None:
    main = (DEPLOY / "nginx" / "nginx.conf").read_text()
    servers = (DEPLOY / "nginx" / "library-api.conf").read_text()
    settings = Settings()
    assert directive(main, "client_max_body_size") == f"{settings.max_request_body_size // (1024 * 1024)}m"
    cover_limit = int(directive(servers, "client_max_body_size", within="location ~ ^/api/v1/books/").rstrip("m"))
    assert cover_limit * 1024 * 1024 >= settings.max_upload_size + 64 * 1024
    websocket_timeout = seconds(directive(servers, "proxy_read_timeout", within="location /ws/"))
    assert websocket_timeout > math.ceil(settings.shutdown_timeout) + 30
    upstream_idle = seconds(directive(main, "keepalive_timeout", within="upstream library_api"))
    gunicorn_keepalive = process_options(settings, {})["keepalive"]
    assert gunicorn_keepalive > upstream_idle, "the service must outlast nginx's idle upstream connections"
    assert "TLSv1.2 TLSv1.3" in directive(main, "ssl_protocols")
    ciphers = directive(main, "ssl_ciphers").split(":")
    assert all(c.startswith("ECDHE-") and ("GCM" in c or "CHACHA20" in c) for c in ciphers)


# ----- behaviour -----


def test_plain_http_redirects_to_https(site: NginxSite) -> None:
    response = httpx.get(f"http://127.0.0.1:{site.http_port}/api/v1/books?q=dune", headers={"Host": "localhost"})
    assert response.status_code == 301
    assert response.headers["location"] == "https://localhost/api/v1/books?q=dune"


def test_acme_challenges_are_answered_over_plain_http(site: NginxSite) -> None:
    challenge = site.prefix / "acme" / ".well-known" / "acme-challenge"
    challenge.mkdir(parents=True)
    (challenge / "token123").write_text("token123.thumbprint")
    response = httpx.get(f"http://127.0.0.1:{site.http_port}/.well-known/acme-challenge/token123")
    assert response.status_code == 200
    assert response.text == "token123.thumbprint"


def handshake(site: NginxSite, context: ssl.SSLContext) -> str | None:
    """The negotiated TLS version, or None when the handshake is refused."""
    with socket.create_connection(("127.0.0.1", site.https_port), timeout=5) as raw:
        try:
            with context.wrap_socket(raw, server_hostname="localhost") as tls:
                return tls.version()
        except (ssl.SSLError, ConnectionResetError):
            return None


def client_context(site: NginxSite) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=site.ca_file)


def test_tls_1_2_and_1_3_with_modern_suites(site: NginxSite) -> None:
    assert handshake(site, client_context(site)) == "TLSv1.3"
    tls12 = client_context(site)
    tls12.maximum_version = ssl.TLSVersion.TLSv1_2
    assert handshake(site, tls12) == "TLSv1.2"


@pytest.mark.parametrize(
    "ciphers",
    [
        "AES128-SHA:AES256-SHA",  # RSA key exchange, CBC
        "ECDHE-RSA-AES128-SHA:ECDHE-RSA-AES256-SHA384",  # ECDHE but CBC
        "DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384",  # finite-field DHE
    ],
)
def test_tls_1_2_clients_without_ecdhe_aead_suites_are_refused(site: NginxSite, ciphers: str) -> None:
    context = client_context(site)
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(ciphers + ":@SECLEVEL=0")
    assert handshake(site, context) is None


def test_tls_1_1_is_refused(site: NginxSite) -> None:
    context = client_context(site)
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # offering TLS 1.1 is the point of this test
        context.minimum_version = ssl.TLSVersion.TLSv1_1
        context.maximum_version = ssl.TLSVersion.TLSv1_1
    assert handshake(site, context) is None


def test_forwarded_headers_reach_the_service(site: NginxSite, client: httpx.Client) -> None:
    seen = echoed(client.get(site.url("/api/v1/books"), headers={"X-Forwarded-For": "203.0.113.9"}))["headers"]
    assert seen["x-forwarded-proto"] == ["https"]
    assert seen["x-real-ip"] == ["127.0.0.1"]
    # nginx appends the address it saw; the service trusts only the entries its trusted proxies added.
    assert seen["x-forwarded-for"] == ["203.0.113.9, 127.0.0.1"]
    assert seen["host"] == ["localhost"]
    assert seen["x-forwarded-port"] == [str(site.https_port)]


def test_every_request_gets_one_request_id(site: NginxSite, client: httpx.Client) -> None:
    generated = client.get(site.url("/api/v1/books"))
    upstream_saw = echoed(generated)["headers"]["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", upstream_saw[0])
    assert generated.headers.get_list("x-request-id") == upstream_saw
    kept = client.get(site.url("/api/v1/books"), headers={"X-Request-ID": "client-trace-0001"})
    assert echoed(kept)["headers"]["x-request-id"] == ["client-trace-0001"]
    assert kept.headers.get_list("x-request-id") == ["client-trace-0001"]
    replaced = client.get(site.url("/api/v1/books"), headers={"X-Request-ID": "bad id with spaces"})
    assert re.fullmatch(r"[0-9a-f]{32}", echoed(replaced)["headers"]["x-request-id"][0])


def test_hsts_is_sent_once(site: NginxSite, client: httpx.Client) -> None:
    response = client.get(site.url("/api/v1/books"))
    assert response.headers.get_list("strict-transport-security") == ["max-age=63072000"]


def test_a_client_cannot_forge_the_client_certificate_headers(site: NginxSite, client: httpx.Client) -> None:
    forged = {"ssl-client-cert": "-----BEGIN%20CERTIFICATE-----forged", "ssl-client-verify": "SUCCESS"}
    seen = echoed(client.get(site.url("/api/v1/books"), headers=forged))["headers"]
    assert "ssl-client-cert" not in seen
    assert seen["ssl-client-verify"] == ["NONE"]


FORGED = {
    "ssl-client-cert": "-----BEGIN%20CERTIFICATE-----forged",
    "ssl-client-verify": "SUCCESS",
    "ssl_client_cert": "forged-with-an-underscore",
}
"""What a client would send to pass as a certificate holder if nginx let its headers through."""

PROXIED = [("GET", "/api/v1/books"), ("GET", "/health"), ("PUT", "/api/v1/books/7/cover")]
"""A request to each proxying location of library-api.conf: `/`, `/health`, cover uploads (`/ws/`: its own test)."""


def forged_request(site: NginxSite, context: ssl.SSLContext, method: str, path: str) -> dict[str, list[str]]:
    """The headers the upstream received for a request carrying :data:`FORGED`."""
    with httpx.Client(verify=context, timeout=10) as http:
        seen: dict[str, list[str]] = echoed(http.request(method, site.url(path), headers=FORGED, content=b"x"))[
            "headers"
        ]
    assert seen["x-forwarded-proto"] == ["https"], "the request did not pass through a proxying location"
    return seen


@pytest.mark.parametrize(("method", "path"), PROXIED)
def test_forged_certificate_headers_never_pass_any_location(site: NginxSite, method: str, path: str) -> None:
    seen = forged_request(site, client_context(site), method, path)
    assert "ssl-client-cert" not in seen
    assert "ssl_client_cert" not in seen
    assert seen["ssl-client-verify"] == ["NONE"]


@pytest.mark.parametrize(("method", "path"), PROXIED)
def test_with_client_certificates_on_nginx_still_overwrites_both_headers(
    mtls_site: NginxSite, tmp_path: Path, method: str, path: str
) -> None:
    anonymous = forged_request(mtls_site, client_context(mtls_site), method, path)
    assert "ssl-client-cert" not in anonymous
    assert anonymous["ssl-client-verify"] == ["NONE"]
    leaf = mtls_site.client_ca.issue_cert("reader@example.org")
    cert_file, key_file = tmp_path / "client.pem", tmp_path / "client.key"
    cert_file.write_bytes(leaf.cert_chain_pems[0].bytes())
    key_file.write_bytes(leaf.private_key_pem.bytes())
    context = client_context(mtls_site)
    context.load_cert_chain(cert_file, key_file)
    holder = forged_request(mtls_site, context, method, path)
    assert holder["ssl-client-verify"] == ["SUCCESS"]
    (forwarded,) = holder["ssl-client-cert"]
    assert urllib.parse.unquote(forwarded).strip() == leaf.cert_chain_pems[0].bytes().decode().strip()


def test_forged_certificate_headers_never_pass_the_websocket_location(site: NginxSite) -> None:
    url = f"wss://localhost:{site.https_port}/ws/client-2"
    with websockets.sync.client.connect(url, ssl=client_context(site), additional_headers=FORGED) as socket_:
        seen = json.loads(socket_.recv(timeout=5))["headers"]
    assert seen["upgrade"] == ["websocket"]
    assert "ssl-client-cert" not in seen
    assert "ssl_client_cert" not in seen
    assert seen["ssl-client-verify"] == ["NONE"]


def test_the_certificate_headers_are_set_unconditionally_for_every_proxied_request() -> None:
    """In the configuration itself: one snippet sets both headers, outside any condition, to what nginx verified;
    every location that proxies includes it and nothing else proxies or sets them."""
    nginx_dir = DEPLOY / "nginx"
    snippet = (nginx_dir / "snippets" / "proxy.conf").read_text()
    code = "\n".join(line.split("#", 1)[0] for line in snippet.splitlines())
    assert "{" not in code, "proxy.conf must hold plain directives, no `if` or other block"
    headers = dict(re.findall(r"^\s*proxy_set_header\s+(ssl-client-\S+)\s+(\S+);", code, re.MULTILINE))
    assert headers.get("ssl-client-verify") == "$ssl_client_verify"
    certificate = headers.get("ssl-client-cert", "")
    if certificate != "$ssl_client_escaped_cert":
        # A map that yields the escaped certificate only when nginx verified it, and nothing otherwise.
        main = (nginx_dir / "nginx.conf").read_text()
        block = re.search(rf"map\s+\$ssl_client_verify\s+{re.escape(certificate)}\s*\{{([^}}]*)\}}", main)
        assert block is not None, (
            f"ssl-client-cert is set to {certificate!r}, which is not nginx's verified certificate"
        )
        entries = dict(re.findall(r"^\s*(\S+)\s+(\S+);", block.group(1), re.MULTILINE))
        assert entries == {"default": '""', "SUCCESS": "$ssl_client_escaped_cert"}, entries
    files = [path for path in nginx_dir.rglob("*.conf") if path.name != "proxy.conf"]
    for path in files:
        text = "\n".join(line.split("#", 1)[0] for line in path.read_text().splitlines())
        assert "proxy_pass" not in text, f"{path.name} proxies without snippets/proxy.conf"
        assert not re.search(r"proxy_set_header\s+ssl[-_]client", text, re.IGNORECASE), path.name
        assert "underscores_in_headers on" not in text, path.name
        assert "proxy_pass_request_headers" not in text, path.name
    servers = (nginx_dir / "library-api.conf").read_text()
    assert servers.count("include snippets/proxy.conf;") == len(PROXIED) + 1, "a proxying location is untested"


def test_metrics_and_dotfiles_are_not_served(site: NginxSite, client: httpx.Client) -> None:
    for path in ("/metrics", "/.env", "/api/.git/config", "/ws/.hidden"):
        response = client.get(site.url(path))
        assert response.status_code == 404, path
        assert "body_size" not in response.text, f"{path} reached the service"


def test_cover_images_are_served_from_the_uploads_directory(site: NginxSite, client: httpx.Client) -> None:
    response = client.get(site.url(f"/uploads/covers/{COVER_NAME}"))
    assert response.status_code == 200
    assert response.content.startswith(b"\x89PNG")
    assert response.headers["content-type"] == "image/png"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert "immutable" in response.headers["cache-control"]
    for path in (
        "/uploads/",
        "/uploads/covers/",
        "/uploads/covers/short.png",
        f"/uploads/covers/.{COVER_NAME}.part",
        f"/uploads/covers/{COVER_NAME[:-4]}.svg",
    ):
        assert client.get(site.url(path)).status_code == 404, path
    # A path climbing out of the uploads directory is normalised by nginx and never reaches a file.
    escaped = client.get(site.url("/uploads/covers/%2e%2e/%2e%2e/conf/certs/privkey.pem"))
    assert "PRIVATE KEY" not in escaped.text


def test_request_bodies_are_limited_like_the_service(site: NginxSite, client: httpx.Client) -> None:
    too_large = client.post(site.url("/api/v1/books"), content=b"x" * (1024 * 1024 + 1))
    assert too_large.status_code == 413
    assert too_large.headers["content-type"] == "application/problem+json"
    assert too_large.json()["type"] == "urn:library-api:problem:content-too-large"
    cover = client.put(site.url("/api/v1/books/7/cover"), content=b"x" * (3 * 1024 * 1024))
    assert echoed(cover)["body_size"] == 3 * 1024 * 1024
    assert client.put(site.url("/api/v1/books/7/cover"), content=b"x" * (7 * 1024 * 1024)).status_code == 413


def test_large_json_is_compressed(site: NginxSite, client: httpx.Client) -> None:
    large = client.get(site.url("/api/v1/large"), headers={"Accept-Encoding": "gzip"})
    assert large.headers["content-encoding"] == "gzip"
    assert len(large.json()["padding"]) == 5000
    small = client.get(site.url("/api/v1/books"), headers={"Accept-Encoding": "gzip"})
    assert "content-encoding" not in small.headers


def test_websocket_upgrade_through_nginx(site: NginxSite) -> None:
    context = client_context(site)
    with websockets.sync.client.connect(f"wss://localhost:{site.https_port}/ws/client-1", ssl=context) as socket_:
        hello = json.loads(socket_.recv(timeout=5))
        assert hello["path"] == "/ws/client-1"
        assert hello["headers"]["x-forwarded-proto"] == ["https"]
        assert hello["headers"]["upgrade"] == ["websocket"]
        socket_.send("ping through nginx")
        assert socket_.recv(timeout=5) == "ping through nginx"


def test_verified_client_certificates_are_forwarded(mtls_site: NginxSite, tmp_path: Path) -> None:
    leaf = mtls_site.client_ca.issue_cert("reader@example.org")
    cert_file, key_file = tmp_path / "client.pem", tmp_path / "client.key"
    cert_file.write_bytes(leaf.cert_chain_pems[0].bytes())
    key_file.write_bytes(leaf.private_key_pem.bytes())
    context = client_context(mtls_site)
    context.load_cert_chain(cert_file, key_file)
    with httpx.Client(verify=context, timeout=10) as http:
        seen = echoed(http.get(mtls_site.url("/api/v1/books")))["headers"]
    assert seen["ssl-client-verify"] == ["SUCCESS"]
    assert urllib.parse.unquote(seen["ssl-client-cert"][0]).strip() == leaf.cert_chain_pems[0].bytes().decode().strip()


def test_without_a_certificate_the_caller_is_anonymous(mtls_site: NginxSite) -> None:
    with httpx.Client(verify=client_context(mtls_site), timeout=10) as http:
        seen = echoed(http.get(mtls_site.url("/api/v1/books"), headers={"ssl-client-cert": "forged"}))["headers"]
    assert seen["ssl-client-verify"] == ["NONE"]
    assert "ssl-client-cert" not in seen


def test_a_certificate_from_another_authority_is_refused_as_a_problem(mtls_site: NginxSite, tmp_path: Path) -> None:
    stranger = trustme.CA().issue_cert("intruder@example.org")
    cert_file, key_file = tmp_path / "stranger.pem", tmp_path / "stranger.key"
    cert_file.write_bytes(stranger.cert_chain_pems[0].bytes())
    key_file.write_bytes(stranger.private_key_pem.bytes())
    context = client_context(mtls_site)
    context.load_cert_chain(cert_file, key_file)
    with httpx.Client(verify=context, timeout=10) as http:
        refused = http.get(mtls_site.url("/api/v1/books"))
    assert refused.status_code == 400
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.json()["type"] == "urn:library-api:problem:client-certificate-refused"


def test_an_unreachable_service_is_a_502_problem(tmp_path_factory: pytest.TempPathFactory) -> None:
    prepared = start_site(tmp_path_factory, refused_port())
    with nginx_running(prepared), httpx.Client(verify=client_context(prepared), timeout=10) as http:
        response = http.get(prepared.url("/api/v1/books"))
    assert response.status_code == 502
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["retry-after"] == "5"
    assert response.json() == {
        "type": "urn:library-api:problem:bad-gateway",
        "title": "Bad gateway",
        "status": 502,
        "detail": "The service is not reachable right now; try again shortly.",
    }


def test_the_access_log_is_json(site: NginxSite, client: httpx.Client) -> None:
    client.get(site.url("/api/v1/books"), headers={"X-Request-ID": "access-log-check-1"})
    log = site.prefix / "access.log"

    def logged() -> list[dict[str, Any]]:
        return [json.loads(line) for line in log.read_text().splitlines() if line]

    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not any(e["request_id"] == "access-log-check-1" for e in logged()):
        time.sleep(0.05)
    entry = next(e for e in logged() if e["request_id"] == "access-log-check-1")
    assert entry["status"] == 200
    assert entry["uri"] == "/api/v1/books"
    assert entry["tls"].startswith("TLSv1.")
